//! The kubelet's streaming endpoints, as node mode serves them on the kubelet port: `exec`
//! (and so `kubectl cp`), `attach` and `port-forward`.
//!
//! The HTTP layer ([`crate::api`]) checks the request, finds its target in the runtime and
//! upgrades the connection; from then on the connection belongs here. [`spdy`] is the framing
//! (SPDY/3.1, what the API server speaks to a kubelet), [`ws`] the WebSocket channel
//! protocols (what kubectl 1.30+ tries first); [`exec`], [`attach`] and [`portforward`] are the
//! sessions, which know the channel protocols (`v5.channel.k8s.io` … `channel.k8s.io`,
//! `portforward.k8s.io`) and call the runtime.

pub mod attach;
pub mod exec;
pub mod portforward;
pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::PodKey;

/// How long a client has to open the streams a session needs (the kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Streaming sessions (exec, port-forward) open at once on the node, and per pod. The kubelet
/// sets no bound; procnode runs pods as processes on the host, and each session is a process
/// or a set of connections on it, so a client cannot open them without end.
pub const MAX_SESSIONS: usize = 256;
pub const MAX_SESSIONS_PER_POD: usize = 32;

/// The remote command protocols, best first, as the kubelet offers them over SPDY.
pub const EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// The server's choice among the protocols a client offers (each `X-Stream-Protocol-Version`
/// header, comma-separated values allowed): the first of `ours` the client names. A client that
/// names none is an old one and gets the oldest protocol, as the kubelet does.
pub fn negotiate<'a>(offered: &[&str], ours: &[&'a str]) -> Result<&'a str, String> {
    let offered = offered_protocols(offered);
    if offered.is_empty() {
        return Ok(ours[ours.len() - 1]);
    }
    ours.iter()
        .find(|p| offered.contains(p))
        .copied()
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
                 server accepts {ours:?}"
            )
        })
}

/// The protocols a client offers in `headers` (the values of every protocol header, each a
/// comma-separated list), in its order.
pub fn offered_protocols<'a>(headers: &[&'a str]) -> Vec<&'a str> {
    headers
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// What a client sends on one channel (or stream): it ends at the client's end of it.
pub type Inbound = tokio::sync::mpsc::Receiver<bytes::Bytes>;

/// Where a session writes one channel, whichever protocol carries it.
#[derive(Clone)]
pub enum Sender {
    Spdy(spdy::SendStream),
    Ws(ws::ChannelSender),
}

impl Sender {
    /// Sends `data`; `false` once the connection is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        match self {
            Sender::Spdy(s) => s.send(data).await,
            Sender::Ws(s) => s.send(data).await,
        }
    }

    /// Ends procnode's half of the channel (SPDY: FIN; WebSocket channels have no end of their
    /// own: they end with the connection).
    pub async fn finish(&self) {
        match self {
            Sender::Spdy(s) => s.finish().await,
            Sender::Ws(_) => {}
        }
    }
}

/// Counts open sessions against [`MAX_SESSIONS`] and [`MAX_SESSIONS_PER_POD`].
#[derive(Default)]
pub struct Sessions {
    open: Mutex<(usize, HashMap<PodKey, usize>)>,
}

/// One open session; dropping it frees its place.
pub struct SessionPermit {
    sessions: Arc<Sessions>,
    key: PodKey,
}

impl Sessions {
    /// A place for a session with pod `key`, or `None` when the node or the pod is at its bound.
    pub fn open(self: &Arc<Self>, key: &PodKey) -> Option<SessionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let per_pod = open.1.get(key).copied().unwrap_or(0);
        if open.0 >= MAX_SESSIONS || per_pod >= MAX_SESSIONS_PER_POD {
            return None;
        }
        open.0 += 1;
        open.1.insert(key.clone(), per_pod + 1);
        Some(SessionPermit {
            sessions: self.clone(),
            key: key.clone(),
        })
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self.sessions.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_protocol_both_sides_know_is_chosen() {
        let kubectl_1_20 = ["v4.channel.k8s.io", "v3.channel.k8s.io"];
        assert_eq!(
            negotiate(&kubectl_1_20, EXEC_PROTOCOLS),
            Ok("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(
                &["channel.k8s.io, v5.channel.k8s.io", "v2.channel.k8s.io"],
                EXEC_PROTOCOLS
            ),
            Ok("v5.channel.k8s.io")
        );
        assert_eq!(negotiate(&[], EXEC_PROTOCOLS), Ok("channel.k8s.io"));
        let refused = negotiate(&["v9.example"], EXEC_PROTOCOLS).unwrap_err();
        assert!(
            refused.contains("unable to negotiate protocol"),
            "{refused}"
        );
        assert_eq!(
            negotiate(&["portforward.k8s.io"], PORT_FORWARD_PROTOCOLS),
            Ok("portforward.k8s.io")
        );
    }

    #[test]
    fn sessions_are_bounded_per_pod_and_freed_when_dropped() {
        let sessions = Arc::new(Sessions::default());
        let key = |name: &str| PodKey {
            namespace: "default".into(),
            name: name.into(),
        };
        let a = key("a");
        let held: Vec<_> = (0..MAX_SESSIONS_PER_POD)
            .map(|_| sessions.open(&a).expect("a place"))
            .collect();
        assert!(sessions.open(&a).is_none(), "the pod's bound");
        let b = sessions.open(&key("b"));
        assert!(b.is_some(), "another pod still has room");
        drop(held);
        drop(b);
        assert_eq!(sessions.count(), 0);
        assert!(sessions.open(&a).is_some());
    }
}
