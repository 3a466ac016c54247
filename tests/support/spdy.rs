//! A SPDY/3.1 client for the kubelet API's streaming routes, as the API server is one: an HTTP
//! upgrade by hand, then frames through procnode's own codec (whose framing is unit-tested
//! against frames built from the specification).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use procnode::stream::spdy::{Codec, Frame, Headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What answered the upgrade request.
pub struct Upgrade {
    pub status: u16,
    pub headers: HashMap<String, String>,
    /// The body of a refusal.
    pub body: String,
    /// The connection, when it switched to SPDY.
    pub client: Option<Client>,
}

pub struct Client {
    tcp: TcpStream,
    codec: Codec,
    buf: BytesMut,
    next_id: u32,
}

/// `POST path` on `addr` asking to switch to SPDY/3.1 with `protocols` offered.
pub async fn upgrade(addr: &str, path: &str, protocols: &[&str]) -> Upgrade {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    // The head, byte by byte (nothing of the frames after it may be read here).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.unwrap() == 0 {
            panic!(
                "connection closed in the head: {}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status != 101 {
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).await.unwrap();
        return Upgrade {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            client: None,
        };
    }
    Upgrade {
        status,
        headers,
        body: String::new(),
        client: Some(Client {
            tcp,
            codec: Codec::new(),
            buf: BytesMut::new(),
            next_id: 1,
        }),
    }
}

impl Client {
    /// Opens a stream with `headers`; its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers: Headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.write(Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers,
        })
        .await;
        id
    }

    pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
        self.write(Frame::Data {
            id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    pub async fn write(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out);
        self.tcp.write_all(&out).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).expect("a valid frame") {
                return Some(f);
            }
            let n = self.tcp.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until the server closes the connection (at most `limit`): the data of each
    /// stream, and which streams it finished.
    pub async fn read_to_end(&mut self, limit: Duration) -> Transcript {
        let mut t = Transcript::default();
        let read = async {
            while let Some(f) = self.frame().await {
                match f {
                    Frame::Data { id, fin, data } => {
                        t.data.entry(id).or_default().extend_from_slice(&data);
                        if fin {
                            t.finished.push(id);
                        }
                    }
                    Frame::SynReply { id, .. } => t.replied.push(id),
                    Frame::GoAway { .. } => t.goaway = true,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .expect("the server ends the session in time");
        t
    }

    /// Drops the connection, as a client that goes away does.
    pub fn hang_up(self) {
        drop(self.tcp);
    }
}

#[derive(Default, Debug)]
pub struct Transcript {
    pub data: HashMap<u32, Vec<u8>>,
    pub finished: Vec<u32>,
    pub replied: Vec<u32>,
    pub goaway: bool,
}

impl Transcript {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or(&[])).into_owned()
    }
}
