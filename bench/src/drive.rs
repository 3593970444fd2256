//! What the generators share: one-thread tokio runtimes, reqwest's
//! keep-alive pool with whole answers, the closed loop of the
//! request/answer generators (presence, quota) with its tallies, and CPU
//! use over a window from `/proc` (as loadgen.mjs and quotagen.mjs report
//! it).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::future::join_all;
use reqwest::{Client, RequestBuilder};
use serde_json::Value;

use super::summary::round_to;

/// Correctness errors by code.
pub type Errors = BTreeMap<String, u64>;

/// Counts one error `code`.
pub fn fail(errors: &mut Errors, code: &str) {
    *errors.entry(code.to_owned()).or_default() += 1;
}

/// Runs `f` on a current-thread runtime: the generator takes as little as
/// it can of the cores it shares with the server.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// The wall clock in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    d.map_or(0, |d| d.as_millis() as i64)
}

/// `n` random hex digits, for run tags and fresh ids.
pub fn tag(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_owned()
}

/// A keep-alive client: no proxy from the environment (the server is
/// local), no Nagle delay, idle connections kept for the whole run.
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

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The status and the body's start, for error messages.
    pub fn head(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        format!(
            "{} {}",
            self.status,
            text.chars().take(300).collect::<String>()
        )
    }
}

/// An answer, or a short name of what failed (`ConnectionReset`, ...).
pub type Answer = Result<Response, String>;

/// Sends a request and reads the whole answer.
pub async fn send(rb: RequestBuilder) -> Answer {
    let r = rb.send().await.map_err(|e| error_name(&e))?;
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.bytes().await.map_err(|e| error_name(&e))?.to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends a set-up request that must answer `want`; its JSON body.
pub async fn expect(rb: RequestBuilder, want: u16, what: &str) -> Result<Value> {
    match send(rb).await {
        Ok(r) if r.status == want => Ok(r.json()),
        Ok(r) => bail!("{what}: {}", r.head()),
        Err(e) => bail!("{what}: {e}"),
    }
}

/// The JSON body of a 200 answer, else what was wrong (`transport_<e>`,
/// `http_429_<code>`, `http_<status>`, `bad_json`).
pub fn json_200(a: &Answer) -> Result<Value, String> {
    let r = a.as_ref().map_err(|e| format!("transport_{e}"))?;
    let v: Option<Value> = serde_json::from_slice(&r.body).ok();
    match (r.status, v) {
        (200, Some(v)) => Ok(v),
        (200, None) => Err("bad_json".into()),
        (429, Some(v)) if v["error"]["code"].is_string() => Err(format!(
            "http_429_{}",
            v["error"]["code"].as_str().unwrap_or_default()
        )),
        (s, _) => Err(format!("http_{s}")),
    }
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

/// Opens `n` connections at once with `GET /health` (so the timed part
/// starts warm); an error names the first that failed.
pub async fn open_all(client: &Client, base: &str, n: usize) -> Result<()> {
    let url = format!("{base}/health");
    for a in join_all((0..n).map(|_| expect(client.get(&url), 200, "GET /health"))).await {
        a?;
    }
    Ok(())
}

/// What the closed loop measured.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latencies (ms, request sent to whole answer read) of the answers
    /// counted: those within the window, or all of them with a budget.
    pub lat: Vec<f64>,
    /// Every answer, counted or not (later ones are still checked).
    pub answers: u64,
    /// With `unanswered_at_end`: requests still unanswered after the drain.
    pub errors: Errors,
    /// From the first request to the last answer or the window's end.
    pub elapsed: Duration,
    /// CPU over the window (see [`cpu_report`]).
    pub cpu: BTreeMap<String, f64>,
}

/// Runs the closed loop with `concurrency` requests in flight for
/// `seconds` (or until `budget` requests were sent), then waits up to
/// `drain` for the rest: `next(i)` makes request number `i` (and whatever
/// `answer` needs to check it), and `answer(job, answer, counted, tally)`
/// gets each answer in arrival order. `watch` are the server's PIDs and
/// port, for the CPU report.
pub async fn closed_loop<J>(
    concurrency: usize,
    (seconds, budget, drain): (f64, Option<u64>, f64),
    watch: (&[u32], u16),
    next: impl FnMut(u64) -> (RequestBuilder, J),
    answer: impl FnMut(J, &Answer, bool, &mut Tally),
) -> Tally {
    let (next, answer, tally) = (RefCell::new(next), RefCell::new(answer), RefCell::default());
    let (counter, inflight, last) = (Cell::new(0u64), Cell::new(0u64), Cell::new(None));
    let c0 = cpu_snapshot(watch.0, watch.1);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let (next, answer, tally) = (&next, &answer, &tally);
    let (counter, inflight, last) = (&counter, &inflight, &last);
    let workers = (0..concurrency).map(|_| async move {
        while Instant::now() < end && counter.get() < budget.unwrap_or(u64::MAX) {
            let i = counter.get();
            counter.set(i + 1);
            let (req, job) = (*next.borrow_mut())(i);
            inflight.set(inflight.get() + 1);
            let t0 = Instant::now();
            let result = send(req).await;
            let t = Instant::now();
            inflight.set(inflight.get() - 1);
            last.set(Some(t));
            let mut tally: std::cell::RefMut<'_, Tally> = tally.borrow_mut();
            let counted = t <= end || budget.is_some();
            tally.answers += 1;
            if counted {
                tally.lat.push((t - t0).as_secs_f64() * 1000.0);
            }
            (*answer.borrow_mut())(job, &result, counted, &mut tally);
        }
    });
    let all = tokio::time::timeout(Duration::from_secs_f64(seconds + drain), join_all(workers));
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
    let mut tally = tally.take();
    if inflight.get() > 0 {
        tally
            .errors
            .insert("unanswered_at_end".into(), inflight.get());
    }
    tally.elapsed = last.get().map_or(end, |l: Instant| l.min(end)) - start;
    tally.cpu = cpu_report(&c0, &c1);
    tally
}

// ---- CPU -----------------------------------------------------------------

const CLK_TCK: f64 = 100.0;

/// `(name, utime + stime ticks)` of a process. wrangler runs two `workerd`
/// processes: the one listening on the public `port` is `workerd_proxy`.
fn proc_cpu(pid: u32, port: u16) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut comm = s[s.find('(')? + 1..s.rfind(')')?].to_owned();
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if comm == "workerd"
        && String::from_utf8_lossy(&args).contains(&format!("entry=127.0.0.1:{port}"))
    {
        comm = "workerd_proxy".into();
    }
    Some((comm, ticks))
}

