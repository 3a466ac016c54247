//! SPDY/3.1, the framing the API server speaks to a kubelet for `exec`, `attach` and
//! `port-forward` once the HTTP connection is upgraded (`Upgrade: SPDY/3.1`).
//!
//! Only what those uses need, from the server's side: the client opens every stream
//! (SYN_STREAM, odd ids), procnode answers each with an empty SYN_REPLY at once, and data then
//! flows both ways in DATA frames until each side sends FIN. PINGs are echoed, GOAWAY stops new
//! streams, SETTINGS, WINDOW_UPDATE and HEADERS are read and ignored. Flow control windows are not
//! enforced either way, as with the Go SPDY library on both ends of the API server's
//! connections (it neither sends nor honours WINDOW_UPDATE): back-pressure comes from TCP.
//!
//! Header blocks are compressed with zlib, one stream per direction for the connection's
//! lifetime, primed with the dictionary the SPDY/3 specification defines ([`dictionary`]).
//!
//! [`Codec`] turns bytes into [`Frame`]s and back (pure, unit-tested against frames built by
//! hand from the specification); [`Session::start`] runs a connection on tokio: a reader task
//! hands new streams to the caller, a writer task owns the socket's write half.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

pub const VERSION: u16 = 3;

/// Control frame types (SPDY/3 §2.6).
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;

/// The largest frame procnode accepts (the format allows 16 MiB); a peer sending more is cut
/// off rather than buffered.
pub const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block accepted (a decompression bomb stops here).
pub const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The largest DATA frame procnode writes.
pub const MAX_DATA: usize = 32 << 10;
/// Streams a connection may have open at once; more are refused (REFUSED_STREAM).
pub const MAX_STREAMS: usize = 512;

/// A header block: names in lower case, as SPDY/3 requires; several values of one name are
/// one value joined by NUL.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (lower case).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    /// (flags, id, value) per entry.
    Settings(Vec<(u8, u32, u32)>),
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this module does not know (the specification says to ignore
    /// it).
    Unknown(u16),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// The zlib dictionary of SPDY/3 header compression (specification §2.6.10.1): header names
/// and common values, each word with a 4-byte length in front, then a run of status codes,
/// dates and media types. Its Adler-32 (0xe3c6a7c2) is what a peer's zlib stream names.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
            " 00:00:00",
            " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
            "text/plain,text/javascript,public",
            "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        for t in TAIL {
            d.extend_from_slice(t.as_bytes());
        }
        d
    })
}

