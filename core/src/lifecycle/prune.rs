//! The prune step of the scheduled run (CONTRACT.md section 9): the D1
//! points of archived sessions whose start month is
//! `DETAIL_RETENTION_MONTHS` or more back are deleted.
//!
//! For each verified archive past the cutoff: compare it with what D1
//! holds now (count and highest seq of the session's points; a flush that
//! landed after the archive was written makes D1 hold more, and the
//! archive is then set unverified, so the archive step writes it again,
//! manifest included, before anything is deleted); read the object back
//! from R2 and check count and checksum again; then set `pruned` 1 (reads now go
//! to the archive), delete the session's points from every points table in
//! chunks, and set `pruned` 2. Sessions rows and metrics stay. An object
//! that is not what was recorded is set unverified instead, so the archive
//! step writes it again before anything is deleted.

use std::collections::VecDeque;

use serde_json::Value;

use crate::data::history::{parse_point_months, point_months};
use crate::data::partition::{
    col_int, col_str, Existing, Span, Statement, TableKind, LIST_PARTITIONS,
};
use crate::lifecycle::format::{count, verify};
use crate::lifecycle::store::{
    ask, finished, first_rows, object, one, rows, Answer, Budget, Driver, Io, LifecycleError, Poll,
};
use crate::time::Millis;

// An archive due for pruning, as listed.
#[derive(Debug, Clone)]
struct Due {
    id: String,
    key: String,
    points: u64,
    sha256: String,
    pruned: i64,
}

#[derive(Debug)]
enum State {
    // List the next archives due.
    Start,
    Listed,
    Existing,
    NextArchive,
    // Count the session's points in D1 against the archive.
    Check(String),
    Checked(String),
    // The object read back for its check.
    ReadBack(String),
    // The object failed its check and is set unverified.
    Unverified,
    // `pruned` is 1: reads go to the archive.
    Marked(String),
    // Read the session's point months.
    Months(String),
    MonthsRead(String),
    // Delete a chunk of the first span left.
    NextChunk(String),
    Deleted(String),
    Finish(String),
    Pruned,
    Done,
}

/// Deletes the D1 points of archived sessions started before `cutoff`,
/// each only after its archive was read back and verified, as far as the
/// budget allows. Done with `true` when nothing is left to prune, `false`
/// when it stopped at the budget.
#[derive(Debug)]
pub struct Prune {
    cutoff: Millis,
    chunk: u32,
    /// The round trips left.
    pub budget: Budget,
    /// Sessions whose D1 points were deleted.
    pub pruned: u32,
    // Whether an archive was set unverified: it is written again by the
    // next run's archive step, and pruned after, so this run is not the
    // end of the work.
    unverified: bool,
    ex: Existing,
    due: VecDeque<Due>,
    spans: VecDeque<Span>,
    state: State,
    answer: Option<Answer>,
}

impl Prune {
    /// The prune step: archives of sessions started before `cutoff` (the
    /// first millisecond of the first month not old enough), `prune_chunk`
    /// points deleted per statement.
    pub fn new(cutoff: Millis, prune_chunk: u32, budget: Budget) -> Prune {
        Prune {
            cutoff,
            chunk: prune_chunk,
            budget,
            pruned: 0,
            unverified: false,
            ex: Existing::default(),
            due: VecDeque::new(),
            spans: VecDeque::new(),
            state: State::Start,
            answer: None,
        }
    }
}

impl Driver for Prune {
    type Output = bool;

