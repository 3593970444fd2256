//! The archive step of the scheduled run (CONTRACT.md section 9): cold
//! sessions to R2 in the format of [`crate::lifecycle::format`].
//!
//! A session is cold when it is ended and its start month is
//! `ARCHIVE_AFTER_MONTHS` or more before now's month. For each: read the
//! session and every point from D1; only when D1 holds `pointCount` points
//! (no flush pending) write the object, record it (`verified` 0), read it
//! back, check count and checksum, mark it `verified`. Then rewrite the
//! manifest of each quarter with newly verified objects. A run killed
//! anywhere writes the same object again (same rows, same bytes) and ends
//! in the same state.

use std::collections::VecDeque;

use serde_json::Value;
use sesh_protocol::limits::MAX_READ_LIMIT;
use sesh_protocol::SessionSummary;

use crate::data::history::{
    find_session, parse_found_session, parse_point_months, point_months, v7_time,
};
use crate::data::partition::{col_str, Existing, Statement, TableKind, LIST_PARTITIONS};
use crate::lifecycle::format::{
    archive_key, count, encode, manifest_key, quarter, verify, ArchiveObject, Manifest,
    ManifestEntry,
};
use crate::lifecycle::reads::AllPoints;
use crate::lifecycle::store::{
    ask, finished, first_rows, object, one, rows, stored, Answer, Budget, Driver, Io,
    LifecycleError, Poll,
};
use crate::time::{rfc3339, Millis};

// Sessions listed per round trip, and quarters per manifest round.
const LIST: usize = 20;

#[derive(Debug)]
enum State {
    Start,
    Existing,
    // List the next cold sessions after `after`.
    List,
    Listed,
    // Archive the next listed session.
    NextSession,
    One(Box<ArchiveOne>),
    // Rewrite the manifests of quarters with new objects.
    Manifests,
    Quarters,
    NextQuarter,
    QuarterRows(String),
    ManifestPut(String, String),
    Manifested,
    Done,
}

/// Archives the cold ended sessions as of `now`, then writes the manifests
/// of their quarters, as far as the budget allows. Done with `true` when
/// all is archived, `false` when it stopped at the budget.
#[derive(Debug)]
pub struct Archive {
    now: Millis,
    cutoff: Millis,
    /// The round trips left.
    pub budget: Budget,
    /// Sessions archived and verified.
    pub archived: u32,
    /// Manifests written.
    pub manifests: u32,
    /// Sessions left for later because D1 does not hold all their points
    /// yet (a flush still pending).
    pub deferred: u32,
    /// Sessions left unarchived because reading them takes more round
    /// trips than a whole run has.
    pub oversized: u32,
    // The round trips of a whole run.
    max_calls: u32,
    ex: Existing,
    tables: Vec<String>,
    after: String,
    // Listed sessions: id and the pages of points to read.
    listed: VecDeque<(String, u64)>,
    quarters: VecDeque<String>,
    state: State,
    answer: Option<Answer>,
}

impl Archive {
    /// The archive step at `now`: sessions started before `cutoff` (the
    /// first millisecond of the first month not old enough) are cold.
    /// `max_calls` is a whole run's budget: a session that needs more is
    /// passed over, so it does not hold back the sessions after it.
    pub fn new(now: Millis, cutoff: Millis, budget: Budget, max_calls: u32) -> Archive {
        Archive {
            now,
            cutoff,
            budget,
            archived: 0,
            manifests: 0,
            deferred: 0,
            oversized: 0,
            max_calls,
            ex: Existing::default(),
            tables: Vec::new(),
            after: String::new(),
            listed: VecDeque::new(),
            quarters: VecDeque::new(),
            state: State::Start,
            answer: None,
        }
    }

    // One statement per table (D1 allows only a few terms in a compound
    // SELECT), one batch; the first 20 ids of all.
    fn list(&self) -> Vec<Statement> {
        self.tables
            .iter()
            .map(|t| {
                Statement::new(
                    format!(
                        "SELECT id, point_count FROM {t} WHERE started_at < ?1 AND status = 'ended' \
                         AND id > ?2 AND id NOT IN (SELECT session_id FROM archives WHERE verified = 1) \
                         ORDER BY id LIMIT 20"
                    ),
                    vec![Value::from(rfc3339(self.cutoff)), Value::from(self.after.as_str())],
                )
            })
            .collect()
    }
}

impl Driver for Archive {
    type Output = bool;

