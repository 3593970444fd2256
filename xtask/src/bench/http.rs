//! The bench's HTTP/1.1 client: a few blocking one-off requests (`GET
//! /health`, `POST /v1/sessions`) and [`KeepAlive`], one persistent
//! connection driven by tokio, for the request/answer generators (presence,
//! quota). One request at a time per connection, no pipelining: as cheap as
//! a client can be, so that the generator leaves the cores to the server.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Host and port of `http://host[:port][/]`.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must be http://host:port, not {url}"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("--url must be http://host:port, not {url}"));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            let port = p.parse().map_err(|_| format!("bad port in --url {url}"))?;
            Ok((h.to_owned(), port))
        }
        Some(_) => Err(format!("no host in --url {url}")),
        None => Ok((rest.to_owned(), 80)),
    }
}

/// An answer: status, the header block as received, and the body.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The header lines (without the status line).
    head: String,
    pub body: Vec<u8>,
    /// The server said `connection: close`.
    close: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The bytes of one request. `connection: close` only when `close`.
pub fn request_bytes(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    if close {
        req.push_str("connection: close\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request over a connection of its own and returns the status
/// and body.
pub fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let bytes = request_bytes(method, path, &format!("{host}:{port}"), headers, body, true);
    s.write_all(&bytes)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    // Read until the response is complete: a server may keep the
    // connection open despite `connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if n > 0 {
            raw.extend_from_slice(&buf[..n]);
        }
        if let Some((r, _)) = parse(&raw, n == 0).map_err(|e| format!("{method} {path}: {e}"))? {
            return Ok((r.status, r.body));
        }
        if n == 0 {
            return Err(format!("{method} {path}: connection closed mid-response"));
        }
    }
}

/// `Some((response, bytes it took))` once `raw` holds a whole HTTP/1.1
/// response (length-delimited, chunked, or up to the close); `eof`: the
/// peer has closed.
fn parse(raw: &[u8], eof: bool) -> Result<Option<(Response, usize)>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err("response without a header end".into())
        } else {
            Ok(None)
        };
    };
    let text = String::from_utf8_lossy(&raw[..end]);
    let (status_line, head) = text.split_once("\r\n").unwrap_or((&text, ""));
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("response without a status")?;
    let mut chunked = false;
    let mut length = None;
    let mut close = false;
    for l in head.split("\r\n") {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked |= v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("connection") {
                close |= v.eq_ignore_ascii_case("close");
            }
        }
    }
    let response = |body: Vec<u8>, close: bool| Response {
        status,
        head: head.to_owned(),
        body,
        close,
    };
    let start = end + 4;
    let rest = &raw[start..];
    if chunked {
        return match dechunk(rest) {
            Ok((body, used)) => Ok(Some((response(body, close), start + used))),
            Err(e) if eof => Err(e),
            Err(_) => Ok(None),
        };
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some((response(Vec::new(), close), start)));
    }
    match length {
        Some(n) if rest.len() >= n => Ok(Some((response(rest[..n].to_vec(), close), start + n))),
        Some(_) if eof => Err("response body shorter than content-length".into()),
        Some(_) => Ok(None),
        // Delimited by the close: the connection cannot be reused.
        None if eof => Ok(Some((response(rest.to_vec(), true), raw.len()))),
        None => Ok(None),
    }
}

/// The body of a chunked message and the bytes it took (trailers included).
fn dechunk(mut rest: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let total = rest.len();
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let eol = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("truncated trailer")?;
                rest = &rest[eol + 2..];
                if eol == 0 {
                    return Ok((out, total - rest.len()));
                }
            }
        }
        out.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// One keep-alive connection to `host:port`, opened on first use and again
/// after a failure or a `connection: close`.
pub struct KeepAlive {
    host: String,
    port: u16,
    stream: Option<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn new(host: &str, port: u16) -> KeepAlive {
        KeepAlive {
            host: host.to_owned(),
            port,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// `host:port`, for the `host` header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Sends `req` (from [`request_bytes`]) and reads the whole answer.
    /// An error is a short name of what failed (`ConnectionReset`,
    /// `closed_mid_response`, ...); the connection is then dropped, and the
    /// next request opens a new one. So is a request abandoned halfway (its
    /// future dropped): the stream is taken out while the request runs.
    pub async fn send(&mut self, req: &[u8]) -> Result<Response, String> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| io_name(&e))?;
                let _ = s.set_nodelay(true);
                s
            }
        };
        self.buf.clear();
        stream.write_all(req).await.map_err(|e| io_name(&e))?;
        loop {
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_name(&e))?;
            let eof = n == 0;
            match parse(&self.buf, eof) {
                Ok(Some((r, used))) => {
                    // No pipelining: anything after the answer is a fault.
                    if !r.close && !eof && used == self.buf.len() {
                        self.stream = Some(stream);
                    }
                    return Ok(r);
                }
                Ok(None) if eof => return Err("closed_mid_response".into()),
                Ok(None) => {}
                Err(_) if eof && self.buf.is_empty() => return Err("closed_by_server".into()),
                Err(_) if eof => return Err("closed_mid_response".into()),
                Err(_) => return Err("malformed_response".into()),
            }
        }
    }
}

