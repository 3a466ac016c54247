//! The WebSocket channel protocols: what kubectl 1.30+ tries first, and what an API server
//! before 1.30 passes through to the kubelet unchanged.
//!
//! Every message carries one channel: its first byte is the channel number, the rest the
//! data (`channel.k8s.io`, `v4.channel.k8s.io`, `v5.channel.k8s.io`); in the base64 variants
//! (`base64.channel.k8s.io`, `v4.base64.channel.k8s.io`) a text message starts with the
//! channel as an ASCII digit and the data is base64. Exec uses channels 0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize; in `v5.channel.k8s.io` the client ends one of its channels
//! (stdin) with the message `[255, channel]`. Port-forward uses, for the `i`-th port of the
//! request, channel `2i` for data and `2i+1` for errors, each opened by the port as two
//! little-endian bytes.
//!
//! The WebSocket framing itself (handshake key, frames, masking, ping, close) is
//! tokio-tungstenite's.

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::Inbound;

/// Exec's WebSocket subprotocols, as the kubelet accepts them.
pub const EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// SPDY carried in WebSocket binary messages: how kubectl 1.30+ asks for a port-forward.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Port-forward's WebSocket subprotocols.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &[
    TUNNEL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The client's first offered subprotocol (`Sec-WebSocket-Protocol`, comma-separated, in the
/// client's order of preference) that is one of `ours`; a client that offers none gets the
/// plain channel protocol, as the kubelet gives it.
pub fn choose(offered: &[&str], ours: &[&'static str]) -> Result<&'static str, String> {
    let offered = super::offered_protocols(offered);
    if offered.is_empty() {
        return Ok("");
    }
    offered
        .iter()
        .find_map(|p| ours.iter().find(|o| *o == p).copied())
        .ok_or_else(|| {
            format!("requested protocol(s) are not supported: {offered:?}; supports {ours:?}")
        })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

enum Out {
    Data(u8, Bytes),
    Close,
}

/// Writes one channel of a WebSocket connection.
#[derive(Clone)]
pub struct ChannelSender {
    channel: u8,
    tx: mpsc::Sender<Out>,
}

impl ChannelSender {
    /// Sends `data` on the channel (an empty `data` is a message with the channel byte alone);
    /// `false` once the connection is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        if data.is_empty() {
            return self
                .tx
                .send(Out::Data(self.channel, Bytes::new()))
                .await
                .is_ok();
        }
        for chunk in data.chunks(super::spdy::MAX_DATA) {
            let out = Out::Data(self.channel, Bytes::copy_from_slice(chunk));
            if self.tx.send(out).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// A running WebSocket connection carrying channels, server side.
pub struct Connection {
    inbound: HashMap<u8, Inbound>,
    tx: mpsc::Sender<Out>,
    gone: watch::Receiver<bool>,
}

impl Connection {
    /// Runs `ws` (handshake done) with `protocol`'s encoding on two tasks; `reads` are the
    /// channels the client may write.
    pub fn start<IO>(ws: WebSocketStream<IO>, protocol: &str, reads: &[u8]) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let base64 = protocol.contains("base64");
        let v5 = protocol.starts_with("v5.");
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::channel(64);
        let (gone_tx, gone) = watch::channel(false);
        let mut senders = HashMap::new();
        let mut inbound = HashMap::new();
        for &ch in reads {
            let (s, r) = mpsc::channel(16);
            senders.insert(ch, s);
            inbound.insert(ch, r);
        }
        tokio::spawn(write_loop(sink, rx, base64));
        tokio::spawn(read_loop(stream, senders, base64, v5, gone_tx));
        Connection { inbound, tx, gone }
    }

    /// What the client sends on `channel` (once; `None` for a channel it cannot write).
    pub fn take_inbound(&mut self, channel: u8) -> Option<Inbound> {
        self.inbound.remove(&channel)
    }

    pub fn sender(&self, channel: u8) -> ChannelSender {
        ChannelSender {
            channel,
            tx: self.tx.clone(),
        }
    }

    /// Becomes true when the client has gone away.
    pub fn gone(&self) -> watch::Receiver<bool> {
        self.gone.clone()
    }

    /// Sends what is queued, then a close frame.
    pub async fn close(self) {
        let _ = self.tx.send(Out::Close).await;
    }
}

async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Out>, base64: bool)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(out) = rx.recv().await {
        let message = match out {
            Out::Close => {
                let _ = sink.send(normal_close()).await;
                let _ = sink.close().await;
                return;
            }
            Out::Data(ch, data) if base64 => {
                let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
                text.push((b'0' + ch) as char);
                base64::engine::general_purpose::STANDARD.encode_string(&data, &mut text);
                Message::text(text)
            }
            Out::Data(ch, data) => {
                let mut bytes = Vec::with_capacity(1 + data.len());
                bytes.push(ch);
                bytes.extend_from_slice(&data);
                Message::binary(bytes)
            }
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
}

async fn read_loop<S>(
    mut stream: S,
    mut senders: HashMap<u8, mpsc::Sender<Bytes>>,
    base64: bool,
    v5: bool,
    gone: watch::Sender<bool>,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        let (ch, data) = match message {
            Message::Binary(b) if !b.is_empty() => (b[0], b.slice(1..)),
            Message::Text(t) if base64 && !t.is_empty() => {
                let t = t.as_bytes();
                match base64::engine::general_purpose::STANDARD.decode(&t[1..]) {
                    Ok(d) => (t[0].wrapping_sub(b'0'), Bytes::from(d)),
                    Err(_) => continue,
                }
            }
            Message::Close(_) => break,
            _ => continue,
        };
        // v5: the client is done writing channel `data[0]`.
        if v5 && ch == 255 {
            if let Some(closed) = data.first() {
                senders.remove(closed);
            }
            continue;
        }
        if let Some(s) = senders.get(&ch) {
            if !data.is_empty() && s.send(data).await.is_err() {
                senders.remove(&ch);
            }
        }
    }
    drop(senders);
    gone.send_replace(true);
}

/// Carries a byte stream in binary messages both ways (the SPDY tunnel): `io` is the other
/// end's side; the pumps end when either side does.
pub fn tunnel<IO>(ws: WebSocketStream<IO>) -> tokio::io::DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut sink, mut stream) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(b) if to_spdy.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    theirs
}

/// A close frame with status 1000: Go's WebSocket clients read anything else (even a close
/// without a status) as an error on every channel.
fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_preference_among_ours_wins() {
        assert_eq!(
            choose(&["v5.channel.k8s.io"], EXEC_PROTOCOLS),
            Ok("v5.channel.k8s.io")
        );
        assert_eq!(
            choose(
                &["v4.base64.channel.k8s.io, v5.channel.k8s.io"],
                EXEC_PROTOCOLS
            ),
            Ok("v4.base64.channel.k8s.io")
        );
        assert_eq!(choose(&[], EXEC_PROTOCOLS), Ok(""));
        assert!(choose(&["chat"], EXEC_PROTOCOLS).is_err());
        assert_eq!(
            choose(
                &["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"],
                PORT_FORWARD_PROTOCOLS
            ),
            Ok(TUNNEL)
        );
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example handshake of RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
