//! Presence load generator and checker (there is no reference): N users
//! each heartbeat once with their own token (`setup`); then three phases
//! of `seconds` each keep `concurrency` requests in flight: `single`
//! (`GET /v1/presence/{id}`), `batch` (`GET /v1/presence?users=<ids>`) and
//! `heartbeat` (`POST /v1/presence/heartbeat`, each user with its own
//! token). Reads rotate over `callers` caller tokens (by default the N
//! users), so that no caller comes near the enterprise plan's 100
//! requests/s: every request is charged to its caller.
//!
//! Errors (per phase): answers other than 200 (a 429 is also counted in
//! `rate_limited`), bodies that are not presence objects, a presence of
//! another user than asked, a user shown without the status `online`,
//! activity `bench` and a `lastSeen` while its last heartbeat is recent,
//! batch answers not of the length asked, in another order, or with other
//! users, transport errors, and requests still unanswered after the drain.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Client;
use serde_json::{json, Value};

use super::drive::{self, closed_loop, fail, open_all, Answer, Tally};
use super::summary::{fields, round_to, spread, Stats, Summary};
use super::{non_empty, non_negative, positive, seconds, Served};

/// The service's `PRESENCE_TTL_MS` as the bench serves it (wrangler.toml).
const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// A user is expected present while its last heartbeat (sent) is younger
/// than the TTL minus this margin.
const TTL_MARGIN: Duration = Duration::from_secs(10);
/// `MAX_PRESENCE_BATCH`.
pub const MAX_BATCH: usize = 100;
const PHASES: [&str; 4] = ["setup", "single", "batch", "heartbeat"];

/// Presence reads and heartbeats.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Users, each heartbeats first with its own token
    #[arg(long, default_value_t = 200, value_parser = positive)]
    pub users: usize,
    /// Length of each phase: single reads, batch reads, heartbeats
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub seconds: f64,
    /// Requests in flight, over keep-alive connections
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub concurrency: usize,
    /// Caller tokens reads rotate over [default: the users]; every request
    /// is charged to its caller (enterprise: 100/s after a burst of 1000),
    /// see max_caller_req_per_s
    #[arg(long, value_parser = positive)]
    pub callers: Option<usize>,
    /// Ids per batch read, at most 100
    #[arg(long, default_value_t = MAX_BATCH, value_parser = positive)]
    pub batch: usize,
    /// Wait for requests in flight after each phase
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub drain_seconds: f64,
    /// User ids are X-u<i> [default: pres-<random>]
    #[arg(long, value_name = "X", value_parser = non_empty)]
    pub user_prefix: Option<String>,
}

impl Options {
    pub fn callers(&self) -> usize {
        self.callers.unwrap_or(self.users)
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch > MAX_BATCH {
            bail!("--batch takes at most {MAX_BATCH} ids");
        } else if self.batch > self.users {
            bail!(
                "--batch {} needs at least as many --users ({})",
                self.batch,
                self.users
            );
        }
        Ok(())
    }
}

// ---- checks --------------------------------------------------------------

/// Checks one presence object of `user`; `present`: its last heartbeat is
/// recent (`online`, activity `bench`, and a `lastSeen`). The error code
/// when it is wrong.
pub fn check_presence(v: &Value, user: &str, present: bool) -> Result<(), &'static str> {
    let Some(o) = v.as_object() else {
        return Err("bad_presence");
    };
    let (status, activity) = (o.get("status").and_then(Value::as_str), o.get("activity"));
    let shape_ok = o.get("userId").is_some_and(Value::is_string)
        && matches!(status, Some("online" | "away" | "busy" | "offline"))
        && o.get("connections").and_then(Value::as_u64).is_some()
        && o.get("lastSeen").is_none_or(Value::is_string)
        && activity.is_none_or(Value::is_string);
    if !shape_ok {
        Err("bad_presence")
    } else if o["userId"].as_str() != Some(user) {
        Err("wrong_userId")
    } else if present
        && (status != Some("online")
            || activity.and_then(Value::as_str) != Some("bench")
            || o.get("lastSeen").is_none())
    {
        Err("stale_presence")
    } else {
        Ok(())
    }
}

