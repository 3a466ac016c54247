//! TLS with client certificates, against the real binary: a client with a certificate from the
//! configured CA is served; one without, or with a certificate from another CA, never reaches
//! HTTP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, client: bool) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// GET /capacity over TLS; `Some(status line)` if an HTTP answer came back.
async fn get(addr: &str, server_ca: &str, client: Option<&(String, String)>) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into());
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(b"GET /capacity HTTP/1.1\r\nHost: procnode\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| l.starts_with("HTTP/"))
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_configured_ca_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("procnode test CA");
    let other = ca("some other CA");
    let (server_cert, server_key) = leaf(&trusted, false);
    let client = leaf(&trusted, true);
    let stranger = leaf(&other, true);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key, client_ca) = (
        write("server.pem", &server_cert),
        write("server.key", &server_key),
        write("ca.pem", &trusted.cert.pem()),
    );
    let (mut child, addr) = support::start_binary(
        &dir.path().join("state"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &client_ca,
        ],
    );

    let ca_pem = trusted.cert.pem();
    assert_eq!(
        get(&addr, &ca_pem, Some(&client)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        get(&addr, &ca_pem, None).await,
        None,
        "no client certificate: no HTTP"
    );
    assert_eq!(
        get(&addr, &ca_pem, Some(&stranger)).await,
        None,
        "another CA's certificate: no HTTP"
    );
    // Plain HTTP on the TLS port gets no HTTP answer either.
    let plain = reqwest::get(format!("http://{addr}/capacity")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "procnode did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
}
