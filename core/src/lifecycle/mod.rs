//! The data lifecycle of CONTRACT.md section 9, run by the scheduled
//! handler at the event's time `now`, and the user exports.
//!
//! Every step is a sans-IO [`Driver`]: it emits the D1 or R2 request it
//! needs next ([`store::Io`]) and takes the answer back, so no function
//! here waits; the Worker's adapter carries the requests out. Each step is
//! a file, and this module only orchestrates. [`Run`] does, in order, as
//! far as its [`Budget`] of round trips allows (a run that stops early
//! reports `complete: false`; the next run at the same time goes on from
//! the progress recorded in D1):
//!
//! 1. **Moves** ([`moves`]) of monthly partitions 12 or more months back
//!    into their yearly tables.
//! 2. **Archives** ([`archive`]) of cold ended sessions to R2, with
//!    quarterly manifests, in the [`format`] the reads share.
//! 3. **Pruning** ([`prune`]) of archived sessions' detailed points.
//!
//! Exports ([`export`]) run one step per alarm of their own object; the
//! reads of a retired session ([`reads`]) are drivers too.
//!
//! Dependencies go one way: this module uses the steps; the steps use
//! [`store`], [`format`] and [`reads`] (and the data layer), never this
//! module, so what they need of the configuration is passed in.

pub mod archive;
pub mod export;
pub mod format;
pub mod moves;
pub mod prune;
pub mod reads;
pub mod store;

use crate::data::partition::Month;
use crate::lifecycle::archive::Archive;
use crate::lifecycle::moves::Moves;
use crate::lifecycle::prune::Prune;
use crate::lifecycle::store::{finished, Answer, Budget, Driver, LifecycleError, Poll};
use crate::time::Millis;

/// The lifecycle settings (Worker vars; README's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// `ARCHIVE_AFTER_MONTHS`: an ended session whose start month is this
    /// many months or more before now's month is archived to R2.
    pub archive_after_months: u32,
    /// `DETAIL_RETENTION_MONTHS`: an archived session whose start month is
    /// this many months or more before now's month has its points deleted
    /// from D1 (after its archive is read back and verified).
    pub detail_retention_months: u32,
    /// `ENDED_RETENTION_MS`: how long an ended session's object keeps its
    /// own storage once every point is in D1 (the session object's rule).
    pub ended_retention_ms: Millis,
    /// `LIFECYCLE_MOVE_CHUNK`: rows copied or checked by one statement of
    /// a partition move.
    pub move_chunk: u32,
    /// `LIFECYCLE_PRUNE_CHUNK`: points deleted by one statement.
    pub prune_chunk: u32,
    /// `LIFECYCLE_MAX_CALLS`: D1 and R2 round trips one scheduled run may
    /// make before it stops (the rest is left to the next run).
    pub max_calls: u32,
    /// `EXPORT_STEP_POINTS`: points written by one export step (one alarm,
    /// one gzip member).
    pub export_step_points: u32,
    /// `EXPORT_RETENTION_DAYS`: days after it is done that an export's
    /// file is deleted (its status then `expired`).
    pub export_retention_days: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            archive_after_months: 12,
            detail_retention_months: 24,
            ended_retention_ms: 7 * 86_400_000,
            move_chunk: 5_000,
            prune_chunk: 5_000,
            max_calls: 500,
            export_step_points: 5_000,
            export_retention_days: 7,
        }
    }
}

impl LifecycleConfig {
    /// From vars looked up by `get`; absent or empty vars keep their
    /// defaults. Errors name the var, for the operator's log.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<LifecycleConfig, String> {
        let mut c = LifecycleConfig::default();
        let num = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            match get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "{name} must be an integer from {min} to {max}, not {v:?}"
                    )),
                },
            }
        };
        if let Some(n) = num("ARCHIVE_AFTER_MONTHS", 12, 1200)? {
            c.archive_after_months = n as u32;
        }
        if let Some(n) = num("DETAIL_RETENTION_MONTHS", 12, 1200)? {
            c.detail_retention_months = n as u32;
        }
        if let Some(n) = num("ENDED_RETENTION_MS", 0, 10 * 365 * 86_400_000)? {
            c.ended_retention_ms = n as Millis;
        }
        if let Some(n) = num("LIFECYCLE_MOVE_CHUNK", 1, 50_000)? {
            c.move_chunk = n as u32;
        }
        if let Some(n) = num("LIFECYCLE_PRUNE_CHUNK", 1, 50_000)? {
            c.prune_chunk = n as u32;
        }
        if let Some(n) = num("LIFECYCLE_MAX_CALLS", 10, 100_000)? {
            c.max_calls = n as u32;
        }
        if let Some(n) = num("EXPORT_STEP_POINTS", 1, 100_000)? {
            c.export_step_points = n as u32;
        }
        if let Some(n) = num("EXPORT_RETENTION_DAYS", 1, 3650)? {
            c.export_retention_days = n as u32;
        }
        Ok(c)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Monthly tables dropped after their move.
    pub moved: Vec<String>,
    /// Sessions archived and verified.
    pub archived: u32,
    /// Manifests written.
    pub manifests: u32,
    /// Sessions whose D1 points were deleted.
    pub pruned: u32,
    /// Sessions left for later because D1 does not hold all their points
    /// yet (a flush still pending).
    pub deferred: u32,
    /// Sessions left unarchived because reading one takes more round trips
    /// than a run's budget (`LIFECYCLE_MAX_CALLS`); they do not hold back
    /// the others' archives or any pruning.
    pub oversized: u32,
    /// Exports whose files were deleted after their retention.
    pub expired: u32,
    /// Whether all work due at `now` is done; `false` when the run stopped
    /// at its budget.
    pub complete: bool,
}

