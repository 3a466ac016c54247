//! Who may use the kubelet API (`--kubelet-auth webhook`, the default), decided as a kubelet
//! with webhook authentication and authorization decides:
//!
//! 1. **Who is calling**: a client certificate signed by the client CA (checked by TLS; the
//!    user is its CommonName, the groups its Organizations), else a bearer token the API server
//!    vouches for through a TokenReview. Neither: 401.
//! 2. **May they**: a SubjectAccessReview for the node with the verb of the HTTP method and the
//!    subresource of the path (`/stats/...` → `nodes/stats`, `/logs/...` → `nodes/log`,
//!    `/metrics...` → `nodes/metrics`, anything else, `/containerLogs` and `/pods` included →
//!    `nodes/proxy`). Denied: 403.
//!
//! Answers are kept a while, as the kubelet keeps them: tokens 2 minutes, allowed decisions 5
//! minutes, denied ones 30 seconds. Each cache holds at most [`CACHE_ENTRIES`] answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::api::ApiError;
use crate::tls::Peer;

const TOKEN_TTL: Duration = Duration::from_secs(120);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Past this many answers a cache starts again empty (bounded memory whoever calls).
pub const CACHE_ENTRIES: usize = 4096;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request asks to do to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

impl Attributes {
    /// The kubelet's mapping of a request to node subresource and verb.
    pub fn of(method: &Method, path: &str) -> Attributes {
        let verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        };
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let subresource = if under("/stats") {
            "stats"
        } else if under("/metrics") {
            "metrics"
        } else if under("/logs") {
            "log"
        } else if under("/spec") {
            "spec"
        } else {
            "proxy"
        };
        Attributes { verb, subresource }
    }
}

/// Answers that expire.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now() + ttl, value));
    }
}

/// The kubelet API's gatekeeper: asks the API server who callers are and what they may do.
pub struct KubeletAuth {
    client: kube::Client,
    node: String,
    /// A token's review: the user, or `None` when the API server does not know the token.
    tokens: Cache<String, Option<User>>,
    decisions: Cache<(User, Attributes), bool>,
}

impl KubeletAuth {
    pub fn new(client: kube::Client, node: &str) -> Arc<KubeletAuth> {
        Arc::new(KubeletAuth {
            client,
            node: node.to_string(),
            tokens: Cache::new(),
            decisions: Cache::new(),
        })
    }

    /// The caller: from its client certificate, else its bearer token.
    pub async fn authenticate(&self, peer: &Peer, bearer: Option<&str>) -> Result<User, ApiError> {
        if let Some(cert) = &peer.certificate {
            return user_of_certificate(cert).ok_or_else(|| {
                ApiError::Unauthorized("the client certificate names no user".into())
            });
        }
        let token = bearer.ok_or_else(|| {
            ApiError::Unauthorized(
                "Unauthorized: show a client certificate or a bearer token".into(),
            )
        })?;
        let user = match self.tokens.get(token) {
            Some(known) => known,
            None => {
                let reviewed = self.review_token(token).await?;
                self.tokens
                    .put(token.to_string(), reviewed.clone(), TOKEN_TTL);
                reviewed
            }
        };
        user.ok_or_else(|| ApiError::Unauthorized("Unauthorized: the token is not valid".into()))
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::Internal(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(user.username.map(|name| User {
            name,
            groups: user.groups.unwrap_or_default(),
        }))
    }

    /// Whether `user` may do `what` to this node.
    pub async fn authorize(&self, user: &User, what: Attributes) -> Result<(), ApiError> {
        let key = (user.clone(), what);
        let allowed = match self.decisions.get(&key) {
            Some(allowed) => allowed,
            None => {
                let allowed = self.review_access(user, what).await?;
                let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
                self.decisions.put(key, allowed, ttl);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "user={}, verb={}, resource=nodes, subresource={}",
                user.name, what.verb, what.subresource
            )))
        }
    }

    async fn review_access(&self, user: &User, what: Attributes) -> Result<bool, ApiError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(what.verb.to_string()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(what.subresource.to_string()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::Internal(format!("SubjectAccessReview failed: {e}")))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// The user a (verified) client certificate names: CommonName as the name, Organizations as
/// the groups, as the API server reads client certificates.
pub fn user_of_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

/// The middleware in front of every kubelet API route.
pub async fn check(
    State(auth): State<Arc<KubeletAuth>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let what = Attributes::of(request.method(), request.uri().path());
    let bearer = bearer_token(request.headers());
    let decided = async {
        let user = auth.authenticate(&peer, bearer.as_deref()).await?;
        auth.authorize(&user, what).await
    };
    match decided.await {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::debug!(peer = %peer.addr, path = request.uri().path(), error = %e, "kubelet API request refused");
            e.into_response()
        }
    }
}

/// The token of an `Authorization: Bearer ...` header, if there is a non-empty one.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_node_subresources_and_verbs_as_the_kubelet_maps_them() {
        let cases = [
            (Method::GET, "/stats/summary", "get", "stats"),
            (Method::GET, "/stats", "get", "stats"),
            (Method::GET, "/statsx", "get", "proxy"),
            (Method::GET, "/metrics/resource", "get", "metrics"),
            (Method::GET, "/logs/syslog", "get", "log"),
            (Method::GET, "/spec/", "get", "spec"),
            (Method::GET, "/containerLogs/ns/pod/c", "get", "proxy"),
            (Method::GET, "/pods", "get", "proxy"),
            (Method::HEAD, "/healthz", "get", "proxy"),
            (Method::POST, "/exec/ns/pod/c", "create", "proxy"),
            (Method::PUT, "/x", "update", "proxy"),
            (Method::PATCH, "/x", "patch", "proxy"),
            (Method::DELETE, "/x", "delete", "proxy"),
        ];
        for (method, path, verb, subresource) in cases {
            assert_eq!(
                Attributes::of(&method, path),
                Attributes { verb, subresource },
                "{method} {path}"
            );
        }
    }

    #[test]
    fn a_certificate_names_its_user_by_common_name_and_groups_by_organization() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            user_of_certificate(cert.der()),
            Some(User {
                name: "kube-apiserver".into(),
                groups: vec!["system:masters".into()]
            })
        );
        // No CommonName: nobody.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(user_of_certificate(cert.der()), None);
        assert_eq!(user_of_certificate(b"not DER"), None);
    }
}
