//! TLS with client certificates, against the real binary: a client with a certificate from the
//! configured CA is served; one without, or with a certificate from another CA, never reaches
//! HTTP.

mod support;

use std::time::Duration;

use support::tls::{ca, https_get, leaf};

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
        https_get(&addr, "/capacity", &ca_pem, Some(&client), None)
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        https_get(&addr, "/capacity", &ca_pem, None, None).await,
        None,
        "no client certificate: no HTTP"
    );
    assert_eq!(
        https_get(&addr, "/capacity", &ca_pem, Some(&stranger), None).await,
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