/// One connection's framing state: the two zlib streams of its header blocks.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Codec {
            deflate,
            inflate: Decompress::new(true),
        }
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32(((flags as u32) << 24) | body.len() as u32);
            out.put_slice(body);
        };
        let mut body = BytesMut::new();
        match frame {
            Frame::Data { id, fin, data } => {
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32(((if *fin { FLAG_FIN } else { 0 } as u32) << 24) | data.len() as u32);
                out.put_slice(data);
            }
            Frame::SynStream {
                id,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                body.put_u32(*id);
                body.put_u32(*associated);
                body.put_u8(priority << 5);
                body.put_u8(0);
                body.put_slice(&self.compress(headers));
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                control(out, SYN_STREAM, flags, &body);
            }
            Frame::SynReply { id, fin, headers } => {
                body.put_u32(*id);
                body.put_slice(&self.compress(headers));
                control(out, SYN_REPLY, flag(*fin, FLAG_FIN), &body);
            }
            Frame::Headers { id, fin, headers } => {
                body.put_u32(*id);
                body.put_slice(&self.compress(headers));
                control(out, HEADERS, flag(*fin, FLAG_FIN), &body);
            }
            Frame::RstStream { id, status } => {
                body.put_u32(*id);
                body.put_u32(*status);
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Settings(entries) => {
                body.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    body.put_u32(((*flags as u32) << 24) | (id & 0x00ff_ffff));
                    body.put_u32(*value);
                }
                control(out, SETTINGS, 0, &body);
            }
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                body.put_u32(*last_good);
                body.put_u32(*status);
                control(out, GOAWAY, 0, &body);
            }
            Frame::WindowUpdate { id, delta } => {
                body.put_u32(*id);
                body.put_u32(*delta);
                control(out, WINDOW_UPDATE, 0, &body);
            }
            Frame::Unknown(kind) => control(out, *kind, 0, &[]),
        }
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` until one has arrived.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut body = buf.split_to(len).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                id,
                fin,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, what: &'static str| {
            if body.len() < n {
                Err(SpdyError::Malformed(what))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                let id = body.get_u32() & 0x7fff_ffff;
                let associated = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                body.advance(1);
                Frame::SynStream {
                    id,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.decompress(&body)?,
                }
            }
            SYN_REPLY => {
                need(4, "SYN_REPLY")?;
                let id = body.get_u32() & 0x7fff_ffff;
                Frame::SynReply {
                    id,
                    fin,
                    headers: self.decompress(&body)?,
                }
            }
            HEADERS => {
                need(4, "HEADERS")?;
                let id = body.get_u32() & 0x7fff_ffff;
                Frame::Headers {
                    id,
                    fin,
                    headers: self.decompress(&body)?,
                }
            }
            RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream {
                    id: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            SETTINGS => {
                need(4, "SETTINGS")?;
                let n = body.get_u32() as usize;
                if body.len() != n.saturating_mul(8) {
                    return Err(SpdyError::Malformed("SETTINGS"));
                }
                let entries = (0..n)
                    .map(|_| {
                        let word = body.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, body.get_u32())
                    })
                    .collect();
                Frame::Settings(entries)
            }
            PING => {
                need(4, "PING")?;
                Frame::Ping(body.get_u32())
            }
            GOAWAY => {
                need(4, "GOAWAY")?;
                let last_good = body.get_u32() & 0x7fff_ffff;
                // SPDY/2 had no status; SPDY/3 peers send one.
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway { last_good, status }
            }
            WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    id: body.get_u32() & 0x7fff_ffff,
                    delta: body.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown(other),
        };
        Ok(Some(frame))
    }

    /// A header block, compressed into this connection's zlib stream (sync flush, so the peer
    /// can read it whole).
    fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("zlib compression of memory cannot fail");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once everything went in and the flush had room to finish.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }

    /// Reads a header block from the peer's zlib stream.
    fn decompress(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let bad = |e: String| SpdyError::HeaderBlock(e);
        let mut raw = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| bad(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
            if input.is_empty() && raw.len() < raw.capacity() {
                break;
            }
            if raw.len() >= MAX_HEADER_BLOCK {
                return Err(bad(format!("larger than {MAX_HEADER_BLOCK} bytes")));
            }
            raw.reserve(raw.capacity().max(256));
        }
        parse_block(&raw).ok_or_else(|| bad("truncated name/value block".into()))
    }
}

fn flag(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

/// A decompressed name/value block: a 32-bit count, then each name and value with a 32-bit
/// length in front.
fn parse_block(mut raw: &[u8]) -> Option<Headers> {
    let take = |raw: &mut &[u8]| -> Option<String> {
        if raw.len() < 4 {
            return None;
        }
        let n = raw.get_u32() as usize;
        if raw.len() < n {
            return None;
        }
        let s = String::from_utf8_lossy(&raw[..n]).into_owned();
        raw.advance(n);
        Some(s)
    };
    if raw.len() < 4 {
        return None;
    }
    let count = raw.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut raw)?.to_ascii_lowercase();
        let value = take(&mut raw)?;
        headers.push((name, value));
    }
    Some(headers)
}

/// What the session's writer sends: a frame, or the end (GOAWAY, then the socket closes).
enum Out {
    Frame(Frame),
    Close,
}

/// Sends on one stream the peer opened.
#[derive(Clone)]
pub struct SendStream {
    id: u32,
    tx: mpsc::Sender<Out>,
}

impl SendStream {
    /// Sends `data` (in frames of at most [`MAX_DATA`]); `false` once the connection is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data {
                id: self.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            };
            if self.tx.send(Out::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Ends procnode's half of the stream (a DATA frame with FIN).
    pub async fn finish(&self) {
        let frame = Frame::Data {
            id: self.id,
            fin: true,
            data: Bytes::new(),
        };
        let _ = self.tx.send(Out::Frame(frame)).await;
    }
}

/// A stream the peer opened: its headers, what it sends (the receiver ends at its FIN or
/// reset, or when the connection ends) and procnode's half.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub data: mpsc::Receiver<Bytes>,
    pub out: SendStream,
}

/// A running SPDY connection, server side.
pub struct Session {
    /// Streams as the peer opens them; ends when the connection does (or after GOAWAY).
    pub incoming: mpsc::Receiver<Stream>,
    tx: mpsc::Sender<Out>,
    gone: watch::Receiver<bool>,
}

impl Session {
    /// Runs the connection `io` (already upgraded) on two tasks.
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(64);
        let (new_tx, incoming) = mpsc::channel(16);
        let (gone_tx, gone) = watch::channel(false);
        tokio::spawn(write_loop(write, rx));
        tokio::spawn(read_loop(read, tx.clone(), new_tx, gone_tx));
        Session { incoming, tx, gone }
    }

    /// Resolves when the peer's side of the connection has ended (closed, broken or reset).
    pub fn gone(&self) -> watch::Receiver<bool> {
        self.gone.clone()
    }

    /// Ends the connection: what was queued is sent, then GOAWAY, then the socket closes.
    pub async fn close(self) {
        let _ = self.tx.send(Out::Close).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, mut rx: mpsc::Receiver<Out>) {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(MAX_DATA + 64);
    while let Some(out) = rx.recv().await {
        // Everything queued goes out in one write.
        let mut next = Some(out);
        let mut close = false;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => codec.encode(&f, &mut buf),
                Out::Close => {
                    codec.encode(
                        &Frame::GoAway {
                            last_good: 0,
                            status: 0,
                        },
                        &mut buf,
                    );
                    close = true;
                    break;
                }
            }
            if buf.len() >= 4 * MAX_DATA {
                break;
            }
            next = rx.try_recv().ok();
        }
        if write.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if close {
            let _ = write.flush().await;
            let _ = write.shutdown().await;
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    tx: mpsc::Sender<Out>,
    new_streams: mpsc::Sender<Stream>,
    gone: watch::Sender<bool>,
) {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    let mut going_away = false;
    'conn: loop {
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY connection ended");
                    break 'conn;
                }
            }
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => {}
            }
        };
        let send = |f: Frame| tx.send(Out::Frame(f));
        match frame {
            Frame::SynStream {
                id, fin, headers, ..
            } => {
                // Client streams have odd, increasing ids.
                if id % 2 == 0 || id <= last_id {
                    let _ = send(Frame::RstStream {
                        id,
                        status: PROTOCOL_ERROR,
                    })
                    .await;
                    continue;
                }
                last_id = id;
                streams.retain(|_, s| !s.is_closed());
                if going_away || streams.len() >= MAX_STREAMS {
                    let _ = send(Frame::RstStream {
                        id,
                        status: REFUSED_STREAM,
                    })
                    .await;
                    continue;
                }
                let (data_tx, data) = mpsc::channel(16);
                if !fin {
                    streams.insert(id, data_tx);
                }
                let _ = send(Frame::SynReply {
                    id,
                    fin: false,
                    headers: Vec::new(),
                })
                .await;
                let stream = Stream {
                    id,
                    headers,
                    data,
                    out: SendStream { id, tx: tx.clone() },
                };
                if new_streams.send(stream).await.is_err() {
                    // Nobody takes new streams any more: the session is ending.
                    going_away = true;
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(s) = streams.get(&id) {
                    if !data.is_empty() && s.send(data).await.is_err() {
                        // The reader of this stream is gone; what it is sent is dropped.
                        streams.remove(&id);
                    }
                }
                if fin {
                    streams.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                streams.remove(&id);
            }
            // A peer's ping (odd id) is answered; procnode sends none of its own.
            Frame::Ping(id) if id % 2 == 1 => {
                let _ = send(Frame::Ping(id)).await;
            }
            Frame::GoAway { .. } => going_away = true,
            Frame::Headers { fin: true, id, .. } => {
                streams.remove(&id);
            }
            Frame::Ping(_)
            | Frame::Headers { .. }
            | Frame::SynReply { .. }
            | Frame::Settings(_)
            | Frame::WindowUpdate { .. }
            | Frame::Unknown(_) => {}
        }
    }
    drop(streams);
    gone.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        frames
    }

    #[test]
    fn the_dictionary_is_the_specifications() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
        // Adler-32, as a peer's zlib header names it (FDICT).
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn control_frames_built_by_hand_decode() {
        let mut codec = Codec::new();
        #[rustfmt::skip]
        let bytes = [
            // PING id 1: control bit + version 3, type 6, flags 0, length 4.
            0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
            // RST_STREAM stream 5, status CANCEL (5).
            0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x05,
            // SETTINGS: one entry, flags 0, id 7 (initial window), value 65536.
            0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x07, 0x00, 0x01, 0x00, 0x00,
            // WINDOW_UPDATE stream 0 (the session), delta 1024.
            0x80, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
            // GOAWAY last good stream 7, status OK.
            0x80, 0x03, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00,
            // DATA stream 3, FIN, "hi".
            0x00, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x02, b'h', b'i',
            // A control type this module does not know (type 10, 2 bytes of body).
            0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb,
        ];
        let frames = decode_all(&mut codec, &bytes);
        assert_eq!(
            frames,
            vec![
                Frame::Ping(1),
                Frame::RstStream { id: 5, status: 5 },
                Frame::Settings(vec![(0, 7, 65536)]),
                Frame::WindowUpdate { id: 0, delta: 1024 },
                Frame::GoAway {
                    last_good: 7,
                    status: 0
                },
                Frame::Data {
                    id: 3,
                    fin: true,
                    data: Bytes::from_static(b"hi")
                },
                Frame::Unknown(10),
            ]
        );
        // And they encode back to the same bytes (but the unknown one, which has no body).
        let mut out = BytesMut::new();
        for f in &frames[..6] {
            codec.encode(f, &mut out);
        }
        assert_eq!(&out[..], &bytes[..bytes.len() - 10]);
    }

    /// A SYN_STREAM whose header block was compressed by another zlib (Python's, with the
    /// dictionary), as a Go client sends it: streamtype error, stream 1, priority 0.
    #[test]
    fn a_header_block_compressed_elsewhere_decodes() {
        // zlib.compressobj(zdict=dictionary) over the block
        //   count 1, "streamtype", "error"; flushed with Z_SYNC_FLUSH.
        let block = hex("78bbe3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
        let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00];
        frame.push(10 + block.len() as u8);
        frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&block);
        let mut codec = Codec::new();
        let frames = decode_all(&mut codec, &frame);
        assert_eq!(
            frames,
            vec![Frame::SynStream {
                id: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: vec![("streamtype".into(), "error".into())],
            }]
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The same block as the first of a HEADERS frame (its zlib stream starts there).
    #[test]
    fn a_headers_frame_built_by_hand_decodes() {
        let block = hex("78bbe3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
        let mut frame = vec![0x80, 0x03, 0x00, 0x08, 0x01, 0x00, 0x00];
        frame.push(4 + block.len() as u8);
        frame.extend_from_slice(&[0, 0, 0, 3]);
        frame.extend_from_slice(&block);
        let frames = decode_all(&mut Codec::new(), &frame);
        assert_eq!(
            frames,
            vec![Frame::Headers {
                id: 3,
                fin: true,
                headers: vec![("streamtype".into(), "error".into())],
            }]
        );
    }

    /// A session as a client sees it: each stream answered with a SYN_REPLY and its data
    /// delivered, a ping echoed, a stream with an even id reset, and after GOAWAY new streams
    /// refused.
    #[tokio::test]
    async fn a_session_answers_streams_and_pings_and_honours_goaway() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server);
        let mut codec = Codec::new();
        let mut out = BytesMut::new();
        let syn = |id: u32| Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: vec![("streamtype".into(), "stdin".into())],
        };
        codec.encode(&syn(1), &mut out);
        codec.encode(
            &Frame::Data {
                id: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            &mut out,
        );
        codec.encode(&Frame::Ping(7), &mut out);
        codec.encode(&syn(4), &mut out);
        client.write_all(&out).await.unwrap();
        let mut stream = session.incoming.recv().await.expect("the stream");
        assert_eq!(
            (stream.id, header(&stream.headers, "streamtype")),
            (1, Some("stdin"))
        );
        assert_eq!(&stream.data.recv().await.unwrap()[..], b"hello");
        assert!(stream.data.recv().await.is_none(), "FIN ends it");
        stream.out.send(b"back").await;
        // What the server wrote: the reply, the ping, the reset, the data.
        let mut seen = Vec::new();
        let mut buf = BytesMut::new();
        while seen.len() < 4 {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                seen.push(f);
            }
        }
        assert!(
            matches!(
                seen[0],
                Frame::SynReply {
                    id: 1,
                    fin: false,
                    ..
                }
            ),
            "{seen:?}"
        );
        assert!(seen.contains(&Frame::Ping(7)), "{seen:?}");
        assert!(seen.contains(&Frame::RstStream {
            id: 4,
            status: PROTOCOL_ERROR
        }));
        assert!(seen.contains(&Frame::Data {
            id: 1,
            fin: false,
            data: Bytes::from_static(b"back")
        }));
        // GOAWAY: a later stream is refused.
        let mut out = BytesMut::new();
        codec.encode(
            &Frame::GoAway {
                last_good: 1,
                status: 0,
            },
            &mut out,
        );
        codec.encode(&syn(5), &mut out);
        client.write_all(&out).await.unwrap();
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        let mut buf = BytesMut::from(&chunk[..n]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::RstStream {
                id: 5,
                status: REFUSED_STREAM
            })
        );
        // The client leaves: the session says so.
        drop(client);
        let mut gone = session.gone();
        gone.wait_for(|g| *g).await.unwrap();
    }

    #[test]
    fn header_blocks_round_trip_through_one_zlib_stream_each_way() {
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let mut wire = BytesMut::new();
        for (i, kind) in ["error", "stdin", "stdout", "stderr", "resize"]
            .iter()
            .enumerate()
        {
            client.encode(
                &Frame::SynStream {
                    id: 2 * i as u32 + 1,
                    associated: 0,
                    priority: 0,
                    fin: *kind == "error",
                    unidirectional: false,
                    headers: vec![
                        ("streamType".into(), kind.to_string()),
                        ("port".into(), "8080\u{0}9090".into()),
                    ],
                },
                &mut wire,
            );
        }
        let frames = decode_all(&mut server, &wire);
        assert_eq!(frames.len(), 5);
        let Frame::SynStream {
            id, fin, headers, ..
        } = &frames[4]
        else {
            panic!("{frames:?}")
        };
        assert_eq!((*id, *fin), (9, false));
        assert_eq!(header(headers, "streamtype"), Some("resize"));
        assert_eq!(header(headers, "port"), Some("8080"));
        let Frame::SynStream { fin, .. } = &frames[0] else {
            panic!()
        };
        assert!(fin);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut codec = Codec::new();
        // Version 2.
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(codec.decode(&mut buf), Err(SpdyError::Version(2)));
        // A frame claiming 16 MiB.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(SpdyError::TooLarge(_))
        ));
        // A SYN_STREAM too short for its fixed fields.
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0, 0, 0, 2, 0, 0][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(SpdyError::Malformed("SYN_STREAM"))
        );
        // A header block that is not zlib.
        let mut buf = BytesMut::from(
            &[
                0x80, 0x03, 0x00, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef,
            ][..],
        );
        assert!(matches!(
            codec.decode(&mut buf),
            Err(SpdyError::HeaderBlock(_))
        ));
        // Half a frame is not yet a frame.
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0][..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
    }
}
