//! A stand-in for the API server's streaming proxy, for kube-rs's clients.

use super::Server;

/// An API server's proxy for `pods/exec`, `pods/attach` and `pods/portforward`, as one before
/// 1.30 is: the upgrade request goes to the kubelet's path (`/exec/NS/POD/CONTAINER`,
/// `/attach/NS/POD/CONTAINER`, `/portForward/NS/POD` with `ports` as `port` parameters) and
/// the bytes are then spliced both ways, WebSocket or not. kube-rs's own clients talk to
/// procnode through it.
pub async fn api_server_proxy(kubelet: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let kubelet = kubelet.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if client.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let (line, rest) = head.split_once("\r\n").unwrap();
                let mut words = line.split(' ');
                let (method, target) = (words.next().unwrap(), words.next().unwrap());
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                // api v1 namespaces NS pods POD SUBRESOURCE
                let (ns, pod, sub) = (parts[3], parts[5], parts[6]);
                let (container, query) = {
                    let mut container = String::new();
                    let mut params = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                        match &*k {
                            "container" => container = v.into_owned(),
                            "ports" => {
                                for p in v.split(',') {
                                    params.append_pair("port", p);
                                }
                            }
                            _ => {
                                params.append_pair(&k, &v);
                            }
                        }
                    }
                    (container, params.finish())
                };
                let path = match sub {
                    "exec" => format!("/exec/{ns}/{pod}/{container}?{query}"),
                    "attach" => format!("/attach/{ns}/{pod}/{container}?{query}"),
                    _ => format!("/portForward/{ns}/{pod}?{query}"),
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&kubelet).await else {
                    return;
                };
                let head = format!("{method} {path} HTTP/1.1\r\n{rest}");
                upstream.write_all(head.as_bytes()).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    addr
}

pub async fn kube_pods(srv: &Server) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
    let proxy = api_server_proxy(srv.kubelet.clone()).await;
    let config = kube::Config::new(format!("http://{proxy}").parse().unwrap());
    kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "default")
}
