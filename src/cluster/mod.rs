//! Native node mode (`procnode node`): procnode joins a Kubernetes cluster by itself, as a
//! kubelet does, with no Virtual Kubelet broker in between.
//!
//! A second front end to the same [`Runtime`](crate::runtime::Runtime), store and log store as
//! the web API: pods come from a watch on the API server instead of `createPod`, their status
//! goes back as patches to `pods/status` instead of being polled through `getPodStatus`.
//!
//! Tasks, each retrying with back-off on API errors and never ending the process:
//! - [`node_object`]: creates or updates the Node (labels, taint, nodeInfo, addresses, daemon
//!   endpoint) and writes its status at once on a change, at least every
//!   `--node-status-interval`;
//! - [`lease`]: renews the node's Lease in `kube-node-lease` every 10 s (the heartbeat);
//! - [`pods`]: watches pods bound to the node, starts new ones (Secret/ConfigMap references in
//!   `env`/`envFrom` resolved first), stops deleted ones with their grace period and then
//!   removes the object, pushes every status change, reconciles with the cluster on start-up;
//! - the kubelet API (`/containerLogs`, `/pods`, `/healthz`, `/stats/summary`) on
//!   `--kubelet-port` over TLS, for `kubectl logs` and metrics-server.

pub mod auth;
mod events;
mod lease;
mod node_object;
mod objects;
pub mod pods;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::config::KubeletAuthMode;
use crate::tls::ClientCerts;
use crate::Config;

/// The API server and the cluster's CA certificates (DER; empty when the kubeconfig names
/// none), or why it cannot be reached.
async fn connect(config: &Config) -> Result<(kube::Client, Vec<CertificateDer<'static>>), String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster): {e}")
        })?,
    };
    let mut cluster_ca: Vec<CertificateDer<'static>> = (kube_config.root_cert.iter().flatten())
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    if let (true, Some(file)) = (cluster_ca.is_empty(), &kube_config.root_cert_file) {
        cluster_ca = crate::tls::ClientCerts::read_ca(file).map_err(|e| e.to_string())?;
    }
    let url = kube_config.cluster_url.clone();
    let client =
        kube::Client::try_from(kube_config).map_err(|e| format!("API server {url}: {e}"))?;
    Ok((client, cluster_ca))
}