/// Checks a batch answer's body against the ids asked: the ids answered
/// must be the ids asked, in the order asked; the error codes (the order
/// check's, then one per bad presence object).
pub fn check_batch(
    v: &Value,
    asked: &[&str],
    present: impl Fn(usize) -> bool,
) -> Vec<&'static str> {
    let Some(users) = v.get("users").and_then(Value::as_array) else {
        return vec!["batch_without_users"];
    };
    let got: Vec<&str> = users
        .iter()
        .map(|u| u["userId"].as_str().unwrap_or(""))
        .collect();
    let (mut a, mut g) = (asked.to_vec(), got.clone());
    a.sort_unstable();
    g.sort_unstable();
    let mut errors = match () {
        _ if asked.len() != got.len() => vec!["batch_wrong_length"],
        _ if asked == got => vec![],
        _ if a == g => vec!["batch_out_of_order"],
        _ => vec!["batch_wrong_users"],
    };
    for (i, (u, user)) in users.iter().zip(&got).enumerate() {
        // The id itself is the order check's business.
        let present = asked.get(i) == Some(user) && present(i);
        errors.extend(check_presence(u, user, present).err());
    }
    errors
}

/// The ids of batch number `k`: `batch` consecutive users from a rotating
/// start, reversed every other batch (so that a server that sorts shows).
pub fn batch_ids(k: u64, users: usize, batch: usize) -> Vec<usize> {
    let start = (k as usize).wrapping_mul(7) % users;
    let mut ids: Vec<usize> = (0..batch).map(|j| (start + j) % users).collect();
    if k % 2 == 1 {
        ids.reverse();
    }
    ids
}

// ---- report --------------------------------------------------------------

const METRICS: &str = "requests_per_s reads_per_s p50_ms p99_ms max_ms errors rate_limited \
    max_caller_req_per_s cpu_workerd_pct cpu_proxy_pct cpu_loadgen_pct";

impl super::Gen for Options {
    const TITLE: &'static str = "bench presence";

    fn shape(&self) -> Value {
        let (u, c, secs, b) = (self.users, self.concurrency, self.seconds, self.batch);
        json!({"users": u, "concurrency": c, "seconds": secs, "batch": b, "callers": self.callers()})
    }

    fn metrics(&self) -> &'static str {
        METRICS
    }

    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>> {
        Ok(run(self, &s.url, s.secret()?, &s.pids))
    }

    /// Per phase medians over the runs, and the issue's goal: a batch read
    /// of `batch` users costing no more than 3x a single read at p50.
    fn summarize(&self, _: &[String], runs: &[(String, Value)], ok: bool) -> Summary {
        let by_phase: Vec<(String, Value)> = runs
            .iter()
            .filter_map(|(_, v)| Some((v["phase"].as_str()?.to_owned(), v.clone())))
            .collect();
        let names = PHASES.map(str::to_owned);
        let metrics: Vec<&str> = METRICS.split_whitespace().collect();
        let st = Stats::of(&names, &by_phase, &metrics);
        let ratio = st.ratio("batch", "single", &["p50_ms", "p99_ms", "requests_per_s"]);
        let p50_ratio = ratio.get("p50_ms").copied();
        let (heading, shape) = (super::Gen::heading(self), self.shape());
        let json = fields! {
            "summary": "bench presence", "shape": shape, "rounds": st.rounds.get("setup"),
            "median": st.median, "min": st.min, "max": st.max,
            "batch_p50_over_single_p50": p50_ratio,
            "batch_p99_over_single_p99": ratio.get("p99_ms"),
            "goal": format!("batch of {} p50 <= 3x single p50", self.batch),
            "goal_met": p50_ratio.map(|x| x <= 3.0), "errors": st.errors,
            "error_detail": st.error_detail, "ok": ok,
        };
        let table = st.table(
            &heading,
            &names,
            &metrics,
            &[("batch/single".into(), ratio)],
        );
        Summary { table, json }
    }
}

