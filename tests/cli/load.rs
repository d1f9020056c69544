//! A load generator for zero-downtime checks: `concurrency` workers sending
//! `GET path` with a given `Host` to 127.0.0.1:port over HTTP/1.1 keep-alive
//! (std only: `TcpStream` and threads), recording when each request completed,
//! how long it took and what came back, until stopped. A deploy test starts
//! the load in front of a reverse proxy, switches the app's version, stops the
//! load and asserts on the [`Report`]: no failures, and only the new version
//! after the switch.
//!
//! Responses are parsed properly: status line (1xx interim responses
//! skipped), headers, a body by `Content-Length`, `Transfer-Encoding: chunked`
//! or read to the connection's close, and `Connection: close` (or HTTP/1.0
//! without keep-alive) honoured by reconnecting. A response that does not
//! complete within [`REQUEST_TIMEOUT`] of the request's start is an error.
//!
//! One retry, as HTTP clients do for idempotent requests (RFC 9110 §9.2.2):
//! when a *reused* keep-alive connection turns out closed (EOF or reset on
//! write or read) before a single byte of the response arrived, the request is
//! sent once more on a fresh connection and the retry's outcome is recorded.
//! That race (a server closing an idle keep-alive connection just as a request
//! goes out) is not a failed request for a browser either. Retries are counted
//! in [`Report::retries`] and the summary, so a test can be stricter.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one request may take, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker's pause after an error, so a refused port does not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(5);
/// How often a worker waiting on a response checks whether it was stopped.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Longest status line or header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 200;
/// Body bytes kept per response (the rest is read and dropped).
const KEEP_BODY: usize = 64 * 1024;
/// Body bytes kept in an [`Outcome::Ok`], after trimming.
const BODY_IN_SAMPLE: usize = 200;

/// A running load; [`Load::stop`] ends it and hands back the [`Report`].
pub struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<(Vec<Sample>, usize)>>,
}

/// One request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Since the load started, when the response (or error) completed.
    pub at: Duration,
    /// From the request's start (connect included, when it needed one) to
    /// `at`.
    pub latency: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response; `body` trimmed, at most 200 bytes.
    Ok { status: u16, body: String },
    /// Connect refused, reset, timeout, malformed response, ….
    Error(String),
}

impl Sample {
    /// A 2xx response.
    fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { status, .. } if (200..300).contains(&status))
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at.as_secs_f64();
        let ms = self.latency.as_secs_f64() * 1000.0;
        match &self.outcome {
            Outcome::Ok { status, body } => {
                write!(f, "at {at:.3}s ({ms:.1} ms): {status} {body:?}")
            }
            Outcome::Error(e) => write!(f, "at {at:.3}s ({ms:.1} ms): error: {e}"),
        }
    }
}

