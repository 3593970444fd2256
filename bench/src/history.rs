//! `bench history` (see README.md): roll-ups and session lists over local
//! D1, seeded with the Worker's own statements through the test build's
//! `POST /__test/d1`. Errors: seeding or a run answering other than 200,
//! points in D1 other than seeded, roll-up counts (`metrics_month`) other
//! than the points, marks left after 200 runs, lists without sessions.

use std::time::Instant;

use anyhow::{Context, Result};
use reqwest::Client;
use serde_json::{json, Map, Value};
use sesh_core::data::history::{write_points, write_session, PartitionWrite};
use sesh_core::data::partition::{Month, Statement};
use sesh_protocol::{SessionStatus, SessionSummary};

use super::drive::{self, block_on, expect, fail, send, Errors};
use super::summary::{fields, round_to, spread};
use super::{positive, Served};

/// Roll-ups and session lists over local D1.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Points to roll up
    #[arg(long, default_value_t = 1_000_000, value_parser = positive)]
    pub points: usize,
    /// Authors of the points
    #[arg(long, default_value_t = 4, value_parser = positive)]
    pub users: usize,
    /// Months back the points spread over (at most 12: monthly tables)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i64).range(1..=12))]
    pub months: i64,
    /// Sessions listed per month, over 24 months
    #[arg(long, default_value_t = 20, value_parser = positive)]
    pub sessions_per_month: usize,
    /// List requests per range
    #[arg(long, default_value_t = 200, value_parser = positive)]
    pub requests: usize,
}

impl super::Gen for Options {
    const TITLE: &'static str = "bench history";
    const FEATURES: Option<&'static str> = Some("test-faults");

    fn shape(&self) -> Value {
        let (p, u, m, s, r) = (
            self.points,
            self.users,
            self.months,
            self.sessions_per_month,
            self.requests,
        );
        json!({"points": p, "users": u, "months": m, "sessions_per_month": s, "requests": r})
    }

    fn metrics(&self) -> &'static str {
        "rollup_points_per_s rollup_s seed_points_per_s list_1m_p50_ms list_1m_p99_ms \
            list_24m_p50_ms list_24m_p99_ms list_p50_ratio list_p99_ratio errors"
    }

    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>> {
        let secret = s.secret()?.to_owned();
        block_on(self.run_on(&s.url, &secret))?.map(|l| vec![l])
    }
}

impl Options {
    async fn run_on(&self, base: &str, secret: &str) -> Result<String> {
        let (c, tag, now) = (drive::client()?, drive::tag(6), drive::now_ms());
        let mut errors = Errors::new();
        let mut check = |ok: bool, code: &str| (!ok).then(|| fail(&mut errors, code));
        let month = |back: i64| Month::from_index(Month::of(now).index() - back);
        let t0 = Instant::now();
        let per = self.points.div_ceil(self.users * self.months as usize);
        let (mut batch, mut seeded) = (Vec::new(), 0);
        for (u, m) in (0..self.users).flat_map(|u| (0..self.months).map(move |m| (u, m))) {
            let (user, month) = (format!("hist-{tag}-u{u}"), month(m));
            let (start, end) = (month.start_ms(), month.end_ms().min(now));
            let n = per.min(self.points - seeded);
            let step = (end - start) / n.max(1) as i64;
            let points: Vec<(i64, String)> = (0..n)
                .map(|i| point(&user, i, start + i as i64 * step))
                .collect();
            seeded += n;
            let id = uuid::Uuid::new_v4().to_string();
            for chunk in points.chunks(3000) {
                batch.extend(write_points(&id, chunk, now));
                d1_batch(&c, base, &mut batch).await?;
            }
        }
        let seed_s = t0.elapsed().as_secs_f64();
        let sql = "SELECT name FROM partitions WHERE name LIKE 'session_points_%'";
        let mut stored = 0;
        for t in d1_rows(&c, base, sql)
            .await?
            .iter()
            .filter_map(|r| r["name"].as_str())
        {
            stored += count(&c, base, &format!("SELECT count(*) AS n FROM {t}")).await?;
        }
        check(stored == seeded as i64, "points_stored_mismatch");

        let marks_sql = "SELECT count(*) AS n FROM rollup_marks";
        let marks = count(&c, base, marks_sql).await?;
        let t0 = Instant::now();
        let mut runs = 0;
        loop {
            roll_up(&c, base, now).await?;
            runs += 1;
            let left = count(&c, base, marks_sql).await?;
            if left == 0 || runs >= 200 {
                check(left == 0, "marks_left");
                break;
            }
        }
        let rollup_s = t0.elapsed().as_secs_f64();
        let rolled = count(&c, base, "SELECT sum(count) AS n FROM metrics_month").await?;
        check(rolled == seeded as i64, "rollup_count_mismatch");

        let owner = format!("hist-{tag}-lister");
        let token = xtask::mint(secret, &owner, "enterprise", None, 3600)?;
        for m in 0..24 {
            let (month, k) = (month(m), self.sessions_per_month as i64);
            for i in 0..k {
                let started_at =
                    month.start_ms() + i * ((month.end_ms().min(now) - month.start_ms()) / k);
                let id = session_id(started_at);
                let rec = record(&id, &owner, started_at, 0, SessionStatus::Ended);
                batch.push(write_session(&rec, now)?);
            }
            d1_batch(&c, base, &mut batch).await?;
        }
        let (rfc, mut lat) = (sesh_core::time::rfc3339, [Vec::new(), Vec::new()]);
        for i in 0..self.requests * 2 {
            let from = rfc(month([1, 23][i % 2]).start_ms());
            let url = format!("{base}/v1/sessions?from={from}&to={}", rfc(now + 1000));
            let t = Instant::now();
            let r = send(c.get(url).bearer_auth(&token)).await;
            lat[i % 2].push(t.elapsed().as_secs_f64() * 1000.0);
            match r {
                Ok(r) if r.status == 200 => check(
                    r.json()["sessions"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty()),
                    "list_empty",
                ),
                Ok(r) => check(false, &format!("list_http_{}", r.status)),
                Err(e) => check(false, &format!("list_transport_{e}")),
            };
        }
        let [p50_1, p99_1, _] = spread(&mut lat[0]);
        let [p50_24, p99_24, _] = spread(&mut lat[1]);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round_to(a / b, 3));
        Ok(fields! {
            "rollup_points_per_s": (seeded as f64 / rollup_s).round(),
            "rollup_s": round_to(rollup_s, 2), "rollup_runs": runs, "marks": marks,
            "list_1m_p50_ms": p50_1, "list_1m_p99_ms": p99_1, "list_24m_p50_ms": p50_24,
            "list_24m_p99_ms": p99_24, "list_p50_ratio": ratio(p50_24, p50_1),
            "list_p99_ratio": ratio(p99_24, p99_1), "points": seeded, "users": self.users,
            "months": self.months, "sessions": 24 * self.sessions_per_month,
            "seed_s": round_to(seed_s, 1), "seed_points_per_s": (seeded as f64 / seed_s).round(),
            "errors": errors.values().sum::<u64>(), "error_detail": errors, "generator": "xtask",
        })
    }
}

