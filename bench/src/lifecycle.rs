//! `bench lifecycle`: the data lifecycle's throughput over local D1 and R2
//! (CONTRACT.md section 9), seeded like `bench history` with the Worker's
//! own statements through the test build's `POST /__test/d1`.
//!
//! `--points` points in sessions of `--per-session` points, one user's,
//! started 13 months back (monthly tables, flushed when they happened; the
//! seed's roll-up marks are dropped so that the runs time the lifecycle
//! alone). The sessions are still active, so that the first runs of
//! `GET /cdn-cgi/handler/scheduled?time=<now>` only move (until no monthly
//! table of that month is left: `move_rows_per_s` over every row of the
//! month's tables); then each session is ended with the flush's own upsert
//! and the runs archive them (until every session has a verified archive:
//! `archive_rows_per_s` over the lines written, a session line and its
//! points); then the user's export runs to `done` (`export_rows_per_s`
//! over its session and point lines) and is downloaded.
//!
//! Errors: seeding or a run answering other than 200, rows in the yearly
//! tables or archives other than seeded, work left after 400 runs, an
//! export that fails, counts other points or whose download does not
//! match its size and SHA-256.

use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};
use sesh_core::data::history::{write_points, write_session};
use sesh_core::data::partition::Month;
use sesh_core::lifecycle::format::sha256_hex;
use sesh_protocol::SessionStatus;

use super::drive::{self, block_on, expect, fail, send, Errors};
use super::history::{count, d1, d1_batch, point, record, session_id};
use super::summary::{fields, round_to};
use super::{positive, Served};

/// Moves, archives and an export over local D1 and R2.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Points to move, archive and export
    #[arg(long, default_value_t = 1_000_000, value_parser = positive)]
    pub points: usize,
    /// Points per session
    #[arg(long, default_value_t = 1_000, value_parser = positive)]
    pub per_session: usize,
}

impl super::Gen for Options {
    const TITLE: &'static str = "bench lifecycle";
    const FEATURES: Option<&'static str> = Some("test-faults");

    fn shape(&self) -> Value {
        json!({"points": self.points, "per_session": self.per_session})
    }

    fn metrics(&self) -> &'static str {
        "move_rows_per_s archive_rows_per_s export_rows_per_s move_s archive_s export_s errors"
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
        let user = format!("life-{tag}");
        let month = Month::from_index(Month::of(now).index() - 13);
        let n_sessions = self.points.div_ceil(self.per_session);
        let span = (month.end_ms() - month.start_ms()) / n_sessions as i64;
        let t0 = Instant::now();
        let mut sessions: Vec<(String, i64, usize)> = Vec::new();
        let (mut writes, mut pending) = (Vec::new(), 0);
        for s in 0..n_sessions {
            let started_at = month.start_ms() + s as i64 * span;
            let n = self.per_session.min(self.points - s * self.per_session);
            let id = session_id(started_at);
            let points: Vec<(i64, String)> = (0..n)
                .map(|i| point(&user, i, started_at + i as i64 * 1000))
                .collect();
            let rec = record(&id, &user, started_at, n, SessionStatus::Active);
            writes.push(write_session(&rec, started_at)?);
            for chunk in points.chunks(3000) {
                writes.extend(write_points(&id, chunk, started_at));
                pending += chunk.len();
                if pending >= 3000 {
                    d1_batch(&c, base, &mut writes).await?;
                    pending = 0;
                }
            }
            sessions.push((id, started_at, n));
        }
        if !writes.is_empty() {
            d1_batch(&c, base, &mut writes).await?;
        }
        let seed_s = t0.elapsed().as_secs_f64();
        d1(&c, base, vec![sql("DELETE FROM rollup_marks")]).await?;
        let m = month.suffix();
        let mut move_rows = 0;
        for t in ["sessions", "session_members", "session_points"] {
            move_rows += count(&c, base, &format!("SELECT count(*) AS n FROM {t}_{m}")).await?;
        }