impl Load {
    /// `concurrency` workers sending `GET path` with `Host: host_header` to
    /// 127.0.0.1:`port`, HTTP/1.1 keep-alive, each reconnecting after an
    /// error or `Connection: close`, a request timeout of 5 s, until stopped.
    pub fn start(port: u16, host_header: &str, path: &str, concurrency: usize) -> Load {
        assert!(concurrency > 0, "a load needs at least one worker");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let request = Arc::new(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host_header}\r\n\
                 User-Agent: fleetgate-load-test\r\nAccept: */*\r\n\r\n"
            )
            .into_bytes(),
        );
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..concurrency)
            .map(|i| {
                let worker = Worker {
                    addr,
                    request: Arc::clone(&request),
                    start,
                    stop: Arc::clone(&stop),
                };
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || worker.run())
                    .expect("spawn a load worker")
            })
            .collect();
        Load {
            start,
            stop,
            workers,
        }
    }

    /// Since the load started; the time base of [`Sample::at`].
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the workers (a request still in flight is abandoned, not
    /// recorded) and collects what they saw.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples = Vec::new();
        let mut retries = 0;
        for worker in self.workers {
            let (mine, retried) = worker.join().expect("a load worker panicked");
            samples.extend(mine);
            retries += retried;
        }
        samples.sort_by_key(|s| s.at);
        // After the workers ended: no sample completes after it.
        let duration = self.start.elapsed();
        Report {
            samples,
            retries,
            duration,
        }
    }
}

/// What a load saw.
#[derive(Debug)]
pub struct Report {
    /// Sorted by `at`.
    pub samples: Vec<Sample>,
    /// Requests sent a second time after a reused connection was found closed
    /// (see the module docs); only the retry's outcome is in `samples`.
    pub retries: usize,
    /// From start to stop.
    pub duration: Duration,
}

impl Report {
    pub fn total(&self) -> usize {
        self.samples.len()
    }

    /// Responses that are not 2xx, and errors: each with when and what, for
    /// assertion messages (`Sample` displays as one line).
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !s.is_ok()).collect()
    }

    /// Connection errors: refused, reset, timeout, malformed.
    pub fn errors(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Error(_)))
            .count()
    }

    /// Complete responses that are not 2xx.
    pub fn failed_status(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Ok { .. }) && !s.is_ok())
            .count()
    }

    /// The distinct bodies of 2xx responses, in order of first appearance,
    /// with the first and last time each was seen.
    pub fn versions(&self) -> Vec<(String, Duration, Duration)> {
        let mut seen: Vec<(String, Duration, Duration)> = Vec::new();
        for s in &self.samples {
            let Outcome::Ok { body, .. } = &s.outcome else {
                continue;
            };
            if !s.is_ok() {
                continue;
            }
            match seen.iter_mut().find(|(b, _, _)| b == body) {
                Some(entry) => entry.2 = s.at,
                None => seen.push((body.clone(), s.at, s.at)),
            }
        }
        seen
    }

    /// Every 2xx response completed after `t` has this body, and there was at
    /// least one. Failures after `t` are not looked at here (see
    /// [`Report::failures`]).
    pub fn all_after(&self, t: Duration, body: &str) -> Result<(), String> {
        let after: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.at > t && s.is_ok())
            .collect();
        if after.is_empty() {
            return Err(format!(
                "no 2xx response after {:.3}s (of {} samples; {})",
                t.as_secs_f64(),
                self.total(),
                self.summary()
            ));
        }
        let other: Vec<&&Sample> = after
            .iter()
            .filter(|s| !matches!(&s.outcome, Outcome::Ok { body: b, .. } if b == body))
            .collect();
        match other.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} of {} 2xx responses after {:.3}s are not {body:?}; the first {first}, the last {}",
                other.len(),
                after.len(),
                t.as_secs_f64(),
                other[other.len() - 1]
            )),
        }
    }

    /// One line: total, rps, failures, p50/p99 latency (over every sample,
    /// errors included), retries, versions seen.
    pub fn summary(&self) -> String {
        let secs = self.duration.as_secs_f64();
        let rps = if secs > 0.0 {
            self.total() as f64 / secs
        } else {
            0.0
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let versions: Vec<String> = self
            .versions()
            .iter()
            .map(|(b, first, last)| {
                format!(
                    "{b:?} {:.3}s..{:.3}s",
                    first.as_secs_f64(),
                    last.as_secs_f64()
                )
            })
            .collect();
        format!(
            "{} requests in {secs:.2}s ({rps:.0} rps), {} failures ({} errors, {} non-2xx), \
             latency p50 {:.1} ms p99 {:.1} ms, {} retries, versions: [{}]",
            self.total(),
            self.errors() + self.failed_status(),
            self.errors(),
            self.failed_status(),
            ms(self.percentile(50)),
            ms(self.percentile(99)),
            self.retries,
            versions.join(", ")
        )
    }

    /// The 99th percentile of latency over every sample (errors included);
    /// zero without samples.
    pub fn p99(&self) -> Duration {
        self.percentile(99)
    }

    /// Nearest-rank percentile of latency.
    fn percentile(&self, p: usize) -> Duration {
        let mut latencies: Vec<Duration> = self.samples.iter().map(|s| s.latency).collect();
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies.sort();
        let rank = (p * latencies.len()).div_ceil(100).max(1);
        latencies[rank - 1]
    }
}

// ---------------------------------------------------------------------------
// A worker

struct Worker {
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    start: Instant,
    stop: Arc<AtomicBool>,
}

/// Why an exchange did not give a response.
enum Fail {
    /// The load was stopped meanwhile; nothing to record.
    Stopped,
    /// The server closed the connection (EOF, reset, broken pipe) before the
    /// response was complete; `nothing` when not a byte of it had arrived,
    /// `eof` when it ended cleanly (not a reset).
    Closed {
        what: String,
        nothing: bool,
        eof: bool,
    },
    /// Anything else: refused, timeout, malformed, other I/O errors.
    Other(String),
}

impl Fail {
    fn describe(self) -> String {
        match self {
            Fail::Stopped => "stopped".to_string(),
            Fail::Closed { what, .. } | Fail::Other(what) => what,
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Worker {
    fn run(self) -> (Vec<Sample>, usize) {
        let mut samples = Vec::new();
        let mut retries = 0;
        let mut conn: Option<Conn> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let begun = Instant::now();
            let deadline = begun + REQUEST_TIMEOUT;
            let reused = conn.is_some();
            let mut result = self.exchange(&mut conn, deadline);
            if reused && matches!(result, Err(Fail::Closed { nothing: true, .. })) {
                // `exchange` dropped the dead connection: this one is fresh.
                retries += 1;
                result = self.exchange(&mut conn, deadline);
            }
            let outcome = match result {
                Ok(response) => Outcome::Ok {
                    status: response.status,
                    body: sample_body(&response.body),
                },
                Err(Fail::Stopped) => break,
                Err(fail) => Outcome::Error(fail.describe()),
            };
            let failed = matches!(outcome, Outcome::Error(_));
            samples.push(Sample {
                at: self.start.elapsed(),
                latency: begun.elapsed(),
                outcome,
            });
            if failed {
                thread::sleep(ERROR_PAUSE);
            }
        }
        (samples, retries)
    }

    /// One request and its response on `conn` (connecting first when there
    /// is none). The connection is kept only after a complete keep-alive
    /// response.
    fn exchange(&self, conn: &mut Option<Conn>, deadline: Instant) -> Result<Response, Fail> {
        if conn.is_none() {
            *conn = Some(self.connect(deadline)?);
        }
        let c = conn.as_mut().expect("connected above");
        let result = c.request(&self.request, deadline, &self.stop);
        if !matches!(&result, Ok(response) if response.keep_alive)
            && let Some(c) = conn.take()
        {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        result
    }

    fn connect(&self, deadline: Instant) -> Result<Conn, Fail> {
        let left = deadline.saturating_duration_since(Instant::now());
        let stream = TcpStream::connect_timeout(&self.addr, left.max(Duration::from_millis(1)))
            .map_err(|e| Fail::Other(format!("connect {}: {e}", self.addr)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Fail::Other(format!("set TCP_NODELAY: {e}")))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            received: 0,
        })
    }
}

/// `body` as a sample keeps it: lossy UTF-8, trimmed, at most 200 bytes (cut
/// at a character boundary).
fn sample_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(BODY_IN_SAMPLE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

// ---------------------------------------------------------------------------
// One connection: requests out, responses parsed

struct Conn {
    stream: TcpStream,
    /// Read but not yet parsed.
    buf: Vec<u8>,
    /// Bytes read for the response being parsed.
    received: usize,
}

/// A kind of I/O error that means the peer closed the connection.
fn closed_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn malformed(what: impl std::fmt::Display) -> Fail {
    Fail::Other(format!("malformed response: {what}"))
}

impl Conn {
    fn request(
        &mut self,
        request: &[u8],
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Response, Fail> {
        if !self.buf.is_empty() {
            // Nothing was asked: bytes beyond the last response.
            return Err(malformed(format!(
                "{} unexpected bytes before the request: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(80)])
            )));
        }
        self.received = 0;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|e| Fail::Other(format!("set write timeout: {e}")))?;
        if let Err(e) = self.stream.write_all(request) {
            return Err(match e.kind() {
                k if closed_kind(k) => Fail::Closed {
                    what: format!("write the request: {e}"),
                    nothing: true,
                    eof: false,
                },
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timeout(),
                _ => Fail::Other(format!("write the request: {e}")),
            });
        }
        loop {
            let response = self.response(deadline, stop)?;
            // Interim responses (100 Continue, 103 Early Hints) precede the
            // real one; 101 would switch protocols, which was not asked for.
            if (100..200).contains(&response.status) {
                if response.status == 101 {
                    return Err(malformed("101 Switching Protocols to a plain GET"));
                }
                continue;
            }
            return Ok(response);
        }
    }

    /// One response: status line, headers, body.
    fn response(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Response, Fail> {
        let line = self.line(deadline, stop)?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let http10 = match version {
            "HTTP/1.1" => false,
            "HTTP/1.0" => true,
            _ => return Err(malformed(format!("status line {line:?}"))),
        };
        let status: u16 = match code.parse() {
            Ok(status) if code.len() == 3 && (100..600).contains(&status) => status,
            _ => return Err(malformed(format!("status line {line:?}"))),
        };

        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive_token = false;
        let mut count = 0;
        loop {
            let line = self.line(deadline, stop)?;
            if line.is_empty() {
                break;
            }
            count += 1;
            if count > MAX_HEADERS {
                return Err(malformed(format!("more than {MAX_HEADERS} header lines")));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(malformed(format!("header line {line:?}")));
            };
            if name.is_empty() || name.ends_with([' ', '\t']) {
                return Err(malformed(format!("header name in {line:?}")));
            }
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n: u64 = value
                        .parse()
                        .map_err(|_| malformed(format!("Content-Length {value:?}")))?;
                    if content_length.is_some_and(|m| m != n) {
                        return Err(malformed("differing Content-Length headers"));
                    }
                    content_length = Some(n);
                }
                "transfer-encoding" => {
                    let last = value.rsplit(',').next().unwrap_or_default().trim();
                    if last.eq_ignore_ascii_case("chunked") {
                        chunked = true;
                    } else {
                        return Err(malformed(format!("Transfer-Encoding {value:?}")));
                    }
                }
                "connection" => {
                    for token in value.split(',').map(str::trim) {
                        close |= token.eq_ignore_ascii_case("close");
                        keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
                    }
                }
                _ => {}
            }
        }
        let mut keep_alive = !close && (!http10 || keep_alive_token);

        let mut body = Vec::new();
        if (100..200).contains(&status) || status == 204 || status == 304 {
            // No body, whatever the headers say.
        } else if chunked {
            loop {
                let line = self.line(deadline, stop)?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| malformed(format!("chunk size line {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line(deadline, stop)?.is_empty() {}
                    break;
                }
                self.body(size, &mut body, deadline, stop)?;
                let end = self.line(deadline, stop)?;
                if !end.is_empty() {
                    return Err(malformed(format!("chunk not ended by CRLF: {end:?}")));
                }
            }
        } else if let Some(n) = content_length {
            self.body(n, &mut body, deadline, stop)?;
        } else {
            // Delimited by the server closing the connection.
            keep_alive = false;
            loop {
                keep(&mut body, &self.buf);
                self.buf.clear();
                match self.fill(deadline, stop) {
                    Ok(()) => {}
                    Err(Fail::Closed { eof: true, .. }) => break,
                    Err(fail) => return Err(fail),
                }
            }
        }
        Ok(Response {
            status,
            body,
            keep_alive,
        })
    }

    /// One line without its CRLF (a bare LF accepted), as UTF-8 (lossy).
    fn line(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<String, Fail> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            searched = self.buf.len();
            if searched > MAX_LINE {
                return Err(malformed(format!("a line longer than {MAX_LINE} bytes")));
            }
            self.fill(deadline, stop)?;
        }
    }

    /// `n` body bytes, the first [`KEEP_BODY`] kept in `body`.
    fn body(
        &mut self,
        mut n: u64,
        body: &mut Vec<u8>,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<(), Fail> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill(deadline, stop)?;
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            keep(body, &self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads more into the buffer: waits until some bytes arrive, the
    /// deadline passes (an error), the load is stopped, or the connection
    /// ends.
    fn fill(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<(), Fail> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if stop.load(Ordering::SeqCst) {
                return Err(Fail::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout());
            }
            self.stream
                .set_read_timeout(Some(left.min(STOP_POLL)))
                .map_err(|e| Fail::Other(format!("set read timeout: {e}")))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Fail::Closed {
                        what: format!(
                            "connection closed after {} bytes of the response",
                            self.received
                        ),
                        nothing: self.received == 0,
                        eof: true,
                    });
                }
                Ok(n) => {
                    self.received += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if closed_kind(e.kind()) => {
                    return Err(Fail::Closed {
                        what: format!("read after {} bytes of the response: {e}", self.received),
                        nothing: self.received == 0,
                        eof: false,
                    });
                }
                Err(e) => return Err(Fail::Other(format!("read: {e}"))),
            }
        }
    }
}

fn timeout() -> Fail {
    Fail::Other(format!(
        "no complete response within {}s",
        REQUEST_TIMEOUT.as_secs()
    ))
}

/// Appends to `body` what still fits in [`KEEP_BODY`].
fn keep(body: &mut Vec<u8>, bytes: &[u8]) {
    let room = KEEP_BODY.saturating_sub(body.len());
    body.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

// ---------------------------------------------------------------------------
// Self-tests, against an app served in-process

/// How the stand-in app answers a request, by its number (from 0, across
/// connections): status and body.
type Answer = dyn Fn(u64) -> (u16, String) + Send + Sync;

/// A keep-alive HTTP/1.1 app on a fixed port that can go away (listener and
/// live connections closed) and come back on the same port. It varies its
/// framing by request number: `Content-Length` or chunked, and now and then
/// `Connection: close`; with `abrupt`, it closes every connection after its
/// first response without saying so.
struct App {
    port: u16,
    answer: Arc<Answer>,
    abrupt: bool,
    /// `Host` and path of every request seen.
    seen: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    live: Arc<Mutex<Vec<(u64, TcpStream)>>>,
}

impl App {
    fn start(answer: impl Fn(u64) -> (u16, String) + Send + Sync + 'static, abrupt: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the app stand-in");
        let mut app = App {
            port: listener.local_addr().unwrap().port(),
            answer: Arc::new(answer),
            abrupt,
            seen: Arc::new(Mutex::new(Vec::new())),
            count: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            accept: None,
            live: Arc::new(Mutex::new(Vec::new())),
        };
        app.serve(listener);
        app
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = Arc::clone(&stop);
        let (answer, seen, count, live, abrupt) = (
            Arc::clone(&self.answer),
            Arc::clone(&self.seen),
            Arc::clone(&self.count),
            Arc::clone(&self.live),
            self.abrupt,
        );
        self.accept = Some(thread::spawn(move || {
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                stream.set_nonblocking(false).unwrap();
                id += 1;
                live.lock().unwrap().push((id, stream.try_clone().unwrap()));
                let (answer, seen, count, live) = (
                    Arc::clone(&answer),
                    Arc::clone(&seen),
                    Arc::clone(&count),
                    Arc::clone(&live),
                );
                thread::spawn(move || {
                    let _ = App::connection(stream, &*answer, &seen, &count, abrupt);
                    live.lock().unwrap().retain(|(i, _)| *i != id);
                });
            }
            // The listener is dropped here: the port refuses connections.
        }));
    }

    /// Requests on one connection, answered until it closes.
    fn connection(
        stream: TcpStream,
        answer: &Answer,
        seen: &Mutex<Vec<(String, String)>>,
        count: &AtomicU64,
        abrupt: bool,
    ) -> io::Result<()> {
        let mut reader = io::BufReader::new(stream.try_clone()?);
        let mut out = stream;
        loop {
            let mut request_line = String::new();
            if io::BufRead::read_line(&mut reader, &mut request_line)? == 0 {
                return Ok(());
            }
            let mut host = String::new();
            loop {
                let mut line = String::new();
                if io::BufRead::read_line(&mut reader, &mut line)? == 0 {
                    return Ok(());
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("host")
                {
                    host = value.trim().to_string();
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or_default();
            seen.lock().unwrap().push((host, path.to_string()));

            let n = count.fetch_add(1, Ordering::SeqCst);
            let (status, body) = answer(n);
            let close = n % 10 == 9;
            let mut head = format!("HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\n");
            if close {
                head.push_str("Connection: close\r\n");
            }
            let response = if n.is_multiple_of(2) {
                format!("{head}Content-Length: {}\r\n\r\n{body}\n", body.len() + 1)
            } else {
                // Two chunks and a trailer.
                let (a, b) = body.split_at(body.len() / 2);
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\n\r\n0\r\nX-Trailer: t\r\n\r\n",
                    a.len(),
                    b.len() + 1
                )
            };
            out.write_all(response.as_bytes())?;
            if close || abrupt {
                return Ok(());
            }
        }
    }

    /// Gone: the listener closed (connects refused) and live connections
    /// shut down.
    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            accept.join().expect("the accept thread panicked");
        }
        for (_, stream) in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Back on the same port.
    fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind the app's port");
        self.serve(listener);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.down();
    }
}

fn failures_listed(report: &Report) -> String {
    let failures = report.failures();
    let mut lines: Vec<String> = failures.iter().take(10).map(|s| s.to_string()).collect();
    if failures.len() > 10 {
        lines.push(format!("… and {} more", failures.len() - 10));
    }
    format!("{}\n{}", report.summary(), lines.join("\n"))
}

#[test]
fn every_request_succeeds_and_the_version_switch_is_seen() {
    let version = Arc::new(Mutex::new("v1".to_string()));
    let current = Arc::clone(&version);
    let app = App::start(move |_| (200, current.lock().unwrap().clone()), false);

    let load = Load::start(app.port, "app.example.test", "/version", 4);
    thread::sleep(Duration::from_millis(400));
    let before = load.elapsed();
    *version.lock().unwrap() = "v2".to_string();
    // A response built just before the switch may still be on its way.
    let switched = load.elapsed() + Duration::from_millis(100);
    thread::sleep(Duration::from_millis(400));
    let report = load.stop();
    eprintln!("{}", report.summary());

    assert!(report.total() > 100, "{}", report.summary());
    assert!(report.failures().is_empty(), "{}", failures_listed(&report));
    assert_eq!(report.errors(), 0);
    assert_eq!(report.failed_status(), 0);
    assert_eq!(report.retries, 0, "{}", report.summary());
    let versions = report.versions();
    let names: Vec<&str> = versions.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(names, ["v1", "v2"], "{}", report.summary());
    assert!(versions[0].1 <= versions[0].2 && versions[0].2 <= switched);
    assert!(versions[1].1 >= before, "{}", report.summary());
    report.all_after(switched, "v2").unwrap();
    // And it can fail: v1 was served after the start, and nothing after the end.
    let err = report.all_after(Duration::ZERO, "v2").unwrap_err();
    assert!(err.contains("are not \"v2\""), "{err}");
    assert!(report.all_after(report.duration, "v2").is_err());

    let samples = &report.samples;
    assert!(samples.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(samples.iter().all(|s| s.latency <= s.at));
    assert!(report.p99() > Duration::ZERO && report.p99() < Duration::from_secs(1));
    let summary = report.summary();
    assert!(
        summary.starts_with(&format!("{} requests in 0.8", report.total())),
        "{summary}"
    );
    assert!(
        summary.contains(" 0 failures (0 errors, 0 non-2xx)"),
        "{summary}"
    );
    assert!(summary.contains("versions: [\"v1\" 0."), "{summary}");

    let seen = app.seen.lock().unwrap();
    assert!(seen.len() >= report.total());
    assert!(
        seen.iter()
            .all(|(host, path)| host == "app.example.test" && path == "/version"),
        "{:?}",
        seen.iter()
            .find(|(host, path)| host != "app.example.test" || path != "/version")
    );
}

#[test]
fn an_app_gone_for_a_while_shows_as_errors_and_the_load_resumes() {
    let mut app = App::start(|_| (200, "v1".to_string()), false);
    let load = Load::start(app.port, "app.example.test", "/", 4);
    thread::sleep(Duration::from_millis(300));
    let gone = load.elapsed();
    app.down();
    thread::sleep(Duration::from_millis(300));
    app.up();
    let back = load.elapsed();
    thread::sleep(Duration::from_millis(400));
    let report = load.stop();
    eprintln!("{}", report.summary());

    assert!(report.errors() > 0, "{}", report.summary());
    assert_eq!(report.failed_status(), 0, "{}", failures_listed(&report));
    let failures = report.failures();
    // Every error falls in the outage (the last one when a worker's retry
    // after its 5 ms pause found the port open again).
    let first = failures[0].at;
    let last = failures[failures.len() - 1].at;
    assert!(
        first >= gone && last <= back + Duration::from_millis(500),
        "gone {gone:?}..{back:?}: {}",
        failures_listed(&report)
    );
    assert!(
        failures.iter().any(
            |s| matches!(&s.outcome, Outcome::Error(e) if e.starts_with("connect 127.0.0.1:"))
        )
    );
    // No spinning on the refused port: 4 workers pausing 5 ms each for
    // ~300 ms make a few hundred errors, not tens of thousands.
    assert!(report.errors() < 1000, "{}", report.summary());
    // Requests went through again once the app was back.
    report.all_after(back, "v1").unwrap();
    let after = report.samples.iter().filter(|s| s.at > back).count();
    assert!(after > 100, "{after} requests after the app came back");
}

#[test]
fn error_statuses_count_as_failed_requests() {
    let app = App::start(
        |n| {
            if n % 3 == 0 {
                (502, "Bad Gateway".to_string())
            } else {
                (200, "v1".to_string())
            }
        },
        false,
    );
    let load = Load::start(app.port, "app.example.test", "/", 2);
    thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!("{}", report.summary());

    assert!(report.failed_status() > 0, "{}", report.summary());
    assert_eq!(report.errors(), 0, "{}", failures_listed(&report));
    let failures = report.failures();
    assert_eq!(failures.len(), report.failed_status());
    assert!(failures.iter().all(|s| s.outcome
        == Outcome::Ok {
            status: 502,
            body: "Bad Gateway".to_string()
        }));
    // A 502 page is not a version.
    let versions = report.versions();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].0, "v1");
    report.all_after(Duration::ZERO, "v1").unwrap();
    assert!(report.summary().contains(" non-2xx"));
    let ratio = report.failed_status() as f64 / report.total() as f64;
    assert!((0.2..0.5).contains(&ratio), "{}", report.summary());
}

#[test]
fn a_reused_connection_closed_before_the_response_is_retried_once() {
    // Every connection closes after one response, without `Connection:
    // close`: the next request on it finds it closed and goes out again on a
    // fresh connection.
    let app = App::start(|_| (200, "v1".to_string()), true);
    let load = Load::start(app.port, "app.example.test", "/", 2);
    thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!("{}", report.summary());

    assert!(report.failures().is_empty(), "{}", failures_listed(&report));
    assert!(report.retries > 0, "{}", report.summary());
    assert!(report.total() > 10, "{}", report.summary());
}

/// Responses served as raw bytes, one connection at a time, for the parser.
fn raw_app(responses: Vec<&'static [u8]>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for response in responses {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(response);
            let _ = stream.shutdown(Shutdown::Write);
            // Wait for the client to close, so the bytes are not reset away.
            let _ = stream.read(&mut request);
        }
    });
    (port, server)
}

#[test]
fn responses_are_parsed_not_guessed() {
    let (port, server) = raw_app(vec![
        // HTTP/1.0, body to the close, after an interim response.
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 200 OK\r\n\r\n  to the close \n",
        // Chunked, mixed-case headers, a bare LF.
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: Chunked\nCONNECTION: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        // Not HTTP.
        b"SSH-2.0-OpenSSH_9.6\r\n",
        // A body shorter than announced.
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ]);
    let mut conn: Option<Conn> = None;
    let worker = Worker {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        request: Arc::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        start: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let deadline = || Instant::now() + Duration::from_secs(2);
    let mut next = || match worker.exchange(&mut conn, deadline()) {
        Ok(r) => Ok((r.status, sample_body(&r.body), r.keep_alive)),
        Err(fail) => Err(fail.describe()),
    };
    assert_eq!(next(), Ok((200, "to the close".to_string(), false)));
    assert_eq!(next(), Ok((201, "abc".to_string(), false)));
    let err = next().unwrap_err();
    assert!(err.starts_with("malformed response: status line"), "{err}");
    let err = next().unwrap_err();
    assert!(err.contains("closed after"), "{err}");
    server.join().unwrap();

    let long = "é".repeat(150);
    assert_eq!(sample_body(format!(" {long} ").as_bytes()).len(), 200);
}

/// A server that answers with the start of a response and then nothing.
fn stalling_app() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart");
        thread::sleep(Duration::from_millis(800));
    });
    (port, server)
}

#[test]
fn a_response_that_never_completes_is_a_timeout_and_stop_does_not_wait_for_it() {
    // The timeout, with a deadline shorter than the load's 5 s.
    let (port, server) = stalling_app();
    let worker = Worker {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        request: Arc::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        start: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut conn = None;
    let begun = Instant::now();
    let result = worker.exchange(&mut conn, begun + Duration::from_millis(300));
    let waited = begun.elapsed();
    match result {
        Err(fail) => {
            let err = fail.describe();
            assert!(err.starts_with("no complete response within"), "{err}");
        }
        Ok(r) => panic!("a response from a stalled server: {}", r.status),
    }
    assert!(conn.is_none(), "the timed-out connection was kept");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    server.join().unwrap();

    // Stopping abandons the stalled request instead of waiting 5 s for it.
    let (port, server) = stalling_app();
    let load = Load::start(port, "app.example.test", "/", 1);
    thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    let report = load.stop();
    assert!(stopping.elapsed() < Duration::from_millis(500));
    assert_eq!(report.total(), 0, "{}", failures_listed(&report));
    assert_eq!(report.p99(), Duration::ZERO);
    server.join().unwrap();
}