    fn poll(&mut self) -> Result<Poll<bool>, LifecycleError> {
        loop {
            let answer = self.answer.take();
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    if !self.budget.take(2) {
                        return Ok(Poll::Done(false));
                    }
                    let list = Statement::new(
                        "SELECT session_id, key, points, sha256, pruned FROM archives \
                         WHERE verified = 1 AND pruned < 2 AND started_ms < ?1 ORDER BY session_id LIMIT 20",
                        vec![Value::from(self.cutoff)],
                    );
                    return ask(&mut self.state, State::Listed, one(list));
                }
                State::Listed => {
                    let rows = first_rows(answer)?;
                    if rows.is_empty() {
                        return Ok(Poll::Done(!self.unverified));
                    }
                    self.due = rows
                        .iter()
                        .map(|r| {
                            Ok(Due {
                                id: col_str(r, "session_id")?,
                                key: col_str(r, "key")?,
                                points: count(r, "points")?,
                                sha256: col_str(r, "sha256")?,
                                pruned: col_int(r, "pruned")?,
                            })
                        })
                        .collect::<Result<_, LifecycleError>>()?;
                    return ask(
                        &mut self.state,
                        State::Existing,
                        one(Statement::new(LIST_PARTITIONS, vec![])),
                    );
                }
                State::Existing => {
                    self.ex = Existing::from_rows(&first_rows(answer)?)?;
                    self.state = State::NextArchive;
                }
                State::NextArchive => {
                    let Some(d) = self.due.front().cloned() else {
                        self.state = State::Start;
                        continue;
                    };
                    self.state = State::Months(d.id);
                }
                State::Check(id) => {
                    // The check, the read back and the mark.
                    if !self.budget.take(3) {
                        return Ok(Poll::Done(false));
                    }
                    if self.spans.is_empty() {
                        let key = self.due.front().ok_or_else(finished)?.key.clone();
                        return ask(&mut self.state, State::ReadBack(id), Io::Get(key));
                    }
                    let batch = self
                        .spans
                        .iter()
                        .map(|s| {
                            let t = TableKind::Points.table(*s);
                            Statement::new(
                                format!(
                                    "SELECT count(*) AS n, coalesce(max(seq), 0) AS hi \
                                     FROM {t} WHERE session_id = ?1"
                                ),
                                vec![Value::from(id.as_str())],
                            )
                        })
                        .collect();
                    return ask(&mut self.state, State::Checked(id), Io::Batch(batch));
                }
                State::Checked(id) => {
                    let d = self.due.front().cloned().ok_or_else(finished)?;
                    let (mut n, mut hi) = (0u64, 0u64);
                    for r in rows(answer)?.iter().filter_map(|r| r.first()) {
                        n += count(r, "n")?;
                        hi = hi.max(count(r, "hi")?);
                    }
                    if n > d.points || hi > d.points {
                        // Points reached D1 after the archive was written.
                        return ask(&mut self.state, State::Unverified, one(unverify(&id)));
                    }
                    return ask(&mut self.state, State::ReadBack(id), Io::Get(d.key));
                }
                State::ReadBack(id) => {
                    let bytes = object(answer)?.unwrap_or_default();
                    let d = self.due.front().cloned().ok_or_else(finished)?;
                    if verify(&bytes, d.points, &d.sha256).is_err() {
                        // The object is not what was recorded: archive it
                        // again (next run) before anything is deleted.
                        return ask(&mut self.state, State::Unverified, one(unverify(&id)));
                    }
                    let mark = Statement::new(
                        "UPDATE archives SET pruned = 1 WHERE session_id = ?1 AND pruned = 0",
                        vec![Value::from(id.as_str())],
                    );
                    return ask(&mut self.state, State::Marked(id), one(mark));
                }
                State::Unverified => {
                    rows(answer)?;
                    self.unverified = true;
                    self.due.pop_front();
                    self.state = State::NextArchive;
                }
                State::Marked(id) => {
                    rows(answer)?;
                    self.state = State::NextChunk(id);
                }
                State::Months(id) => {
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    let io = one(point_months(&id));
                    return ask(&mut self.state, State::MonthsRead(id), io);
                }
                State::MonthsRead(id) => {
                    let months = parse_point_months(&first_rows(answer)?)?;
                    let mut spans: Vec<Span> = months
                        .iter()
                        .flat_map(|m| [Span::Year(m.year()), Span::Month(*m)])
                        .filter(|s| self.ex.contains(TableKind::Points, *s))
                        .collect();
                    spans.sort();
                    spans.dedup();
                    self.spans = spans.into();
                    let fresh = self.due.front().is_some_and(|d| d.pruned == 0);
                    self.state = if fresh {
                        State::Check(id)
                    } else {
                        State::NextChunk(id)
                    };
                }
                State::NextChunk(id) => {
                    let Some(s) = self.spans.front().copied() else {
                        self.state = State::Finish(id);
                        continue;
                    };
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    let t = TableKind::Points.table(s);
                    let batch = vec![
                        Statement::new(
                            format!(
                                "DELETE FROM {t} WHERE session_id = ?1 AND seq IN \
                                 (SELECT seq FROM {t} WHERE session_id = ?1 ORDER BY seq LIMIT ?2)"
                            ),
                            vec![Value::from(id.as_str()), Value::from(self.chunk)],
                        ),
                        Statement::new(
                            format!("SELECT count(*) AS n FROM {t} WHERE session_id = ?1"),
                            vec![Value::from(id.as_str())],
                        ),
                    ];
                    return ask(&mut self.state, State::Deleted(id), Io::Batch(batch));
                }
                State::Deleted(id) => {
                    let rows = rows(answer)?;
                    let left = rows
                        .get(1)
                        .and_then(|r| r.first())
                        .map(|r| col_int(r, "n"))
                        .transpose()?
                        .unwrap_or(0);
                    if left == 0 {
                        self.spans.pop_front();
                    }
                    self.state = State::NextChunk(id);
                }
                State::Finish(id) => {
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    let batch = vec![
                        Statement::new(
                            "DELETE FROM session_point_months WHERE session_id = ?1",
                            vec![Value::from(id.as_str())],
                        ),
                        Statement::new(
                            "UPDATE archives SET pruned = 2 WHERE session_id = ?1",
                            vec![Value::from(id.as_str())],
                        ),
                    ];
                    return ask(&mut self.state, State::Pruned, Io::Batch(batch));
                }
                State::Pruned => {
                    rows(answer)?;
                    self.due.pop_front();
                    self.pruned += 1;
                    self.state = State::NextArchive;
                }
                State::Done => return Err(finished()),
            }
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

// Sets an archive unverified, so the archive step writes it again before
// anything is deleted; never one whose pruning has begun.
fn unverify(id: &str) -> Statement {
    Statement::new(
        "UPDATE archives SET verified = 0 WHERE session_id = ?1 AND pruned = 0",
        vec![Value::from(id)],
    )
}
