//! Handlers: parse the request, call the runtime or the node snapshot, shape the response.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;

use super::extract::{Body, Query};
use super::{wire, ApiError, AppState};
use crate::logs::{LogQuery, Stream, StreamFilter};
use crate::runtime::Created;
use crate::runtime::PodKey;

fn json(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn required(value: Option<String>, name: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("query parameter `{name}` is required")))
}

#[derive(Deserialize)]
pub struct PodRef {
    namespace: Option<String>,
    name: Option<String>,
}

impl PodRef {
    fn key(self) -> Result<PodKey, ApiError> {
        Ok(PodKey {
            namespace: required(self.namespace, "namespace")?,
            name: required(self.name, "name")?,
        })
    }
}

pub async fn create_pod(State(s): State<AppState>, Body(body): Body) -> Result<Response, ApiError> {
    let new = crate::runtime::NewPod::from_json(&body)?;
    Ok(match s.runtime.create(new).await? {
        Created::New(entry) => json(StatusCode::CREATED, wire::pod_json(&entry)),
        Created::Existing(entry) => json(StatusCode::OK, wire::pod_json(&entry)),
    })
}

pub async fn update_pod(State(s): State<AppState>, Body(body): Body) -> Result<Response, ApiError> {
    let new = crate::runtime::NewPod::from_json(&body)?;
    let entry = s.runtime.update(new).await?;
    Ok(json(StatusCode::OK, wire::pod_json(&entry)))
}

/// The part of a pod body that a delete needs.
#[derive(Deserialize, Default)]
struct DeleteBody {
    #[serde(default)]
    metadata: DeleteMeta,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteMeta {
    name: Option<String>,
    namespace: Option<String>,
    deletion_grace_period_seconds: Option<i64>,
}

/// Stops the pod's processes (TERM, grace period, KILL) and forgets it. Answers once no process
/// of the pod is left. Unknown pods are fine (2xx): the caller wanted them gone.
pub async fn delete_pod(
    State(s): State<AppState>,
    Query(q): Query<PodRef>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let parsed: DeleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("request body is not valid pod JSON: {e}")))?
    };
    let key = PodRef {
        namespace: parsed
            .metadata
            .namespace
            .or(q.namespace)
            .or(Some("default".into())),
        name: parsed.metadata.name.or(q.name),
    }
    .key()?;
    let grace = parsed
        .metadata
        .deletion_grace_period_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    Ok(match s.runtime.delete(&key, grace).await {
        Some(entry) => json(StatusCode::OK, wire::pod_json(&entry)),
        None => json(StatusCode::OK, "{}"),
    })
}

pub async fn get_pod(
    State(s): State<AppState>,
    Query(q): Query<PodRef>,
) -> Result<Response, ApiError> {
    let entry = s.runtime.get(&q.key()?)?;
    Ok(json(StatusCode::OK, wire::pod_json(&entry)))
}

pub async fn get_pod_status(
    State(s): State<AppState>,
    Query(q): Query<PodRef>,
) -> Result<Response, ApiError> {
    let entry = s.runtime.get(&q.key()?)?;
    Ok(json(StatusCode::OK, wire::status_json(&entry)))
}

/// The broker (Virtual Kubelet v0.10) reads at most this many bytes of a GET response; a longer
/// `/getPods` answer would be cut and fail to decode.
pub const BROKER_READ_LIMIT: usize = 1_000_000;

#[derive(Deserialize)]
pub struct ListParams {
    full: Option<String>,
}

/// Every pod as `getPod` returns it. When that would not fit the broker's read limit, each pod
/// is listed in short form (metadata, container names, phase): enough for the broker's only use
/// of this call, finding pods Kubernetes no longer knows. `?full=true` always lists in full.
pub async fn get_pods(
    State(s): State<AppState>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    let force_full = parse_bool("full", q.full.as_deref())?;
    let limit = if force_full {
        usize::MAX
    } else {
        BROKER_READ_LIMIT
    };
    let pods = s.runtime.list();
    if let Some(full) = json_array(&pods, limit, wire::pod_json) {
        return Ok(json(StatusCode::OK, full));
    }
    tracing::warn!(
        pods = pods.len(),
        "getPods answer would exceed the broker's read limit; listing pods in short form"
    );
    let short = json_array(&pods, usize::MAX, wire::summary_json).expect("no limit");
    Ok(json(StatusCode::OK, short))
}

