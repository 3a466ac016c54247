//! The node mode's kubelet API behind webhook authentication and authorization, on a real TLS
//! socket, with a fake API server (plain HTTP on 127.0.0.1) that answers TokenReviews and
//! SubjectAccessReviews and counts them:
//! - no credentials, or a token the API server does not know: 401;
//! - a known token or a client certificate from the client CA: the user, then a
//!   SubjectAccessReview for `nodes/<subresource>` of this node decides 200 or 403;
//! - a certificate from another CA: no HTTP at all;
//! - answers are cached (one review per token and per decision).

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use support::tls::{ca, client_leaf, https_get, leaf};

#[derive(Default)]
struct Reviews {
    tokens: usize,
    access: Vec<Value>,
}

/// Known tokens: alice (group team-a) and bob. Alice and system:masters may do anything to the
/// node; bob may only read its stats.
async fn fake_api_server(reviews: Arc<Mutex<Reviews>>) -> String {
    let token_review = |State(r): State<Arc<Mutex<Reviews>>>, Json(review): Json<Value>| async move {
        r.lock().unwrap().tokens += 1;
        let status = match review["spec"]["token"].as_str() {
            Some("alice-token") => {
                json!({"authenticated": true, "user": {"username": "alice", "groups": ["team-a"]}})
            }
            Some("bob-token") => json!({"authenticated": true, "user": {"username": "bob"}}),
            _ => json!({"authenticated": false, "error": "unknown token"}),
        };
        Json(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": review["spec"], "status": status
        }))
    };
    let access_review = |State(r): State<Arc<Mutex<Reviews>>>, Json(review): Json<Value>| async move {
        let spec = &review["spec"];
        r.lock().unwrap().access.push(spec.clone());
        let masters = spec["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("system:masters")));
        let allowed = masters
            || spec["user"] == "alice"
            || (spec["user"] == "bob" && spec["resourceAttributes"]["subresource"] == "stats");
        Json(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": spec, "status": {"allowed": allowed}
        }))
    };
    let app = axum::Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(access_review),
        )
        .with_state(reviews);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn the_kubelet_api_asks_the_api_server_who_may_do_what() {
    let dir = tempfile::tempdir().unwrap();
    let reviews = Arc::new(Mutex::new(Reviews::default()));
    let api_url = fake_api_server(reviews.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(api_url.parse().unwrap())).unwrap();

    // The kubelet API: its own serving certificate, client certificates from the cluster CA.
    let serving_ca = ca("kubelet serving CA");
    let cluster_ca = ca("cluster CA");
    let stranger_ca = ca("some other CA");
    let (cert, key) = leaf(&serving_ca, false);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, client_ca) = (
        write("kubelet.crt", &cert),
        write("kubelet.key", &key),
        write("cluster-ca.crt", &cluster_ca.cert.pem()),
    );
    let clients = procnode::tls::ClientCerts::Optional(
        procnode::tls::ClientCerts::read_ca(&client_ca).unwrap(),
    );
    let tls = procnode::tls::server_config(&cert, &key, clients).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let listener = procnode::tls::TlsListener::new(tcp, tls).unwrap();
    let state_dir = dir.path().join("state");
    let config = procnode::Config::parse_from_env_free([
        "procnode",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--cgroups",
        "off",
    ]);
    procnode::runtime::StateLayout::new(&state_dir)
        .prepare()
        .unwrap();
    let (runtime, node) = procnode::build(&config);
    let state = procnode::api::AppState::new(runtime, node, &config).unwrap();
    let auth = procnode::cluster::auth::KubeletAuth::new(client, "node-1");
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(procnode::cluster::serve_kubelet_api(
        listener,
        state,
        Some(auth),
        async {
            let _ = stopping.await;
        },
    ));

    let ca_pem = serving_ca.cert.pem();
    let get =
        |path: &'static str, client: Option<(String, String)>, bearer: Option<&'static str>| {
            let (addr, ca_pem) = (addr.clone(), ca_pem.clone());
            async move {
                https_get(&addr, path, &ca_pem, client.as_ref(), bearer)
                    .await
                    .map(|line| line.split(' ').nth(1).unwrap_or("").to_string())
            }
        };
    let status = |s: &str| Some(s.to_string());

    // Nobody, and a token nobody knows: 401, and no access review is asked for.
    assert_eq!(get("/pods", None, None).await, status("401"));
    assert_eq!(get("/pods", None, Some("forged")).await, status("401"));
    assert!(reviews.lock().unwrap().access.is_empty());

    // Alice may read pods and stats; bob only stats.
    assert_eq!(get("/pods", None, Some("alice-token")).await, status("200"));
    assert_eq!(
        get("/stats/summary", None, Some("alice-token")).await,
        status("200")
    );
    assert_eq!(
        get("/stats/summary", None, Some("bob-token")).await,
        status("200")
    );
    assert_eq!(get("/pods", None, Some("bob-token")).await, status("403"));
    assert_eq!(
        get("/metrics/resource", None, Some("bob-token")).await,
        status("403")
    );
    assert_eq!(
        get("/metrics/resource", None, Some("alice-token")).await,
        status("200")
    );
    assert_eq!(
        get("/containerLogs/default/p/c", None, Some("bob-token")).await,
        status("403")
    );

    // What was asked: the node, its subresource by path, the verb by method, the user's groups.
    let asked = reviews.lock().unwrap().access.clone();
    assert_eq!(asked[0]["user"], "alice");
    assert_eq!(asked[0]["groups"], json!(["team-a"]));
    assert_eq!(
        asked[0]["resourceAttributes"],
        json!({"verb": "get", "version": "v1", "resource": "nodes", "subresource": "proxy", "name": "node-1"})
    );
    assert_eq!(asked[1]["resourceAttributes"]["subresource"], "stats");

    // Cached: the same requests again ask nothing new.
    let before = (reviews.lock().unwrap().tokens, asked.len());
    assert_eq!(get("/pods", None, Some("alice-token")).await, status("200"));
    assert_eq!(get("/pods", None, Some("bob-token")).await, status("403"));
    assert_eq!(get("/pods", None, Some("forged")).await, status("401"));
    let after = {
        let r = reviews.lock().unwrap();
        (r.tokens, r.access.len())
    };
    assert_eq!(before, after, "(token reviews, access reviews)");

    // A client certificate from the cluster CA, as the API server shows for `kubectl logs`:
    // its CommonName and Organizations are the user, no token review.
    let apiserver = client_leaf(&cluster_ca, "kube-apiserver", &["system:masters"]);
    assert_eq!(get("/pods", Some(apiserver), None).await, status("200"));
    let last = reviews.lock().unwrap().access.last().cloned().unwrap();
    assert_eq!(last["user"], "kube-apiserver");
    assert_eq!(last["groups"], json!(["system:masters"]));
    assert_eq!(reviews.lock().unwrap().tokens, before.0);
    let nobody = client_leaf(&cluster_ca, "nobody-special", &[]);
    assert_eq!(get("/pods", Some(nobody), None).await, status("403"));
    // One from another CA never reaches HTTP.
    let stranger = client_leaf(&stranger_ca, "kube-apiserver", &["system:masters"]);
    assert_eq!(get("/pods", Some(stranger), None).await, None);

    // A shutdown lets the server finish and return.
    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the kubelet API stops on shutdown")
        .unwrap();
}
