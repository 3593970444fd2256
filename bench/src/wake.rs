//! `bench wake` (see README.md): two sessions filled over `POST
//! .../points`, then per trial the runtime killed and started again on the
//! same state and each session joined cold: connect to welcome, point to
//! ack. Errors: failed fills, a welcome whose `lastSeq` is not the points
//! stored, an ack whose `seq` is not `lastSeq + 1`, error frames, closes
//! and timeouts.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::drive::{self, block_on, fail, send, Errors};
use super::summary::{fields, median, round_to};
use super::{positive, Served};

/// Waking sessions with many stored points.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Points stored in the big session
    #[arg(long, default_value_t = 100_000, value_parser = positive)]
    pub points: usize,
    /// Points stored in the small session
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub small: usize,
    /// Cold wakes of each session (a runtime restart before each)
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub trials: usize,
}

impl super::Gen for Options {
    const TITLE: &'static str = "bench wake";

    fn shape(&self) -> Value {
        json!({"points": self.points, "small": self.small, "trials": self.trials})
    }

    fn metrics(&self) -> &'static str {
        "big_total_ms small_total_ms total_ratio big_welcome_ms small_welcome_ms \
            big_ack_ms small_ack_ms fill_points_per_s errors"
    }

    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>> {
        let (secret, tag) = (s.secret()?.to_owned(), drive::tag(6));
        let (mut errors, mut sessions, t0) = (Errors::new(), Vec::new(), Instant::now());
        // A third session, woken first after every restart, so that the
        // runtime's own cold start (isolate, wasm, the gateway) is paid
        // before either measured session wakes.
        for (name, n) in [("big", self.points), ("small", self.small), ("warm", 1)] {
            let user = format!("wake-{tag}-{name}");
            let token = xtask::mint(&secret, &user, "enterprise", None, 7200)?;
            let id = block_on(fill(&s.url, &token, n))??;
            sessions.push((id, token, n as u64));
        }
        let fill_s = t0.elapsed().as_secs_f64();
        // (welcome, ack, total) ms per trial, per session
        let mut times: Vec<Vec<[f64; 3]>> = vec![Vec::new(); 2];
        for trial in 0..self.trials {
            s.restart()?;
            let (id, token, stored) = &mut sessions[2];
            block_on(wake(
                &s.url,
                id,
                token,
                *stored,
                &format!("{tag}-warm-{trial}"),
            ))??;
            *stored += 1;
            for k in [trial % 2, 1 - trial % 2] {
                let (id, token, stored) = &mut sessions[k];
                match block_on(wake(&s.url, id, token, *stored, &format!("{tag}-{trial}")))? {
                    Ok(t) => times[k].push(t),
                    Err(e) => fail(&mut errors, &format!("{e:#}")),
                }
                *stored += 1;
            }
        }
        let med = |k: usize, i: usize| {
            median(&times[k].iter().map(|t| t[i]).collect::<Vec<_>>()).map(|x| round_to(x, 2))
        };
        let ratio = med(0, 2).zip(med(1, 2)).map(|(b, s)| round_to(b / s, 3));
        Ok(vec![fields! {
            "big_total_ms": med(0, 2), "small_total_ms": med(1, 2), "total_ratio": ratio,
            "goal": "big/small total <= 2", "goal_met": ratio.map(|r| r <= 2.0),
            "big_welcome_ms": med(0, 0), "small_welcome_ms": med(1, 0), "big_ack_ms": med(0, 1),
            "small_ack_ms": med(1, 1), "points": self.points, "small": self.small,
            "trials": self.trials, "wakes": [times[0].len(), times[1].len()],
            "cold_by": "SIGKILL and restart on the same state (launcher), then a third session woken first",
            "fill_s": round_to(fill_s, 1),
            "fill_points_per_s": (((self.points + self.small) as f64) / fill_s).round(),
            "errors": errors.values().sum::<u64>(), "error_detail": errors, "generator": "xtask",
        }])
    }
}

/// Creates a session and stores `n` points in it, 100 per request; its id.
async fn fill(base: &str, token: &str, n: usize) -> Result<String> {
    let id = super::loadgen::create_session(base, token, "wake", &[]).await?;
    let client = drive::client()?;
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Value> = (sent..n.min(sent + 100))
            .map(|i| json!({"id": format!("p{i}"), "kind": "bench", "value": i}))
            .collect();
        let url = format!("{base}/v1/sessions/{id}/points");
        let rb = client
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "points": batch }));
        match send(rb).await {
            Ok(r) if r.status == 200 => sent += batch.len(),
            // The owner's api rate (enterprise: 100/s after a burst of 1000).
            Ok(r) if r.status == 429 => {
                let wait = r.header("retry-after").and_then(|v| v.parse().ok());
                tokio::time::sleep(Duration::from_secs(wait.unwrap_or(1))).await;
            }
            Ok(r) => bail!("POST points: {}", r.head()),
            Err(e) => bail!("POST points: {e}"),
        }
    }
    Ok(id)
}

/// Joins, awaits the welcome, sends one point and awaits its ack:
/// `[connect to welcome, send to ack, connect to ack]` in ms.
async fn wake(base: &str, id: &str, token: &str, stored: u64, point: &str) -> Result<[f64; 3]> {
    let url = format!(
        "ws{}/v1/sessions/{id}/ws?token={token}",
        base.trim_start_matches("http")
    );
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let t0 = Instant::now();
    let run = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut welcome, mut sent) = (None, None);
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            let v: Value = serde_json::from_str(text.as_str())?;
            match v["type"].as_str() {
                Some("welcome") if v["lastSeq"] != stored => bail!("welcome_lastSeq_not_stored"),
                Some("welcome") => {
                    welcome = Some(ms(t0));
                    let p = json!({"type": "point", "id": point, "kind": "bench", "value": 1});
                    ws.send(Message::text(p.to_string())).await?;
                    sent = Some(Instant::now());
                }
                Some("ack") if v["id"] != point => {}
                Some("ack") if v["seq"] != stored + 1 => bail!("ack_seq_not_next"),
                Some("ack") => {
                    let (w, s) = welcome
                        .zip(sent)
                        .ok_or_else(|| anyhow!("ack_before_welcome"))?;
                    let _ = ws.close(None).await;
                    return Ok([w, ms(s), ms(t0)]);
                }
                Some("error") => {
                    bail!("server_error_{}", v["code"].as_str().unwrap_or("undefined"))
                }
                _ => {}
            }
        }
        bail!("closed_before_ack")
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| anyhow!("wake_timeout"))?
}