/// A JSON array of `one(pod)` for every pod, or `None` as soon as it grows past `limit` bytes.
fn json_array(
    pods: &[std::sync::Arc<crate::runtime::PodEntry>],
    limit: usize,
    one: impl Fn(&crate::runtime::PodEntry) -> String,
) -> Option<String> {
    let mut out = String::with_capacity((pods.len() * 2048 + 2).min(limit.saturating_add(1)));
    out.push('[');
    for (i, entry) in pods.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&one(entry));
        if out.len() >= limit {
            return None;
        }
    }
    out.push(']');
    (out.len() <= limit).then_some(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogParams {
    namespace: Option<String>,
    pod_name: Option<String>,
    container_name: Option<String>,
    /// `tail` in the web contract, `tailLines` in the kubelet API.
    #[serde(alias = "tailLines")]
    tail: Option<String>,
    limit_bytes: Option<String>,
    since_seconds: Option<String>,
    since_time: Option<String>,
    timestamps: Option<String>,
    stream: Option<String>,
    previous: Option<String>,
    follow: Option<String>,
}

/// How to answer a log request.
struct LogRequest {
    key: PodKey,
    container: String,
    query: LogQuery,
    previous: bool,
    follow: bool,
}

fn parse_bool(name: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "query parameter `{name}` must be true or false, not {other:?}"
        ))),
    }
}

fn parse_count(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!(
                "query parameter `{name}` must be an integer, not {s:?}"
            ))
        }),
    }
}

impl LogParams {
    fn into_request(self) -> Result<LogRequest, ApiError> {
        let key = PodKey {
            namespace: required(self.namespace, "namespace")?,
            name: required(self.pod_name, "podName")?,
        };
        let container = required(self.container_name, "containerName")?;
        // A negative tail means "all lines", as `kubectl logs --tail=-1` does.
        let tail = parse_count("tail", self.tail.as_deref())?
            .filter(|n| *n >= 0)
            .map(|n| n as usize);
        let limit_bytes = match parse_count("limitBytes", self.limit_bytes.as_deref())? {
            Some(n) if n <= 0 => {
                return Err(ApiError::BadRequest(
                    "query parameter `limitBytes` must be positive".into(),
                ))
            }
            n => n.map(|n| n as usize),
        };
        let since_seconds = match parse_count("sinceSeconds", self.since_seconds.as_deref())? {
            Some(n) if n <= 0 => {
                return Err(ApiError::BadRequest(
                    "query parameter `sinceSeconds` must be positive".into(),
                ))
            }
            n => n,
        };
        let since_time = match self.since_time.as_deref() {
            None | Some("") => None,
            Some(t) => Some(t.parse::<k8s_openapi::jiff::Timestamp>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter `sinceTime` must be an RFC 3339 time, not {t:?}"
                ))
            })?),
        };
        let since_ns = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "at most one of `sinceSeconds` or `sinceTime` may be specified".into(),
                ))
            }
            (Some(secs), None) => Some(crate::logs::now_ns() - secs.saturating_mul(1_000_000_000)),
            (None, Some(t)) => Some(t.as_nanosecond() as i64),
            (None, None) => None,
        };
        let stream = match self.stream.as_deref() {
            None | Some("") | Some("all") => StreamFilter::All,
            Some("stdout") => StreamFilter::Only(Stream::Stdout),
            Some("stderr") => StreamFilter::Only(Stream::Stderr),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "query parameter `stream` must be stdout, stderr or all, not {other:?}"
                )))
            }
        };
        let query = LogQuery {
            tail,
            since_ns,
            limit_bytes,
            timestamps: parse_bool("timestamps", self.timestamps.as_deref())?,
            stream,
        };
        Ok(LogRequest {
            key,
            container,
            query,
            previous: parse_bool("previous", self.previous.as_deref())?,
            follow: parse_bool("follow", self.follow.as_deref())?,
        })
    }
}

/// Plain text, exactly the bytes the container wrote (what `kubectl logs` prints). With
/// `follow=true` the response is chunked and stays open until the container's run ends or the
/// client goes away.
pub async fn get_container_logs(
    State(s): State<AppState>,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    logs_response(&s, params).await
}