    fn poll(&mut self) -> Result<Poll<bool>, LifecycleError> {
        loop {
            let answer = self.answer.take();
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    return ask(
                        &mut self.state,
                        State::Existing,
                        one(Statement::new(LIST_PARTITIONS, vec![])),
                    );
                }
                State::Existing => {
                    self.ex = Existing::from_rows(&first_rows(answer)?)?;
                    let cutoff = self.cutoff;
                    self.tables = self
                        .ex
                        .spans(TableKind::Sessions)
                        .filter(|s| s.start_ms() < cutoff)
                        .map(|s| TableKind::Sessions.table(s))
                        .collect();
                    self.state = if self.tables.is_empty() {
                        State::Manifests
                    } else {
                        State::List
                    };
                }
                State::List => {
                    let list = self.list();
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    return ask(&mut self.state, State::Listed, Io::Batch(list));
                }
                State::Listed => {
                    let mut rows: Vec<Value> = rows(answer)?.into_iter().flatten().collect();
                    rows.sort_by(|a, b| {
                        a.get("id")
                            .and_then(Value::as_str)
                            .cmp(&b.get("id").and_then(Value::as_str))
                    });
                    rows.dedup_by(|a, b| a.get("id") == b.get("id"));
                    rows.truncate(LIST);
                    if rows.is_empty() {
                        self.state = State::Manifests;
                        continue;
                    }
                    self.listed.clear();
                    for r in &rows {
                        let pages = count(r, "point_count")? / MAX_READ_LIMIT as u64 + 1;
                        self.listed.push_back((col_str(r, "id")?, pages));
                    }
                    self.state = State::NextSession;
                }
                State::NextSession => {
                    let Some((id, pages)) = self.listed.pop_front() else {
                        self.state = State::List;
                        continue;
                    };
                    let need = u32::try_from(pages).unwrap_or(u32::MAX).saturating_add(5);
                    if need > self.max_calls {
                        // No run could read it whole; the sessions after
                        // it go on.
                        self.oversized += 1;
                        self.after = id;
                        self.state = State::NextSession;
                        continue;
                    }
                    if !self.budget.take(need) {
                        return Ok(Poll::Done(false));
                    }
                    self.state =
                        State::One(Box::new(ArchiveOne::new(id, self.ex.clone(), self.now)));
                }
                State::One(mut one) => {
                    if let Some(a) = answer {
                        one.handle(a);
                    }
                    match one.poll()? {
                        Poll::Io(io) => return ask(&mut self.state, State::One(one), io),
                        Poll::Done(outcome) => {
                            match outcome {
                                Outcome::Archived => self.archived += 1,
                                Outcome::Deferred => self.deferred += 1,
                                Outcome::Skipped => {}
                            }
                            self.after = one.id;
                            self.state = State::NextSession;
                        }
                    }
                }
                State::Manifests => {
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    return ask(&mut self.state,
                        State::Quarters,
                        one(Statement::new(
                            "SELECT DISTINCT quarter FROM archives WHERE verified = 1 AND manifested = 0 \
                             ORDER BY quarter LIMIT 10",
                            vec![],
                        )),
                    );
                }
                State::Quarters => {
                    let quarters = first_rows(answer)?;
                    if quarters.is_empty() {
                        return Ok(Poll::Done(true));
                    }
                    self.quarters = quarters
                        .iter()
                        .map(|q| col_str(q, "quarter"))
                        .collect::<Result<_, _>>()?;
                    self.state = State::NextQuarter;
                }
                State::NextQuarter => {
                    let Some(q) = self.quarters.pop_front() else {
                        self.state = State::Manifests;
                        continue;
                    };
                    if !self.budget.take(3) {
                        return Ok(Poll::Done(false));
                    }
                    let read = Statement::new(
                        "SELECT session_id, key, points, bytes, sha256 FROM archives \
                         WHERE quarter = ?1 AND verified = 1 ORDER BY session_id",
                        vec![Value::from(q.as_str())],
                    );
                    return ask(&mut self.state, State::QuarterRows(q), one(read));
                }
                State::QuarterRows(q) => {
                    let objects = first_rows(answer)?
                        .iter()
                        .map(|r| {
                            let points = count(r, "points")?;
                            Ok(ManifestEntry {
                                key: col_str(r, "key")?,
                                session_id: col_str(r, "session_id")?,
                                points,
                                rows: points + 1,
                                bytes: count(r, "bytes")?,
                                sha256: col_str(r, "sha256")?,
                            })
                        })
                        .collect::<Result<Vec<_>, LifecycleError>>()?;
                    let ids: Vec<&str> = objects.iter().map(|o| o.session_id.as_str()).collect();
                    let ids = Value::from(ids).to_string();
                    let manifest = Manifest::new(&q, objects);
                    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
                    let key = manifest_key(&q);
                    return ask(
                        &mut self.state,
                        State::ManifestPut(q, ids),
                        Io::Put { key, bytes },
                    );
                }
                State::ManifestPut(q, ids) => {
                    stored(answer)?;
                    return ask(
                        &mut self.state,
                        State::Manifested,
                        one(Statement::new(
                            "UPDATE archives SET manifested = 1 WHERE quarter = ?1 \
                             AND session_id IN (SELECT value FROM json_each(?2))",
                            vec![Value::from(q.as_str()), Value::from(ids)],
                        )),
                    );
                }
                State::Manifested => {
                    rows(answer)?;
                    self.manifests += 1;
                    self.state = State::NextQuarter;
                }
                State::Done => return Err(finished()),
            }
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

// What became of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Archived,
    Deferred,
    // Not a session that can be archived (no v7 id, no row).
    Skipped,
}