        let monthly = format!("SELECT count(*) AS n FROM partitions WHERE name LIKE '%_{m}'");
        let (move_s, move_runs) = until(&c, base, now, &monthly, 0).await?;
        check(move_runs.is_some(), "moves_left");
        let yearly = format!("SELECT count(*) AS n FROM session_points_{}", month.year());
        check(
            count(&c, base, &yearly).await? == self.points as i64,
            "moved_points_mismatch",
        );

        for chunk in sessions.chunks(200) {
            let end = |(id, at, n): &(String, i64, usize)| {
                write_session(&record(id, &user, *at, *n, SessionStatus::Ended), now)
            };
            d1_batch(
                &c,
                base,
                &mut chunk.iter().map(end).collect::<Result<_, _>>()?,
            )
            .await?;
        }
        let archived = "SELECT count(*) AS n FROM archives WHERE verified = 1 AND manifested = 1";
        let (archive_s, archive_runs) = until(&c, base, now, archived, n_sessions as i64).await?;
        check(archive_runs.is_some(), "archives_left");
        let in_archives = count(&c, base, "SELECT sum(points) AS n FROM archives").await?;
        check(
            in_archives == self.points as i64,
            "archived_points_mismatch",
        );

        let token = xtask::mint(secret, &user, "enterprise", None, 3600)?;
        let path = format!("{base}/v1/users/{user}/exports");
        let t0 = Instant::now();
        let created = expect(c.post(&path).bearer_auth(&token), 202, "POST exports").await?;
        let status_url = format!("{path}/{}", created["id"].as_str().unwrap_or_default());
        let mut status = Value::Null;
        while t0.elapsed().as_secs() < 3600 {
            status = expect(c.get(&status_url).bearer_auth(&token), 200, "export status").await?;
            if !matches!(status["status"].as_str(), Some("pending" | "running")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let export_s = t0.elapsed().as_secs_f64();
        check(status["status"] == "done", "export_not_done");
        check(status["points"] == self.points, "export_points_mismatch");
        let dl = send(c.get(format!("{status_url}/download")).bearer_auth(&token)).await;
        let sha = dl.as_ref().map(|r| sha256_hex(&r.body)).unwrap_or_default();
        check(status["sha256"] == sha.as_str(), "export_sha256_mismatch");
        let bytes = dl.map(|r| r.body.len()).unwrap_or(0);
        check(status["bytes"] == bytes, "export_bytes_mismatch");
        let export_rows =
            status["sessions"].as_i64().unwrap_or(0) + status["points"].as_i64().unwrap_or(0);
        let archive_rows = self.points + n_sessions;
        Ok(fields! {
            "move_rows_per_s": (move_rows as f64 / move_s).round(),
            "archive_rows_per_s": (archive_rows as f64 / archive_s).round(),
            "export_rows_per_s": (export_rows as f64 / export_s).round(),
            "move_rows": move_rows, "move_s": round_to(move_s, 2), "move_runs": move_runs,
            "archive_rows": archive_rows, "archive_s": round_to(archive_s, 2),
            "archive_runs": archive_runs, "export_rows": export_rows,
            "export_s": round_to(export_s, 2), "export_bytes": bytes,
            "points": self.points, "sessions": n_sessions, "seed_s": round_to(seed_s, 1),
            "errors": errors.values().sum::<u64>(), "error_detail": errors, "generator": "xtask",
        })
    }
}

fn sql(s: &str) -> sesh_core::data::partition::Statement {
    sesh_core::data::partition::Statement::new(s, vec![])
}

/// Scheduled runs as of `now`, one after the other, until `query`'s `n`
/// is `want`: the seconds taken and the runs (`None` after 400 runs).
async fn until(
    c: &reqwest::Client,
    base: &str,
    now: i64,
    query: &str,
    want: i64,
) -> Result<(f64, Option<u32>)> {
    let t0 = Instant::now();
    let url = format!("{base}/cdn-cgi/handler/scheduled?cron=*&time={now}");
    for runs in 1..=400 {
        expect(c.get(&url), 200, "scheduled run").await?;
        if count(c, base, query).await? == want {
            return Ok((t0.elapsed().as_secs_f64(), Some(runs)));
        }
    }
    Ok((t0.elapsed().as_secs_f64(), None))
}