/// Waits until the API server answers (logging why not, with back-off), or `None` on shutdown.
async fn wait_for_api(
    client: &kube::Client,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<String> {
    let mut delay = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(v) => return Some(v.git_version),
            Err(e) => {
                let why = match &e {
                    kube::Error::Api(s) if s.code == 401 => {
                        format!(
                            "unauthorised (401): check the kubeconfig's credentials: {}",
                            s.message
                        )
                    }
                    kube::Error::Api(s) if s.code == 403 => {
                        format!("forbidden (403): {}", s.message)
                    }
                    other => format!("unreachable: {other}"),
                };
                tracing::warn!(retry_in = ?delay, "API server {why}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut *shutdown => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Runs the node until `shutdown`, then leaves every pod to its supervisor (or, with
/// `--stop-pods-on-exit`, stops them).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let mut shutdown = Box::pin(shutdown);
    let (client, cluster_ca) = connect(&config).await?;
    if config.kubelet_auth == KubeletAuthMode::Webhook
        && config.kubelet_client_ca.is_none()
        && cluster_ca.is_empty()
    {
        tracing::warn!(
            "the kubeconfig carries no cluster CA (insecure-skip-tls-verify?) and --kubelet-client-ca \
             is not set: the kubelet API cannot verify the API server's client certificate, so \
             `kubectl logs` and stats through the API server get 401. Set --kubelet-client-ca to \
             the CA that issued the API server's --kubelet-client-certificate"
        );
    }
    let Some(version) = wait_for_api(&client, &mut shutdown).await else {
        return Ok(());
    };
    let node_name = config.node_name();
    tracing::info!(api_server = %version, node = %node_name, "connected to the API server");

    let objects = Arc::new(objects::ApiObjects::new(client.clone()));
    let mut started = crate::Started::start(&config, Some(objects))
        .await
        .map_err(|e| e.to_string())?;
    let (runtime, node) = (started.runtime.clone(), started.node.clone());
    let layout = runtime.settings().layout.clone();

    // The kubelet API.
    let clients = match config.kubelet_auth {
        KubeletAuthMode::None => ClientCerts::None,
        KubeletAuthMode::Webhook => ClientCerts::Optional(match &config.kubelet_client_ca {
            Some(file) => ClientCerts::read_ca(file).map_err(|e| e.to_string())?,
            None => cluster_ca,
        }),
    };
    let tls = kubelet_tls(&config, &node_name, &node.facts().host_ip, &layout, clients)?;
    let bind = std::net::SocketAddr::from(([0, 0, 0, 0], config.kubelet_port));
    let tcp = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind} (kubelet API): {e}"))?;
    let listener = crate::tls::TlsListener::new(tcp, tls).map_err(|e| e.to_string())?;
    let state = crate::api::AppState::new(runtime.clone(), node.clone(), &config)
        .map_err(|e| e.to_string())?;
    let auth = (config.kubelet_auth == KubeletAuthMode::Webhook)
        .then(|| auth::KubeletAuth::new(client.clone(), &node_name));
    // Every server stops on this, finishing the requests it is serving.
    let (stop_servers, servers_stop) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let kubelet_api = tokio::spawn(serve_kubelet_api(
        listener,
        state,
        auth,
        stopped(servers_stop.clone()),
    ));

    // The web API too, when asked for (`--listen`): both front ends then share this runtime.
    let web_api = match config.listen.clone() {
        Some(crate::config::ListenAddr::Tcp(addr)) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let state = crate::api::AppState::new(runtime.clone(), node.clone(), &config)
                .map_err(|e| e.to_string())?;
            tracing::info!(addr = %addr, "serving the web API beside the node");
            Some(tokio::spawn(async move {
                let stop = stopped(servers_stop.clone());
                if let Err(e) = crate::api::serve(tcp, state, stop).await {
                    tracing::error!(error = %e, "web API stopped");
                }
            }))
        }
        Some(crate::config::ListenAddr::Unix(_)) => {
            return Err("node mode serves the web API on TCP only".into());
        }
        None => None,
    };

    let tasks = [
        tokio::spawn(node_object::run(
            client.clone(),
            node.clone(),
            node_object::Settings::from_config(&config, &node_name)?,
        )),
        tokio::spawn(lease::run(client.clone(), node_name.clone())),
        tokio::spawn(pods::run(
            client.clone(),
            runtime.clone(),
            node_name.clone(),
        )),
    ];
    tracing::info!(node = %node_name, kubelet_port = config.kubelet_port, "procnode node running");
    started.ready();

    shutdown.await;
    for t in &tasks {
        t.abort();
    }
    stop_servers.send_replace(true);
    let _ = kubelet_api.await;
    if let Some(w) = web_api {
        let _ = w.await;
    }
    started.stop(&config).await;
    Ok(())
}

/// Serves the kubelet API on `listener`, every route behind `auth` when there is one, until
/// `shutdown` completes and the requests being served are answered.
pub async fn serve_kubelet_api(
    listener: crate::tls::TlsListener,
    state: crate::api::AppState,
    auth: Option<Arc<auth::KubeletAuth>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (limits, metrics) = (state.limits, state.runtime.settings().metrics.clone());
    let mut router = crate::api::kubelet_router(state);
    if let Some(auth) = auth {
        router = router.layer(axum::middleware::from_fn_with_state(auth, auth::check));
    }
    let served = crate::api::serve::serve(
        listener,
        router,
        crate::tls::Peer::of,
        limits,
        metrics,
        shutdown,
    )
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "kubelet API stopped");
    }
}

/// The kubelet API's TLS: the given certificate, else a self-signed one for the node's name
/// and IP, made once and kept in the state directory.
fn kubelet_tls(
    config: &Config,
    node_name: &str,
    node_ip: &str,
    layout: &crate::runtime::StateLayout,
    clients: ClientCerts,
) -> Result<rustls::ServerConfig, String> {
    let (cert, key) = match (&config.kubelet_tls_cert, &config.kubelet_tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (cert, key) = layout.kubelet_cert();
            if !cert.exists() || !key.exists() {
                let mut names = vec![node_name.to_string(), "localhost".to_string()];
                names.push(node_ip.to_string());
                let made = rcgen::generate_simple_self_signed(names)
                    .map_err(|e| format!("making the kubelet API certificate: {e}"))?;
                crate::runtime::records::write_atomic(
                    &key,
                    made.key_pair.serialize_pem().as_bytes(),
                )
                .map_err(|e| format!("{}: {e}", key.display()))?;
                crate::runtime::records::write_atomic(&cert, made.cert.pem().as_bytes())
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
            }
            (cert, key)
        }
    };
    crate::tls::server_config(&cert, &key, clients).map_err(|e| e.to_string())
}
