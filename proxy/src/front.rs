//! The front door: what happens to a client connection before pingora parses a request on it.
//! Per connection, the cap of open connections per client address; per HTTP/1 request, the
//! deadline for the request head (`header_timeout`, then 408) and the framing checks that refuse
//! request smuggling (400) — so no workspace ever sees a request two parsers could read apart.
//!
//! pingora reads the head itself with a timeout per read (a client sending one byte every 59 s
//! keeps a connection forever), closes silently when it runs out, answers its own parse errors
//! with an empty 400, and accepts bare-LF line endings and Content-Length together with
//! Transfer-Encoding (dropping the Content-Length). So [`Front`] wraps pingora's HTTP app: it
//! reads each HTTP/1 head under one deadline, checks it, and hands the bytes to pingora as the
//! start of the session (`set_pipelined_prefix`), which parses them as if it had read them.
//! HTTP/2 (TLS with ALPN `h2`, or the cleartext preface) is passed through untouched: its
//! framing has no such ambiguity, and header blocks arrive in frames the h2 library bounds.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use dashmap::DashMap;
use http::StatusCode;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wakeway_config::Config;

use crate::error::error_body;
use crate::refusal::{Framing, Reason, Refusal};
use crate::stats::ProxyStats;

/// The front door's settings, taken from [`Config`] once at start.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// Time a client has to send a whole request head (408 after).
    pub header_timeout: Duration,
    /// Connections open at once per client address (429 beyond).
    pub max_connections_per_address: usize,
    /// Largest request header block (431 beyond; the proxy checks the exact size again).
    pub max_header_bytes: usize,
}

impl From<&Config> for FrontSettings {
    fn from(c: &Config) -> Self {
        FrontSettings {
            header_timeout: c.limits.header_timeout,
            max_connections_per_address: c.limits.max_connections_per_address,
            max_header_bytes: c.limits.max_header_bytes,
        }
    }
}

/// How long an idle keep-alive connection waits for its next request (pingora's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// The cleartext HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes the head may have beyond `max_header_bytes` (request line, separators): the proxy
/// checks the exact limit on the parsed headers.
const HEAD_SLACK: usize = 1024;

/// After a refusal, how long (and how much) the client's remaining bytes are read before the
/// socket is closed: closing with unread data sends a reset, which can destroy the answer
/// before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// pingora's HTTP app behind the front door.
pub struct Front<A> {
    app: Arc<A>,
    settings: FrontSettings,
    connections: Arc<ConnectionCounts>,
    stats: Arc<ProxyStats>,
}

impl<A> Front<A> {
    pub fn new(app: A, settings: FrontSettings, stats: Arc<ProxyStats>) -> Self {
        Front { app: Arc::new(app), settings, connections: Arc::default(), stats }
    }
}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let deadline = Instant::now() + self.settings.header_timeout;
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr()?.as_inet().map(|a| a.ip()));
        let _slot = match client {
            Some(ip) => match self.connections.open(ip, self.settings.max_connections_per_address) {
                Some(slot) => Some(slot),
                None => {
                    ProxyStats::bump(&self.stats.connections_over_limit);
                    let max = self.settings.max_connections_per_address;
                    // An HTTP/2 client would not understand an HTTP/1 answer: it only sees the close.
                    if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                        Box::pin(refuse(&mut stream, &Reason::TooManyConnections { max }.refusal())).await;
                    }
                    return None;
                }
            },
            None => None,
        };
        // The steps before and between requests are boxed (here and in `serve_http1`): an async
        // fn's state is as large as its largest step, and this one stays allocated for as long as
        // the connection is open — through every idle WebSocket — while those steps are long over.
        if Box::pin(self.is_h2(&mut stream, deadline)).await? {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_http1(stream, deadline, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.app.as_ref()).await;
    }
}