// ---- run -----------------------------------------------------------------

/// A user: id, authorization header, when its last accepted heartbeat was
/// sent.
type User = (String, String, Cell<Option<Instant>>);
/// A request: caller, users asked, heartbeat sent at.
type Job = (usize, Vec<usize>, Instant);

/// Runs setup and the three phases against `url`, with tokens minted
/// with `secret` (plan enterprise): one JSON line per phase, or one with
/// `fatal`.
pub fn run(opts: &Options, url: &str, secret: &str, watch_pids: &[u32]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut go = || -> Result<()> {
        let watch = (watch_pids, super::port_of(url)?);
        let prefix = opts.user_prefix.clone();
        let prefix = prefix.unwrap_or_else(|| format!("pres-{}", drive::tag(6)));
        let bearer = |id: &str| {
            xtask::mint(secret, id, "enterprise", None, 3600).map(|t| format!("Bearer {t}"))
        };
        let users = (0..opts.users)
            .map(|i| format!("{prefix}-u{i}"))
            .map(|id| Ok((id.clone(), bearer(&id)?, Cell::new(None))))
            .collect::<Result<Vec<User>>>()?;
        // Callers are the users first, then readers of their own.
        let caller = |i: usize| match users.get(i) {
            Some(u) => Ok(u.1.clone()),
            None => bearer(&format!("{prefix}-c{i}")),
        };
        let callers = (0..opts.callers())
            .map(caller)
            .collect::<Result<Vec<String>>>()?;
        let client = drive::client()?;
        drive::block_on(async {
            open_all(&client, url, opts.concurrency).await?;
            for phase in PHASES {
                let run = (opts, &client, url, &users[..], &callers[..]);
                lines.push(run_phase(run, phase, watch).await);
            }
            Ok(())
        })?
    };
    if let Err(e) = go() {
        lines.push(fields! {"fatal": format!("{e:#}"), "generator": "xtask"});
    }
    lines
}

