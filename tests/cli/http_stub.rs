//! The HTTP plumbing the API stand-ins share (`forge_server.rs`,
//! `hcloud_server.rs`): a loopback listener with one thread per connection,
//! one HTTP/1.1 request read per connection (request line, headers, a body by
//! `Content-Length` or chunked, up to a size limit; `Expect: 100-continue`
//! answered) and answered with `Content-Length` and `Connection: close`, query
//! decoding, and `Reply`, the self-tests' view of an answer.
//!
//! What a request means (routes, validation, state) stays in each stand-in.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use serde_json::Value;

/// A stand-in's state behind a mutex: a panicking test thread must not turn
/// every later request into a poisoned-lock panic, so the state stays usable.
pub fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Listening

/// A free port on 127.0.0.1; panics naming the stand-in (`what`).
pub fn bind(what: &str) -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind the {what} stand-in: {e:?}"))
}

/// The accepting side of a stand-in: a thread accepting on its listener and
/// handing each connection to `connection` on a thread of its own, until
/// [`Loopback::stop`] (or drop).
pub struct Loopback {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Loopback {
    pub fn serve(
        listener: TcpListener,
        connection: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Loopback {
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let connection = Arc::new(connection);
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let connection = Arc::clone(&connection);
                    thread::spawn(move || connection(stream));
                }
            }
        });
        Loopback {
            port,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting and waits for the accepting thread; connections
    /// already accepted finish on their own. Again: nothing.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Unblocks `accept`, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = accept.join();
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// One exchange

pub struct HttpRequest {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    /// Bytes: a forge's release assets are binaries.
    pub body: Vec<u8>,
}

impl Resp {
    /// `body` as JSON with `content_type`, which each API words its own way.
    pub fn json(status: u16, content_type: &'static str, body: Value) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            content_type,
            body: body.to_string().into(),
        }
    }
}

/// A connection a stand-in can end: TCP shuts its write side, TLS says
/// close_notify first.
pub trait Stream: Read + Write {
    fn close(&mut self);
}

impl Stream for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Stream for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

/// One request read from `stream` (a body up to `max_body` bytes) and
/// answered with what `answer` makes of it, or of why it could not be read;
/// a connection closed before a request (e.g. [`Loopback::stop`]'s wake-up)
/// is not answered.
pub fn exchange(
    stream: impl Stream,
    max_body: usize,
    answer: impl FnOnce(io::Result<HttpRequest>) -> Resp,
) {
    let mut reader = BufReader::new(stream);
    let resp = match read_request(&mut reader, max_body) {
        Ok(None) => return,
        Ok(Some(req)) => answer(Ok(req)),
        Err(e) => answer(Err(e)),
    };
    let mut stream = reader.into_inner();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&resp.body))
        .and_then(|()| stream.flush());
    stream.close();
}

fn read_request<S: Read + Write>(
    reader: &mut BufReader<S>,
    max_body: usize,
) -> io::Result<Option<HttpRequest>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let [method, target, _version] = words[..] else {
        return Err(bad(format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the headers".into()));
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {header:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = HttpRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let writer = reader.get_mut();
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            if req.body.len() + size > max_body {
                return Err(bad("body too large".into()));
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            reader.read_exact(&mut req.body[start..])?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(length) = req.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {length:?}")))?;
        if length > max_body {
            return Err(bad("body too large".into()));
        }
        req.body.resize(length, 0);
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// The reason phrase of each status the stand-ins answer with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------
// Queries

/// `a=1&b=x+y` decoded, in order.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (pct_decode(k, true), pct_decode(v, true)))
        .collect()
}

/// The first value of `name`.
pub fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-decoding; in a query, `+` is a space.
pub fn pct_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten();
        match escaped.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' && plus_is_space {
                    b' '
                } else {
                    bytes[i]
                });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Self-tests

/// An answer as a self-test's client received it. Each stand-in's self-tests
/// add their API's accessors (`impl Reply` in their module).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header named `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        found.next().map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with it when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}