impl<A> Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Whether the connection speaks HTTP/2 (ALPN under TLS, the preface in cleartext when h2c is
    /// on). None when the client went away or sent nothing before `deadline`.
    async fn is_h2(&self, stream: &mut Stream, deadline: Instant) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
        }
        if !self.app.server_options().is_some_and(|o| o.h2c) {
            return Some(false);
        }
        // pingora's own check: peek the preface's length (the bytes are put back).
        let mut preface = [0u8; H2_PREFACE.len()];
        match until(deadline, stream.try_peek(&mut preface)).await {
            Ok(Ok(true)) => Some(preface == H2_PREFACE),
            Ok(Ok(false)) => Some(false),
            Ok(Err(_)) => None,
            Err(_) => {
                // Fewer bytes than a preface in `header_timeout`: a slow head (or nothing at all).
                ProxyStats::bump(&self.stats.header_timeouts);
                refuse(stream, &Reason::HeaderTimeout { limit: self.settings.header_timeout }.refusal()).await;
                None
            }
        }
    }

    /// HTTP/1: each request head read under its deadline and checked, then served by pingora;
    /// the connection is reused for as long as pingora keeps it alive.
    async fn serve_http1(self: &Arc<Self>, mut stream: Stream, mut deadline: Instant, shutdown: &ShutdownWatch) {
        let limit = self.settings.max_header_bytes + HEAD_SLACK;
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut reused = false;
        loop {
            let head =
                match Box::pin(read_head(&mut stream, deadline, reused, self.settings.header_timeout, limit, shutdown))
                    .await
                {
                    HeadRead::Complete(head) => head,
                    HeadRead::Closed => return,
                    HeadRead::Refused(refusal) => {
                        match refusal.status {
                            StatusCode::REQUEST_TIMEOUT => ProxyStats::bump(&self.stats.header_timeouts),
                            StatusCode::BAD_REQUEST => ProxyStats::bump(&self.stats.bad_framing),
                            _ => {}
                        }
                        Box::pin(refuse(&mut stream, &refusal)).await;
                        return;
                    }
                };
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // As pingora sets up a new connection.
                    session.set_keepalive(if *shutdown.borrow() { None } else { Some(KEEPALIVE_IDLE.as_secs()) });
                    session.set_keepalive_reuses_remaining(
                        self.app.server_options().and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            session.set_pipelined_prefix(head);
            let Some(kept) = self.app.process_new_http(session, shutdown).await else { return };
            let (next, settings) = kept.consume();
            stream = next;
            persistent = settings;
            reused = true;
            deadline = Instant::now() + KEEPALIVE_IDLE;
        }
    }
}

/// Open connections per client address. An address's entry is removed when its last
/// connection closes, so the map holds only addresses with connections open.
#[derive(Default)]
struct ConnectionCounts {
    open: DashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    /// Count one more connection from `ip` if it has fewer than `max` open.
    fn open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ConnectionSlot> {
        let mut count = self.open.entry(ip).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { counts: self.clone(), ip })
    }
}

/// One open connection's place in its address's count; released when the connection ends.
struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.open.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

/// `future`, or `Err` once `deadline` has passed. The timer is pingora's fast timeout (one timer
/// wheel per thread, 10 ms resolution, armed only if `future` has to wait), not a tokio timer:
/// arming a tokio timer that ends before the runtime's next wake-up writes to the runtime's
/// eventfd (`unpark`), which was one system call and one extra `epoll_wait` event on every
/// keep-alive request (the idle wait for the next head is armed while no other timer runs).
async fn until<F: Future>(deadline: Instant, future: F) -> Result<F::Output, pingora::time::Elapsed> {
    pingora::time::fast_timeout::fast_timeout(deadline.saturating_duration_since(Instant::now()), future).await
}

/// The result of reading one request head.
enum HeadRead {
    /// The head (and whatever followed it in the same reads), checked.
    Complete(BytesMut),
    /// The client went away, or an idle connection ended (nothing to answer).
    Closed,
    Refused(Refusal),
}

/// Read one request head: until its blank line, within `deadline` (408), at most `limit` bytes
/// (431), refusing bad framing (400) as soon as it shows. A client that sent nothing by
/// `deadline` is closed without an answer (an unused preconnect, an idle keep-alive). On a
/// `reused` connection `deadline` bounds the idle wait, and the head's own deadline starts with
/// its first byte.
async fn read_head(
    stream: &mut Stream,
    mut deadline: Instant,
    reused: bool,
    header_timeout: Duration,
    limit: usize,
    shutdown: &ShutdownWatch,
) -> HeadRead {
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = HeadScanner::default();
    let mut stopping = shutdown.clone();
    loop {
        let waiting_idle = buf.is_empty();
        let read = async {
            tokio::select! {
                read = until(deadline, stream.read_buf(&mut buf)) => Some(read),
                // Only a connection with nothing sent yet closes for a shutdown.
                _ = stopping.wait_for(|stop| *stop), if waiting_idle => None,
            }
        };
        match read.await {
            None => return HeadRead::Closed,
            Some(Err(_)) if waiting_idle => return HeadRead::Closed,
            Some(Err(_)) => return HeadRead::Refused(Reason::HeaderTimeout { limit: header_timeout }.refusal()),
            Some(Ok(Ok(0) | Err(_))) => return HeadRead::Closed,
            Some(Ok(Ok(_))) => {}
        }
        if waiting_idle && reused {
            deadline = Instant::now() + header_timeout;
        }
        match scanner.scan(&buf) {
            Ok(Some(end)) => {
                return match check_head(&buf[..end]) {
                    // pingora keeps the head's buffer for the whole request (an open WebSocket's
                    // life): an exact copy instead of the 4 KiB read buffer.
                    Ok(()) => HeadRead::Complete(BytesMut::from(&buf[..])),
                    Err(refusal) => HeadRead::Refused(refusal),
                };
            }
            Ok(None) if buf.len() > limit => {
                return HeadRead::Refused(Reason::HeadersTooLarge { max: limit - HEAD_SLACK }.refusal());
            }
            Ok(None) => {}
            Err(refusal) => return HeadRead::Refused(refusal),
        }
    }
}

