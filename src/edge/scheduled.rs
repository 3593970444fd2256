//! The cron handler (`#[event(scheduled)]`): roll-ups of marked hours into
//! metrics (CONTRACT.md section 8), then the data lifecycle (section 9,
//! `crate::lifecycle`). "Now" is the event's scheduled time, and
//! a run does all work due at that time whatever its cron expression, so
//! `GET /cdn-cgi/handler/scheduled?time=<ms>` on `wrangler dev` runs it as
//! of any moment. A run stops early when its time budget is spent; runs
//! repeated at the same time finish the work.

use worker::{event, Env, ScheduleContext, ScheduledEvent};

use crate::db;
use crate::edge::http;
use crate::error::ApiError;
use crate::time::{now_ms, Millis};
use sesh_core::data::partition::{Statement, LIST_PARTITIONS};
use sesh_core::data::rollup::{self, DEFAULT_MARKS_PER_BATCH};

/// Wall time a run may spend before it leaves the rest to the next run
/// (the runtime allows a scheduled handler far more; this keeps one run's
/// D1 load bounded).
const RUN_BUDGET_MS: Millis = 20_000;

/// Months of marks looked at per round.
const MONTHS_PER_ROUND: u32 = 12;

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let at = event.schedule() as Millis;
    let started = now_ms();
    match roll_up(&env, started + RUN_BUDGET_MS).await {
        Ok(n) => worker::console_log!(
            "{}",
            serde_json::json!({"level": "info", "job": "rollup", "at": at, "batches": n})
        ),
        Err(e) => http::log_error("scheduled", &e),
    }
    // The lifecycle runs after the roll-ups (a move drops monthly tables a
    // roll-up batch may be reading; that batch then fails and is retried).
    match crate::lifecycle::run_lifecycle(&env, at).await {
        Ok(report) => worker::console_log!(
            "{}",
            serde_json::json!({"level": "info", "job": "lifecycle", "at": at, "report": report})
        ),
        Err(e) => http::log_error("lifecycle", &e),
    }
}

/// Recomputes marked hours (and their days, weeks and months), one month's
/// batch at a time, oldest first, until no mark is left or `deadline`
/// passes. Answers how many batches ran.
pub async fn roll_up(env: &Env, deadline: Millis) -> Result<u32, ApiError> {
    let d1 = db::database(env)?;
    let mut batches = 0;
    loop {
        let found = db::batch(
            &d1,
            &[
                Statement::new(LIST_PARTITIONS, Vec::new()),
                rollup::marked_months(MONTHS_PER_ROUND),
            ],
        )
        .await?;
        let [tables, marked] = found.as_slice() else {
            return Err(ApiError::Internal("D1 batch answered short".into()));
        };
        let existing = sesh_core::data::partition::Existing::from_rows(tables)?;
        let months = rollup::parse_marked_months(marked)?;
        if months.is_empty() {
            return Ok(batches);
        }
        for month in months {
            if now_ms() >= deadline {
                return Ok(batches);
            }
            db::batch(
                &d1,
                &rollup::rollup_batch(month, &existing, DEFAULT_MARKS_PER_BATCH),
            )
            .await?;
            batches += 1;
        }
    }
}