fn io_name(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

/// A keep-alive HTTP/1.1 test server: `handler(method, target, header
/// lines, body)` answers each request with `(status, extra header lines,
/// body)`.
#[cfg(test)]
pub mod fake {
    use std::io::{Read, Write};
    use std::sync::Arc;

    pub type Handler = dyn Fn(&str, &str, &str, &[u8]) -> (u16, String, String) + Send + Sync;

    /// Starts the server on a free port; returns the port.
    pub fn start(handler: Arc<Handler>) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let h = Arc::clone(&handler);
                std::thread::spawn(move || serve(s, &*h));
            }
        });
        port
    }

    fn serve(mut s: std::net::TcpStream, handler: &Handler) {
        let _ = s.set_nodelay(true);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            // one request: head, then content-length bytes
            let (end, len) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (end, len);
                    }
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            let mut first = head.lines().next().unwrap_or("").split(' ');
            let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
            let (status, headers, text) = handler(method, target, &head, &body);
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
        parse(raw, true)?
            .map(|(r, _)| (r.status, r.body))
            .ok_or_else(|| "truncated response".to_owned())
    }

    fn done(raw: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
        parse(raw, false)
            .unwrap()
            .map(|(r, used)| (r.status, r.body, used))
    }

    #[test]
    fn urls() {
        assert_eq!(
            host_port("http://127.0.0.1:8787"),
            Ok(("127.0.0.1".into(), 8787))
        );
        assert_eq!(
            host_port("http://localhost:9/"),
            Ok(("localhost".into(), 9))
        );
        assert_eq!(host_port("http://example"), Ok(("example".into(), 80)));
        assert!(host_port("https://127.0.0.1:1").is_err());
        assert!(host_port("http://127.0.0.1:x").is_err());
        assert!(host_port("http://127.0.0.1:1/v1").is_err());
        assert!(host_port("http://").is_err());
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\n{\"a\"}";
        assert_eq!(parse_response(r), Ok((201, b"{\"a\"".to_vec())));
        let c = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(c), Ok((200, b"abcde".to_vec())));
        let close = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(close), Ok((404, b"nope".to_vec())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
        // before the peer closes: complete only once the body is all there
        assert_eq!(
            done(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab"),
            None
        );
        assert_eq!(done(b"HTTP/1.1 200 OK\r\ncontent"), None);
        assert_eq!(done(b"HTTP/1.1 200 OK\r\n\r\nab"), None);
        assert_eq!(done(&c[..c.len() - 3]), None);
        assert_eq!(done(&c[..c.len() - 1]), None, "the final CRLF is needed");
        assert_eq!(done(c), Some((200, b"abcde".to_vec(), c.len())));
    }

    #[test]
    fn keep_alive_framing_uses_exactly_one_answer() {
        // Two answers back to back: the first takes exactly its own bytes.
        let one = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let mut two = one.clone();
        two.extend_from_slice(b"HTTP/1.1 429 Too Many\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(done(&two), Some((200, b"ok".to_vec(), one.len())));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(done(chunked), Some((200, b"hi".to_vec(), chunked.len())));
        let (r, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close);
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let raw = b"HTTP/1.1 200 OK\r\nRateLimit-Policy: \"api\";q=6000;w=60\r\nratelimit:  \"api\";r=999;t=1 \r\ncontent-length: 0\r\n\r\n";
        let (r, _) = parse(raw, false).unwrap().unwrap();
        assert_eq!(r.header("ratelimit-policy"), Some("\"api\";q=6000;w=60"));
        assert_eq!(r.header("RATELIMIT"), Some("\"api\";r=999;t=1"));
        assert_eq!(r.header("retry-after"), None);
    }

    #[test]
    fn requests_are_well_formed() {
        let get = request_bytes("GET", "/health", "h:1", &[("a", "b")], b"", false);
        assert_eq!(get, b"GET /health HTTP/1.1\r\nhost: h:1\r\na: b\r\n\r\n");
        let post = request_bytes("POST", "/x", "h:1", &[], b"{}", true);
        assert_eq!(
            post,
            b"POST /x HTTP/1.1\r\nhost: h:1\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn keep_alive_reuses_one_connection_and_recovers_from_a_close() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let accepted = Arc::new(AtomicUsize::new(0));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut n = 0;
                    loop {
                        let Ok(k) = s.read(&mut buf) else { return };
                        if k == 0 {
                            return;
                        }
                        n += 1;
                        // the third request on a connection: closed without an answer
                        if n == 3 {
                            return;
                        }
                        let body = format!("{n}");
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = KeepAlive::new("127.0.0.1", port);
            let req = request_bytes("GET", "/", &c.authority(), &[], b"", false);
            assert_eq!(c.send(&req).await.unwrap().body, b"1");
            assert_eq!(c.send(&req).await.unwrap().body, b"2");
            assert_eq!(c.send(&req).await, Err("closed_by_server".into()));
            assert_eq!(c.send(&req).await.unwrap().body, b"1", "a new connection");
        });
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