/// Whether a month is at least `months` months before `now`'s month.
pub fn months_old(month: Month, now: Millis, months: u32) -> bool {
    Month::of(now).index() - month.index() >= i64::from(months)
}

/// The first millisecond of the first month that is NOT `months` or more
/// months before `now`'s month: rows dated before it are that old.
pub fn cutoff_ms(now: Millis, months: u32) -> Millis {
    Month::from_index(Month::of(now).index() - i64::from(months) + 1).start_ms()
}

/// All lifecycle work due at `now` that the budget of
/// [`LifecycleConfig::max_calls`] round trips allows: moves, then
/// archives, then pruning. Archiving and pruning start only once the moves
/// are complete; pruning (of archives already verified) runs whatever is
/// left of archiving, with what is left of the budget.
/// Done with the run's [`Report`].
#[derive(Debug)]
pub struct Run {
    now: Millis,
    cfg: LifecycleConfig,
    report: Report,
    // Whether the archive step finished all it had.
    archived_all: bool,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Moves(Moves),
    Archive(Archive),
    Prune(Prune),
    Done,
}

impl Run {
    /// The run at `now` (the scheduled event's time).
    pub fn new(now: Millis, cfg: &LifecycleConfig) -> Run {
        Run {
            now,
            cfg: *cfg,
            report: Report::default(),
            archived_all: false,
            stage: Stage::Moves(Moves::new(now, cfg.move_chunk, Budget::new(cfg.max_calls))),
        }
    }
}

impl Driver for Run {
    type Output = Report;

    fn poll(&mut self) -> Result<Poll<Report>, LifecycleError> {
        loop {
            // Each step's polls; when one is done, its figures go to the
            // report and what is left of the budget to the next step.
            let (complete, budget) = match &mut self.stage {
                Stage::Moves(m) => match m.poll()? {
                    Poll::Io(io) => return Ok(Poll::Io(io)),
                    Poll::Done(complete) => {
                        self.report.moved = std::mem::take(&mut m.moved);
                        (complete, m.budget)
                    }
                },
                Stage::Archive(a) => match a.poll()? {
                    Poll::Io(io) => return Ok(Poll::Io(io)),
                    Poll::Done(complete) => {
                        self.report.archived = a.archived;
                        self.report.manifests = a.manifests;
                        self.report.deferred = a.deferred;
                        self.report.oversized = a.oversized;
                        (complete && a.oversized == 0, a.budget)
                    }
                },
                Stage::Prune(p) => match p.poll()? {
                    Poll::Io(io) => return Ok(Poll::Io(io)),
                    Poll::Done(complete) => {
                        self.report.pruned = p.pruned;
                        (complete, p.budget)
                    }
                },
                Stage::Done => return Err(finished()),
            };
            let next = match (&self.stage, complete) {
                (Stage::Moves(_), true) => Stage::Archive(Archive::new(
                    self.now,
                    cutoff_ms(self.now, self.cfg.archive_after_months),
                    budget,
                    self.cfg.max_calls,
                )),
                (Stage::Archive(_), _) => {
                    self.archived_all = complete;
                    Stage::Prune(Prune::new(
                        cutoff_ms(self.now, self.cfg.detail_retention_months),
                        self.cfg.prune_chunk,
                        budget,
                    ))
                }
                _ => {
                    self.stage = Stage::Done;
                    let mut report = std::mem::take(&mut self.report);
                    report.complete = complete && self.archived_all;
                    return Ok(Poll::Done(report));
                }
            };
            self.stage = next;
        }
    }

    fn handle(&mut self, answer: Answer) {
        match &mut self.stage {
            Stage::Moves(m) => m.handle(answer),
            Stage::Archive(a) => a.handle(answer),
            Stage::Prune(p) => p.handle(answer),
            Stage::Done => {}
        }
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests;