#[derive(Debug)]
enum OneState {
    Start,
    Found,
    Points(Box<(SessionSummary, AllPoints)>),
    Put(String, ArchiveObject),
    Recorded(String, ArchiveObject),
    ReadBack(String, ArchiveObject),
    Verified,
    Done,
}

// Archives one session: read, write, record, read back, verify.
#[derive(Debug)]
struct ArchiveOne {
    id: String,
    ex: Existing,
    now: Millis,
    state: OneState,
    answer: Option<Answer>,
}

impl ArchiveOne {
    fn new(id: String, ex: Existing, now: Millis) -> ArchiveOne {
        ArchiveOne {
            id,
            ex,
            now,
            state: OneState::Start,
            answer: None,
        }
    }
}

impl Driver for ArchiveOne {
    type Output = Outcome;

    fn poll(&mut self) -> Result<Poll<Outcome>, LifecycleError> {
        loop {
            let answer = self.answer.take();
            match std::mem::replace(&mut self.state, OneState::Done) {
                OneState::Start => {
                    let Some(find) = find_session(&self.id, &self.ex) else {
                        // Not a v7 id: its partition cannot be told, so it
                        // is never cold.
                        return Ok(Poll::Done(Outcome::Skipped));
                    };
                    let batch = vec![point_months(&self.id), find];
                    return ask(&mut self.state, OneState::Found, Io::Batch(batch));
                }
                OneState::Found => {
                    let rows = rows(answer)?;
                    let none = Vec::new();
                    let months = parse_point_months(rows.first().unwrap_or(&none))?;
                    let Some(session) = parse_found_session(rows.get(1).unwrap_or(&none))? else {
                        return Ok(Poll::Done(Outcome::Skipped));
                    };
                    let all = AllPoints::new(&self.id, months, self.ex.clone());
                    self.state = OneState::Points(Box::new((session, all)));
                }
                OneState::Points(mut read) => {
                    if let Some(a) = answer {
                        read.1.handle(a);
                    }
                    let points = match read.1.poll()? {
                        Poll::Io(io) => return ask(&mut self.state, OneState::Points(read), io),
                        Poll::Done(points) => points,
                    };
                    let session = read.0;
                    if points.len() as u64 != session.point_count {
                        return Ok(Poll::Done(Outcome::Deferred));
                    }
                    let key = archive_key(&self.id, v7_time(&self.id).unwrap_or(0));
                    let obj = encode(&session, &points);
                    let put = Io::Put {
                        key: key.clone(),
                        bytes: obj.bytes.clone(),
                    };
                    return ask(&mut self.state, OneState::Put(key, obj), put);
                }
                OneState::Put(key, obj) => {
                    stored(answer)?;
                    let started = v7_time(&self.id).unwrap_or(0);
                    let record = Statement::new(
                        // `pruned` is never lowered: a run that overlaps
                        // one that pruned this session meanwhile must not
                        // send reads back to D1. An object written again
                        // with the same bytes keeps its verification and
                        // manifest; new bytes need both again.
                        "INSERT INTO archives (session_id, key, quarter, started_ms, points, bytes, \
                         sha256, verified, pruned, manifested, archived_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, 0, ?8) \
                         ON CONFLICT (session_id) DO UPDATE SET key = excluded.key, \
                         quarter = excluded.quarter, started_ms = excluded.started_ms, \
                         points = excluded.points, bytes = excluded.bytes, \
                         verified = CASE WHEN archives.sha256 = excluded.sha256 \
                         THEN archives.verified ELSE 0 END, \
                         manifested = CASE WHEN archives.sha256 = excluded.sha256 \
                         THEN archives.manifested ELSE 0 END, \
                         sha256 = excluded.sha256, archived_at = excluded.archived_at",
                        vec![
                            Value::from(self.id.as_str()),
                            Value::from(key.as_str()),
                            Value::from(quarter(started)),
                            Value::from(started),
                            Value::from(obj.points),
                            Value::from(obj.bytes.len() as u64),
                            Value::from(obj.sha256.as_str()),
                            Value::from(self.now),
                        ],
                    );
                    return ask(&mut self.state, OneState::Recorded(key, obj), one(record));
                }
                OneState::Recorded(key, obj) => {
                    rows(answer)?;
                    let get = Io::Get(key.clone());
                    return ask(&mut self.state, OneState::ReadBack(key, obj), get);
                }
                OneState::ReadBack(key, obj) => {
                    let back = object(answer)?.unwrap_or_default();
                    if let Err(detail) = verify(&back, obj.points, &obj.sha256) {
                        return Err(LifecycleError::Object { key, detail });
                    }
                    let mark = Statement::new(
                        "UPDATE archives SET verified = 1 WHERE session_id = ?1 AND sha256 = ?2",
                        vec![
                            Value::from(self.id.as_str()),
                            Value::from(obj.sha256.as_str()),
                        ],
                    );
                    return ask(&mut self.state, OneState::Verified, one(mark));
                }
                OneState::Verified => {
                    rows(answer)?;
                    return Ok(Poll::Done(Outcome::Archived));
                }
                OneState::Done => return Err(finished()),
            }
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
