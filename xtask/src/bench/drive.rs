//! The closed loop shared by the request/answer generators (presence,
//! quota) on reqwest's keep-alive pool: every worker keeps one request in
//! flight until the window ends (or a request budget is spent), all on one
//! thread (a current-thread tokio runtime), so the generator takes as
//! little CPU as it can from the server it shares the machine with.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::future::join_all;
use reqwest::{Client, RequestBuilder};

use super::cpu::{cpu_report, cpu_snapshot};

/// A keep-alive client for the generators: no proxy from the environment
/// (the server is local), no Nagle delay, idle connections kept for the
/// whole run.
pub fn client() -> Result<Client> {
    Ok(Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(None)
        .build()?)
}

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole answer; an error is a short name of
/// what failed (`ConnectionReset`, `TimedOut`, ...).
pub async fn send(rb: RequestBuilder) -> Result<Response, String> {
    let r = rb.send().await.map_err(|e| error_name(&e))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.map_err(|e| error_name(&e))?.to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn error_name(e: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return format!("{:?}", io.kind());
        }
        source = s.source();
    }
    match () {
        _ if e.is_timeout() => "TimedOut".into(),
        _ if e.is_connect() => "connect".into(),
        _ if e.is_body() || e.is_decode() => "closed_mid_response".into(),
        _ => "closed_by_server".into(),
    }
}

/// One answer (or transport failure) as the loop hands it over.
pub struct Answer {
    pub result: Result<Response, String>,
    /// From sending the request to the whole answer read.
    pub ms: f64,
    /// Whether it arrived within the window (answers after it are still
    /// checked, but not counted in rates and latencies).
    pub in_window: bool,
}

/// When the loop stops sending.
#[derive(Clone, Copy, Debug)]
pub struct Until {
    pub seconds: f64,
    /// Stop after this many requests even within the window.
    pub requests: Option<u64>,
    /// After the window, how long to wait for requests still in flight.
    pub drain_seconds: f64,
}

/// What the loop measured besides the answers.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests still unanswered after the drain (abandoned).
    pub unanswered: u64,
    /// From the first request to the last answer or the window's end.
    pub elapsed: Duration,
    /// CPU over the window (see [`super::cpu`]).
    pub cpu: BTreeMap<String, f64>,
}

/// Opens `n` connections at once with `GET /health` (so the timed part
/// starts warm); an error names the first that failed.
pub async fn open_all(client: &Client, base: &str, n: usize) -> Result<()> {
    let url = format!("{base}/health");
    for a in join_all((0..n).map(|_| send(client.get(&url)))).await {
        match a {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                let text = String::from_utf8_lossy(&r.body);
                let head: String = text.chars().take(200).collect();
                bail!("GET /health: {} {head}", r.status);
            }
            Err(e) => bail!("GET /health: {e}"),
        }
    }
    Ok(())
}

/// Runs the closed loop with `concurrency` requests in flight: `next(i)`
/// makes request number `i` (and whatever `answer` needs to check it), and
/// `answer` gets each answer in arrival order. `watch` are the server's
/// PIDs and port, for the CPU report.
pub async fn closed_loop<J>(
    concurrency: usize,
    until: Until,
    watch: (&[u32], u16),
    next: impl FnMut(u64) -> (RequestBuilder, J),
    answer: impl FnMut(J, Answer),
) -> Outcome {
    let (next, answer) = (RefCell::new(next), RefCell::new(answer));
    let (counter, inflight, last) = (Cell::new(0u64), Cell::new(0u64), Cell::new(None));
    let c0 = cpu_snapshot(watch.0, watch.1);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(until.seconds);
    let budget = until.requests.unwrap_or(u64::MAX);
    let (next, answer, counter, inflight, last) = (&next, &answer, &counter, &inflight, &last);
    let workers = (0..concurrency).map(|_| async move {
        while Instant::now() < end && counter.get() < budget {
            let i = counter.get();
            counter.set(i + 1);
            let (req, job) = (*next.borrow_mut())(i);
            inflight.set(inflight.get() + 1);
            let t0 = Instant::now();
            let result = send(req).await;
            let t = Instant::now();
            inflight.set(inflight.get() - 1);
            last.set(Some(t));
            let a = Answer {
                result,
                ms: (t - t0).as_secs_f64() * 1000.0,
                in_window: t <= end,
            };
            (*answer.borrow_mut())(job, a);
        }
    });
    let all = tokio::time::timeout(
        Duration::from_secs_f64(until.seconds + until.drain_seconds),
        join_all(workers),
    );
    // The CPU window closes at the window's end, or when the budget is
    // spent and every answer is in, whichever comes first.
    tokio::pin!(all);
    let mut c1 = None;
    tokio::select! {
        _ = &mut all => {}
        _ = tokio::time::sleep_until(end.into()) => {
            c1 = Some(cpu_snapshot(watch.0, watch.1));
            let _ = (&mut all).await;
        }
    }
    let c1 = c1.unwrap_or_else(|| cpu_snapshot(watch.0, watch.1));
    let stop = last.get().map_or(end, |l: Instant| l.min(end));
    Outcome {
        unanswered: inflight.get(),
        elapsed: stop - start,
        cpu: cpu_report(&c0, &c1),
    }
}

/// A keep-alive HTTP/1.1 test server: `handler(method, target, header
/// lines, body)` answers each request with `(status, extra header lines,
/// body)`.
#[cfg(test)]
pub mod fake {
    use std::sync::Arc;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};

    pub type Handler = dyn Fn(&str, &str, &str, &[u8]) -> (u16, String, String) + Send + Sync;

    async fn answer(h: &Handler, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let head: String = parts
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap_or("")))
            .collect();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (status, headers, text) = h(parts.method.as_str(), target, &head, &body);
        let mut res = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json");
        for (k, v) in headers.lines().filter_map(|l| l.split_once(':')) {
            res = res.header(k.trim(), v.trim());
        }
        res.body(Full::new(Bytes::from(text))).unwrap()
    }

    /// Starts the server on a free port, on a thread of its own; returns
    /// the port.
    pub fn start(handler: Arc<Handler>) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                while let Ok((sock, _)) = l.accept().await {
                    let h = Arc::clone(&handler);
                    let svc = hyper::service::service_fn(move |req| {
                        let h = Arc::clone(&h);
                        async move { Ok::<_, hyper::Error>(answer(&*h, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(sock);
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc),
                    );
                }
            });
        });
        port
    }
}
