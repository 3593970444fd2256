//! The few plain HTTP/1.1 requests the bench makes (`GET /health`, `POST
//! /v1/sessions`), blocking, over one connection each.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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

/// Sends one request and returns the status and body.
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
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
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
        if let Some(done) = parse(&raw, n == 0).map_err(|e| format!("{method} {path}: {e}"))? {
            return Ok(done);
        }
        if n == 0 {
            return Err(format!("{method} {path}: connection closed mid-response"));
        }
    }
}

/// `Some((status, body))` once `raw` holds a whole HTTP/1.1 response
/// (length-delimited, chunked, or up to the close); `eof`: the peer has
/// closed.
fn parse(raw: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err("response without a header end".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("response without a status")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[end + 4..];
    if chunked {
        return match dechunk(rest) {
            Ok(body) => Ok(Some((status, body))),
            Err(e) if eof => Err(e),
            Err(_) => Ok(None),
        };
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some((status, Vec::new())));
    }
    match length {
        Some(n) if rest.len() >= n => Ok(Some((status, rest[..n].to_vec()))),
        Some(_) if eof => Err("response body shorter than content-length".into()),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, rest.to_vec()))),
        None => Ok(None),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
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
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
        parse(raw, true)?.ok_or_else(|| "truncated response".to_owned())
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
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab", false),
            Ok(None)
        );
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\ncontent", false), Ok(None));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n\r\nab", false), Ok(None));
        assert_eq!(parse(&c[..c.len() - 3], false), Ok(None));
        assert_eq!(parse(c, false), Ok(Some((200, b"abcde".to_vec()))));
    }
}
