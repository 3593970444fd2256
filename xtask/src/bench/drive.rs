//! The closed loop shared by the request/answer generators (presence,
//! quota): every keep-alive connection keeps one request in flight until
//! the window ends (or a request budget is spent), on one thread (a
//! current-thread tokio runtime), so the generator takes as little CPU as
//! it can from the server it shares the machine with.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::cpu::{cpu_report, cpu_snapshot};
use super::http::{request_bytes, KeepAlive, Response};

/// One answer (or transport failure) as the loop hands it over.
pub struct Answer {
    pub result: Result<Response, String>,
    /// From writing the request to the whole answer read.
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

/// Opens each connection with `GET /health` (so the timed part starts
/// warm); an error names the first that failed.
pub async fn open_all(conns: &mut [KeepAlive]) -> Result<(), String> {
    let answers = join_all(conns.iter_mut().map(|c| async move {
        let req = request_bytes("GET", "/health", &c.authority(), &[], b"", false);
        c.send(&req).await
    }))
    .await;
    for a in answers {
        match a {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                let text = String::from_utf8_lossy(&r.body);
                let head: String = text.chars().take(200).collect();
                return Err(format!("GET /health: {} {head}", r.status));
            }
            Err(e) => return Err(format!("GET /health: {e}")),
        }
    }
    Ok(())
}

/// Runs the closed loop over `conns`: `next(i, authority)` makes request
/// number `i` (its bytes and whatever `answer` needs to check it), and
/// `answer` gets each answer in arrival order. `watch` are the server's
/// PIDs and port, for the CPU report.
pub async fn closed_loop<J>(
    conns: &mut [KeepAlive],
    until: Until,
    watch: (&[u32], u16),
    next: impl FnMut(u64, &str) -> (Vec<u8>, J),
    answer: impl FnMut(J, Answer),
) -> Outcome {
    let next = RefCell::new(next);
    let answer = RefCell::new(answer);
    let counter = Cell::new(0u64);
    let inflight = Cell::new(0u64);
    let last = Cell::new(None::<Instant>);
    let c0 = cpu_snapshot(watch.0, watch.1);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(until.seconds);
    let budget = until.requests.unwrap_or(u64::MAX);
    let (next, answer, counter, inflight, last) = (&next, &answer, &counter, &inflight, &last);
    let workers = conns.iter_mut().map(|c| async move {
        let authority = c.authority();
        while Instant::now() < end && counter.get() < budget {
            let i = counter.get();
            counter.set(i + 1);
            let (req, job) = (*next.borrow_mut())(i, &authority);
            inflight.set(inflight.get() + 1);
            let t0 = Instant::now();
            let result = c.send(&req).await;
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
    let cpu_end = tokio::time::sleep_until(end.into());
    tokio::pin!(cpu_end);
    let mut c1 = None;
    let mut done = false;
    tokio::select! {
        _ = &mut all => done = true,
        _ = &mut cpu_end => c1 = Some(cpu_snapshot(watch.0, watch.1)),
    }
    if !done {
        let _ = (&mut all).await;
    }
    let c1 = c1.unwrap_or_else(|| cpu_snapshot(watch.0, watch.1));
    let stop = last.get().map_or(end, |l| l.min(end));
    Outcome {
        unanswered: inflight.get(),
        elapsed: stop - start,
        cpu: cpu_report(&c0, &c1),
    }
}