/// Busy ticks of all cores from the first line of `/proc/stat` (total minus
/// idle and iowait).
fn machine_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    Some(f.iter().sum::<u64>() - f.get(3)? - f.get(4)?)
}

/// CPU ticks at one moment: the server's processes, the generator's own,
/// the machine's.
pub struct CpuSnapshot {
    at: Instant,
    procs: BTreeMap<u32, (String, u64)>,
    own: u64,
    machine: Option<u64>,
}

/// The ticks of `pids` (the server listening on `port`) and of this process.
pub fn cpu_snapshot(pids: &[u32], port: u16) -> CpuSnapshot {
    let procs = pids.iter().filter_map(|&p| Some((p, proc_cpu(p, port)?)));
    CpuSnapshot {
        at: Instant::now(),
        procs: procs.collect(),
        own: proc_cpu(std::process::id(), 0).map_or(0, |c| c.1),
        machine: machine_ticks(),
    }
}

/// CPU per process name between two snapshots, the generator as `loadgen`
/// and all processes and the kernel as `machine` (100 = one core).
pub fn cpu_report(a: &CpuSnapshot, b: &CpuSnapshot) -> BTreeMap<String, f64> {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let pct = |t1: u64, t0: u64| t1.saturating_sub(t0) as f64 / CLK_TCK / secs * 100.0;
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (comm, t1)) in &b.procs {
        if let Some((_, t0)) = a.procs.get(pid) {
            *out.entry(comm.clone()).or_default() += pct(*t1, *t0);
        }
    }
    out.insert("loadgen".into(), pct(b.own, a.own));
    if let (Some(m0), Some(m1)) = (a.machine, b.machine) {
        out.insert("machine".into(), pct(m1, m0));
    }
    out.values_mut().for_each(|v| *v = round_to(*v, 1));
    out
}

/// The generators' tests' server: keep-alive HTTP/1.1 where `handler`
/// answers each request `(status, headers, body)`; a handler may take the
/// connection over after a `101` (WebSocket) with [`hyper::upgrade::on`].
#[cfg(test)]
pub mod fake {
    use std::sync::Arc;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    /// A request with its whole body.
    pub type Request = hyper::Request<Bytes>;
    /// What the server answers.
    pub type Handler = dyn Fn(Request) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

    /// Starts the server on a free port, on a thread of its own; returns
    /// `http://127.0.0.1:PORT`.
    pub fn start(h: Arc<Handler>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            super::block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                while let Ok((sock, _)) = l.accept().await {
                    let h = Arc::clone(&h);
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let h = Arc::clone(&h);
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let (status, headers, text) = h(Request::from_parts(parts, body));
                                let mut res = hyper::Response::builder().status(status);
                                for (k, v) in headers {
                                    res = res.header(k, v);
                                }
                                Ok::<_, hyper::Error>(
                                    res.body(Full::new(Bytes::from(text))).unwrap(),
                                )
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                    tokio::spawn(conn.with_upgrades());
                }
            })
        });
        format!("http://127.0.0.1:{port}")
    }

    /// The claims of a bearer token signed with `secret` (`Null` if none).
    pub fn claims(req: &Request, secret: &[u8]) -> serde_json::Value {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let key = jsonwebtoken::DecodingKey::from_secret(secret);
        let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        let token = token.unwrap_or("").trim_start_matches("Bearer ");
        jsonwebtoken::decode(token, &key, &v).map_or(serde_json::Value::Null, |d| d.claims)
    }
}