/// Point `i` of `user`'s at `ts`, as a session's flush writes it: one of
/// two kinds, so that the roll-up groups by kind too.
pub(super) fn point(user: &str, i: usize, ts: i64) -> (i64, String) {
    let kind = ["a", "b"][i % 2];
    let p = json!({"seq": i + 1, "userId": user, "kind": kind, "value": i % 100, "ts": ts});
    (ts, p.to_string())
}

/// A fresh session id (UUIDv7) for a session started at `started_at`: the
/// Worker reads a session's month from its id.
pub(super) fn session_id(started_at: i64) -> String {
    let (secs, ms) = (started_at.div_euclid(1000), started_at.rem_euclid(1000));
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs as u64, ms as u32 * 1_000_000);
    uuid::Uuid::new_v7(ts).to_string()
}

/// A session row of `user`'s with `points` points, as a flush writes it.
pub(super) fn record(
    id: &str,
    user: &str,
    started_at: i64,
    points: usize,
    status: SessionStatus,
) -> SessionSummary {
    let rfc3339 = sesh_core::time::rfc3339;
    SessionSummary {
        id: id.to_owned(),
        owner_id: user.to_owned(),
        title: Some("seeded".to_owned()),
        members: Vec::new(),
        viewers: vec![],
        metadata: Map::new(),
        status,
        started_at: rfc3339(started_at),
        ended_at: (status == SessionStatus::Ended).then(|| rfc3339(started_at + 3_600_000)),
        point_count: points as u64,
        last_seq: points as u64,
        stats: Default::default(),
    }
}

/// One roll-up run as of `now`: the scheduled handler, through
/// `GET /cdn-cgi/handler/scheduled`.
async fn roll_up(c: &Client, base: &str, now: i64) -> Result<()> {
    let url = format!("{base}/cdn-cgi/handler/scheduled?cron=*&time={now}");
    expect(c.get(url), 200, "scheduled run").await.map(drop)
}

/// Runs statements as one D1 batch; the rows of each.
pub(super) async fn d1(c: &Client, base: &str, batch: Vec<Statement>) -> Result<Vec<Vec<Value>>> {
    let rb = c
        .post(format!("{base}/__test/d1"))
        .json(&json!({ "batch": batch }));
    let v = expect(rb, 200, "POST /__test/d1").await?;
    Ok(serde_json::from_value(v["results"].clone())?)
}

/// Runs the writes as one D1 batch (each partition made sure of first) and
/// empties `writes`.
pub(super) async fn d1_batch(
    c: &Client,
    base: &str,
    writes: &mut Vec<PartitionWrite>,
) -> Result<()> {
    let batch = writes
        .drain(..)
        .flat_map(|w| w.ensure.statements.into_iter().chain(w.statements));
    d1(c, base, batch.collect()).await.map(drop)
}

/// The rows of one SQL statement.
async fn d1_rows(c: &Client, base: &str, sql: &str) -> Result<Vec<Value>> {
    let v = expect(
        c.post(format!("{base}/__test/d1")).body(sql.to_owned()),
        200,
        sql,
    )
    .await?;
    let rows = v["rows"].as_array().cloned();
    rows.with_context(|| format!("{sql}: no rows in {v}"))
}

/// The `n` of a one-row count.
pub(super) async fn count(c: &Client, base: &str, sql: &str) -> Result<i64> {
    let rows = d1_rows(c, base, sql).await?;
    Ok(rows.first().and_then(|r| r["n"].as_f64()).unwrap_or(0.0) as i64)
}