/// The kubelet API's `GET /containerLogs/{namespace}/{pod}/{container}` with `kubectl logs`'
/// query (`tailLines`, `follow`, `previous`, `timestamps`, `sinceSeconds`, `sinceTime`,
/// `limitBytes`).
pub async fn kubelet_container_logs(
    State(s): State<AppState>,
    axum::extract::Path((namespace, pod, container)): axum::extract::Path<(String, String, String)>,
    Query(mut params): Query<LogParams>,
) -> Result<Response, ApiError> {
    params.namespace = Some(namespace);
    params.pod_name = Some(pod);
    params.container_name = Some(container);
    logs_response(&s, params).await
}

/// The kubelet API's `GET /pods`: every pod of this node, as a v1 PodList.
pub async fn kubelet_pods(State(s): State<AppState>) -> Response {
    let mut body = String::from(r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":["#);
    for (i, entry) in s.runtime.list().iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&wire::pod_json(entry));
    }
    body.push_str("]}");
    json(StatusCode::OK, body)
}

async fn logs_response(s: &AppState, params: LogParams) -> Result<Response, ApiError> {
    let req = params.into_request()?;
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if req.follow && !req.previous {
        let slot = s.runtime.log_slot(&req.key, &req.container)?;
        let permit = s
            .follow_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyFollowers)?;
        // The permit lives as long as the stream: released when it ends or the client leaves.
        let stream = crate::logs::follow(slot, req.query).map(move |chunk| {
            let _held = &permit;
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk))
        });
        return Ok((StatusCode::OK, text, axum::body::Body::from_stream(stream)).into_response());
    }
    let bytes = s
        .runtime
        .logs(&req.key, &req.container, &req.query, req.previous)?;
    Ok((StatusCode::OK, text, bytes).into_response())
}

pub async fn capacity(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, wire::to_json(&s.node.snapshot().capacity))
}

pub async fn node_conditions(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, wire::to_json(&s.node.snapshot().conditions))
}

pub async fn node_addresses(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, wire::to_json(&s.node.snapshot().addresses))
}

/// The kubelet port Virtual Kubelet serves (`KUBELET_PORT`, default 10250).
pub async fn node_daemon_endpoints() -> Response {
    json(StatusCode::OK, r#"{"kubeletEndpoint":{"Port":10250}}"#)
}

pub async fn operating_system() -> &'static str {
    "linux"
}

/// The kubelet's stats Summary (`/stats/summary` shape), measured from the pods' process groups.
pub async fn stats_summary(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, summary(&s).await?.to_string()))
}

/// The Summary, measured on a blocking thread (it reads `/proc` and cgroup files).
async fn summary(s: &AppState) -> Result<serde_json::Value, ApiError> {
    let (runtime, node) = (s.runtime.clone(), s.node.clone());
    tokio::task::spawn_blocking(move || node.stats_summary(&crate::node::stats::pod_refs(&runtime)))
        .await
        .map_err(|e| ApiError::Internal(format!("stats task: {e}")))
}

/// The kubelet's resource metrics (`/metrics/resource`, for metrics-server), from the same
/// Summary as `/stats/summary`.
pub async fn resource_metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let summary = summary(&s).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::node::stats::resource_metrics(&summary),
    )
        .into_response())
}

/// Prometheus metrics: pods by phase, container starts, restarts and exits by reason, spawn
/// latency, log bytes captured, dropped and held, request latency by route.
pub async fn metrics(State(s): State<AppState>) -> Response {
    let mut phases = [
        ("Pending", 0usize),
        ("Running", 0),
        ("Succeeded", 0),
        ("Failed", 0),
    ];
    for entry in s.runtime.list() {
        let phase = entry.phase().as_str();
        if let Some(slot) = phases.iter_mut().find(|(p, _)| *p == phase) {
            slot.1 += 1;
        }
    }
    let budget = &s.runtime.settings().logs.budget;
    let (captured, dropped) = budget.totals();
    let text =
        s.runtime
            .settings()
            .metrics
            .render(&phases, captured, dropped, budget.used() as u64);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

pub async fn health() -> &'static str {
    "ok"
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}