/// Finds the end of a request head incrementally (each byte looked at once, so a head sent a
/// byte at a time costs linear time), refusing a bare CR or LF as soon as it arrives.
#[derive(Default)]
struct HeadScanner {
    /// Bytes already looked at.
    scanned: usize,
    /// Where the head starts (after the empty lines a client may send between requests).
    start: usize,
    /// Whether the request line has begun.
    begun: bool,
}

impl HeadScanner {
    /// `Ok(Some(end))`: the head is `buf[..end]` (through its blank line).
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Refusal> {
        while self.scanned < buf.len() {
            let i = self.scanned;
            match buf[i] {
                b'\r' => {
                    // Needs the next byte to judge.
                    let Some(&next) = buf.get(i + 1) else { return Ok(None) };
                    if next != b'\n' {
                        return Err(Framing::BareLineEnding.into());
                    }
                    self.scanned = i + 2;
                    if !self.begun {
                        // RFC 9112 2.2: empty lines before a request line are ignored.
                        self.start = i + 2;
                    } else if i >= 2 && buf[i - 2..i] == *b"\r\n" && i - 2 >= self.start {
                        return Ok(Some(i + 2));
                    }
                }
                b'\n' => return Err(Framing::BareLineEnding.into()),
                _ => {
                    self.begun = true;
                    self.scanned = i + 1;
                }
            }
        }
        Ok(None)
    }
}

/// The framing checks: every header line well formed (no obs-fold), one unambiguous body length.
/// `head` ends with its blank line and uses CRLF throughout (checked by [`HeadScanner`]).
fn check_head(head: &[u8]) -> Result<(), Refusal> {
    let text = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut lines = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or_default();
    let http10 = if request_line.ends_with(b" HTTP/1.1") {
        false
    } else if request_line.ends_with(b" HTTP/1.0") {
        true
    } else {
        return Err(Framing::InvalidRequestLine.into());
    };
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut chunked_headers = 0;
    for line in lines {
        let (name, value) = header_line(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.extend(value.split(|b| *b == b',').map(<[u8]>::trim_ascii));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked_headers += 1;
            codings.extend(value.split(|b| *b == b',').map(<[u8]>::trim_ascii));
        }
    }
    if let Some(bad) = lengths.iter().find(|l| l.is_empty() || l.len() > 18 || !l.iter().all(u8::is_ascii_digit)) {
        return Err(Framing::InvalidContentLength { value: String::from_utf8_lossy(bad).into() }.into());
    }
    if lengths.iter().any(|l| parse_digits(l) != parse_digits(lengths[0])) {
        return Err(Framing::ConflictingContentLength.into());
    }
    if chunked_headers > 0 {
        if !lengths.is_empty() {
            return Err(Framing::AmbiguousLength.into());
        }
        if http10 {
            return Err(Framing::ChunkedOverHttp10.into());
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            let shown: Vec<_> = codings.iter().map(|c| String::from_utf8_lossy(c)).collect();
            return Err(Framing::InvalidTransferEncoding { codings: shown.join(", ") }.into());
        }
    }
    Ok(())
}

/// One header line, checked: its name (a token) and its trimmed value (no control characters).
fn header_line(line: &[u8]) -> Result<(&[u8], &[u8]), Framing> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(Framing::ObsoleteLineFolding);
    }
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return Err(Framing::HeaderWithoutColon);
    };
    let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(Framing::HeaderNameNotToken { name: String::from_utf8_lossy(name).into() });
    }
    if !value.iter().all(|b| *b == b'\t' || *b >= b' ' && *b != 0x7f) {
        return Err(Framing::HeaderControlCharacters { name: String::from_utf8_lossy(name).into() });
    }
    Ok((name, value))
}