/// One phase: its JSON line (and a progress line on stderr).
async fn run_phase(
    (opts, client, url, users, callers): (&Options, &Client, &str, &[User], &[String]),
    phase: &str,
    watch: (&[u32], u16),
) -> String {
    let n = users.len() as u64;
    let reading = matches!(phase, "single" | "batch");
    let k_callers = if reading { callers.len() } else { users.len() };
    // Setup: each user once, however long it takes (within reason).
    let until = match phase {
        "setup" => (120.0, Some(n), opts.drain_seconds),
        _ => (opts.seconds, None, opts.drain_seconds),
    };
    let fresh = |t: Instant, now: Instant| now.duration_since(t) < PRESENCE_TTL - TTL_MARGIN;
    let present = |u: usize, now| users[u].2.get().is_some_and(|t| fresh(t, now));
    let (mut reads, mut rate_limited, mut per_caller) = (0u64, 0u64, vec![0u64; k_callers]);
    let heartbeat = format!("{url}/v1/presence/heartbeat");
    let next = |i: u64| {
        let k = callers.len() as u64;
        let (caller, asked) = match phase {
            "single" => (((i + k / 2) % k) as usize, vec![(i % n) as usize]),
            "batch" => ((i % k) as usize, batch_ids(i, opts.users, opts.batch)),
            _ => ((i % n) as usize, vec![(i % n) as usize]),
        };
        let ids: Vec<&str> = asked.iter().map(|&u| users[u].0.as_str()).collect();
        let rb = match phase {
            "single" => client.get(format!("{url}/v1/presence/{}", ids[0])),
            "batch" => client.get(format!("{url}/v1/presence?users={}", ids.join(","))),
            _ => client
                .post(&heartbeat)
                .body(r#"{"status":"online","activity":"bench"}"#),
        };
        let auth = if reading {
            &callers[caller]
        } else {
            &users[caller].1
        };
        let rb = rb.header("authorization", auth);
        (
            rb.header("content-type", "application/json"),
            (caller, asked, Instant::now()),
        )
    };
    let answer = |(caller, asked, sent): Job, a: &Answer, counted, t: &mut Tally| {
        per_caller[caller] += u64::from(counted);
        let body = match drive::json_200(a) {
            Ok(b) => b,
            Err(code) => {
                rate_limited += u64::from(code == "http_429_rate_limited");
                return fail(&mut t.errors, &code);
            }
        };
        let now = Instant::now();
        let ids: Vec<&str> = asked.iter().map(|&u| users[u].0.as_str()).collect();
        let errors = match phase {
            "batch" => check_batch(&body, &ids, |i| present(asked[i], now)),
            "single" => Vec::from_iter(check_presence(&body, ids[0], present(asked[0], now)).err()),
            _ => {
                let e = check_presence(&body, ids[0], true).err();
                let hb = &users[caller].2;
                if e.is_none() {
                    hb.set(Some(hb.get().map_or(sent, |h| h.max(sent))));
                }
                Vec::from_iter(e)
            }
        };
        if errors.is_empty() && reading && counted {
            reads += asked.len() as u64;
        }
        errors.into_iter().for_each(|e| fail(&mut t.errors, e));
    };
    let mut t = closed_loop(opts.concurrency, until, watch, next, answer).await;
    let secs = match phase {
        "setup" => t.elapsed.as_secs_f64().max(1e-3),
        _ => opts.seconds,
    };
    let per_s = |x: u64| (x as f64 / secs).round() as u64;
    let max_caller = per_caller.iter().copied().max().unwrap_or(0);
    let [p50, p99, max] = spread(&mut t.lat);
    let errors: u64 = t.errors.values().sum();
    let show = |x: Option<f64>| x.map_or("-".into(), |x| x.to_string());
    let (requests, rate) = (t.lat.len(), per_s(t.lat.len() as u64));
    let (p50s, p99s) = (show(p50), show(p99));
    eprintln!(
        "bench: presence {phase}: {rate} req/s, p50 {p50s} ms, p99 {p99s} ms, {errors} errors"
    );
    fields! {
        "phase": phase, "requests_per_s": rate,
        // Presence objects read per second (reads only).
        "reads_per_s": reading.then(|| per_s(reads)), "p50_ms": p50, "p99_ms": p99,
        "max_ms": max, "errors": errors, "rate_limited": rate_limited,
        // Answers in the window (all of them for `setup`).
        "requests": requests, "answers_total": t.answers, "seconds": round_to(secs, 3),
        "concurrency": opts.concurrency, "users": opts.users,
        "batch": (phase == "batch").then_some(opts.batch), "callers": k_callers,
        // The busiest caller's requests per second (the enterprise plan
        // allows 100 after a burst of 1000).
        "max_caller_req_per_s": round_to(max_caller as f64 / secs, 1), "error_detail": t.errors,
        "cpu_pct": t.cpu, "generator": "xtask",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::defaults;
    use super::*;
    use crate::drive::fake;

    fn presence(user: &str, on: bool) -> Value {
        match on {
            true => json!({"userId": user, "status": "online", "lastSeen": "2025-01-01T00:00:00Z",
                "activity": "bench", "connections": 0}),
            false => json!({"userId": user, "status": "offline", "connections": 0}),
        }
    }

    #[test]
    fn presence_objects_and_batches() {
        assert_eq!(check_presence(&presence("a", true), "a", true), Ok(()));
        assert_eq!(
            check_presence(&presence("b", true), "a", true),
            Err("wrong_userId")
        );
        assert_eq!(
            check_presence(&presence("a", false), "a", true),
            Err("stale_presence")
        );
        let gone = json!({"userId": "a", "status": "gone"});
        assert_eq!(check_presence(&gone, "a", false), Err("bad_presence"));
        for (users, want) in [
            ("abc", vec![]),
            ("bac", vec!["batch_out_of_order"]),
            ("ab", vec!["batch_wrong_length"]),
            ("abd", vec!["batch_wrong_users"]),
        ] {
            let users: Vec<Value> = users
                .chars()
                .map(|u| presence(&u.to_string(), true))
                .collect();
            assert_eq!(
                check_batch(&json!({ "users": users }), &["a", "b", "c"], |_| true),
                want
            );
        }
        assert_eq!(
            (batch_ids(0, 200, 3), batch_ids(1, 200, 3)),
            (vec![0, 1, 2], vec![9, 8, 7])
        );
    }

    /// Presence as the contract has it (users online once they sent a
    /// heartbeat), with a fault: `reverse` batch answers, `forget`
    /// heartbeats, or every 5th single read a 500 (`errors`).
    fn run_against(fault: &'static str) -> Vec<Value> {
        let seen: Arc<Mutex<(Vec<String>, u64)>> = Arc::default();
        let url = fake::start(Arc::new(move |req| {
            let mut seen = seen.lock().unwrap();
            let target = req.uri().to_string();
            let body = match target.as_str() {
                "/v1/presence/heartbeat" => {
                    let user = fake::claims(&req, b"secret")["sub"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    if fault != "forget" {
                        seen.0.push(user.clone());
                    }
                    presence(&user, true)
                }
                t if t.starts_with("/v1/presence?users=") => {
                    let on = |u: &str| presence(u, seen.0.iter().any(|s| s == u));
                    let mut users: Vec<Value> = t[19..].split(',').map(on).collect();
                    if fault == "reverse" {
                        users.reverse();
                    }
                    json!({ "users": users })
                }
                t if t.starts_with("/v1/presence/") => {
                    seen.1 += 1;
                    if fault == "errors" && seen.1.is_multiple_of(5) {
                        return (500, vec![], "{}".into());
                    }
                    presence(&t[13..], seen.0.iter().any(|s| s == &t[13..]))
                }
                _ => json!({}),
            };
            (200, vec![], body.to_string())
        }));
        let opts = Options {
            users: 20,
            seconds: 0.3,
            concurrency: 4,
            batch: 10,
            callers: Some(5),
            ..defaults::<Options>()
        };
        let lines = run(&opts, &url, "secret", &[]);
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_correct_server_passes_every_phase_and_faults_are_reported() {
        let r = run_against("none");
        assert!(r.iter().all(|p| p["errors"] == 0) && r.len() == 4, "{r:?}");
        assert_eq!(
            (&r[0]["requests"], &r[1]["callers"], &r[3]["callers"]),
            (&json!(20), &json!(5), &json!(20))
        );
        let reads = r[2]["reads_per_s"].as_u64().unwrap();
        let requests = r[2]["requests_per_s"].as_u64().unwrap();
        assert!(reads > 0 && reads.abs_diff(10 * requests) <= 10, "{}", r[2]);
        let runs: Vec<(String, Value)> = r.into_iter().map(|v| ("rust".to_owned(), v)).collect();
        let s = super::super::Gen::summarize(&defaults::<Options>(), &[], &runs, true);
        assert!(
            s.json.contains("\"batch_p50_over_single_p50\":") && s.table.contains("batch/single")
        );
        let codes = |fault| {
            let r = run_against(fault);
            r.iter()
                .map(|p| p["error_detail"].to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let stale = r#"{} {"stale_presence":"#;
        assert!(
            codes("forget").starts_with(stale),
            "heartbeats right, reads stale"
        );
        assert!(codes("reverse").starts_with(r#"{} {} {"batch_out_of_order":"#));
        assert!(codes("errors").starts_with(r#"{} {"http_500":"#));
    }
}