/// A checked run of at most 18 ASCII digits as a number.
fn parse_digits(digits: &[u8]) -> u64 {
    digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'))
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Answer `refusal` as JSON, close the connection, and read what the client still sends for a
/// moment (see [`LINGER`]).
async fn refuse(stream: &mut Stream, refusal: &Refusal) {
    let body = error_body(refusal.code, &refusal.message);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
        refusal.status.as_str(),
        refusal.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(seconds) = refusal.retry_after {
        head.push_str(&format!("retry-after: {seconds}\r\n"));
    }
    head.push_str("\r\n");
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await
    };
    if tokio::time::timeout(LINGER, written).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<usize>, Refusal> {
        HeadScanner::default().scan(text.as_bytes())
    }

    fn checked(text: &str) -> Result<(), &'static str> {
        let end = head(text).map_err(|r| r.code)?.expect("complete head");
        check_head(&text.as_bytes()[..end]).map_err(|r| r.code)
    }

    #[test]
    fn heads_end_at_the_first_blank_line() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head(text), Ok(Some(text.len() - 4)));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n\r"), Ok(None), "a CR waits for its LF");
        assert_eq!(head("\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Ok(Some(22)), "leading empty lines are skipped");
        // Fed a byte at a time, the scanner finds the same end.
        let mut scanner = HeadScanner::default();
        let mut found = None;
        for n in 1..=text.len() {
            if let Some(end) = scanner.scan(&text.as_bytes()[..n]).unwrap() {
                found = Some(end);
                break;
            }
        }
        assert_eq!(found, Some(text.len() - 4));
    }

    #[test]
    fn well_formed_requests_pass() {
        assert_eq!(checked("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(checked("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"), Ok(()));
        assert_eq!(checked("POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), Ok(()));
        assert_eq!(checked("POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), Ok(()));
        assert_eq!(checked("POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"), Ok(()));
        assert_eq!(checked("GET / HTTP/1.0\r\nX-Empty:\r\nA: b\tc\r\n\r\n"), Ok(()));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases = [
            ("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", "ambiguous_length"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", "ambiguous_length"),
            ("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n", "conflicting_content_length"),
            ("POST / HTTP/1.1\r\nContent-Length: 4, 40\r\n\r\n", "conflicting_content_length"),
            ("POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", "invalid_content_length"),
            ("POST / HTTP/1.1\r\nContent-Length: 0x4\r\n\r\n", "invalid_content_length"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n identity\r\n\r\n", "obsolete_line_folding"),
            ("GET / HTTP/1.1\r\nX-A: 1\r\n\tX-B: 2\r\n\r\n", "obsolete_line_folding"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", "invalid_transfer_encoding"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "invalid_transfer_encoding"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "invalid_transfer_encoding"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
                "invalid_transfer_encoding",
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", "invalid_transfer_encoding"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "invalid_transfer_encoding"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", "invalid_header"),
            ("GET / HTTP/1.1\r\nNo colon here\r\n\r\n", "invalid_header"),
            ("GET / HTTP/1.1\r\nX: a\u{1}b\r\n\r\n", "invalid_header"),
            ("GET / HTTP/2.0\r\n\r\n", "invalid_request_line"),
        ];
        for (text, code) in cases {
            assert_eq!(checked(text), Err(code), "{text:?}");
        }
        for bare in
            ["GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1\r\nHost: a\n\r\n", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"]
        {
            assert_eq!(head(bare).map_err(|r| r.code), Err("bare_line_ending"), "{bare:?}");
        }
    }

    #[test]
    fn connection_counts_are_bounded_and_forgotten_at_zero() {
        let counts = Arc::new(ConnectionCounts::default());
        let ip = IpAddr::from([192, 0, 2, 1]);
        let a = counts.open(ip, 2).unwrap();
        let b = counts.open(ip, 2).unwrap();
        assert!(counts.open(ip, 2).is_none());
        assert!(counts.open(IpAddr::from([192, 0, 2, 2]), 2).is_some(), "per address");
        drop(a);
        let c = counts.open(ip, 2).unwrap();
        drop((b, c));
        assert!(counts.open.is_empty(), "no entry is kept for an address with nothing open");
    }
}
