//! The reads of a retired session (its live object has no storage left):
//! its points and stats from D1 or, once its D1 points are pruned, from
//! its archive; and the whole-session read the archive step uses. Each is
//! a [`Driver`].

use std::collections::BTreeMap;

use serde_json::Value;
use sesh_protocol::limits::MAX_READ_LIMIT;
use sesh_protocol::{KindStats, PointsPage, StoredPoint};

use crate::data::history::{
    find_session, merge_points, merge_stats, parse_found_session, parse_point_months, point_months,
    points_page, read_points, stats_statements,
};
use crate::data::partition::{col_int, col_str, Existing, Month, Statement, LIST_PARTITIONS};
use crate::lifecycle::format::{decode, stats_of, Decoded};
use crate::lifecycle::store::{finished, object, rows, Answer, Driver, Io, LifecycleError, Poll};

/// The archive state of a session: `(key, pruned)` when it has a verified
/// archive.
pub fn archive_state(session_id: &str) -> Statement {
    Statement::new(
        "SELECT key, points, sha256, pruned FROM archives WHERE session_id = ?1 AND verified = 1",
        vec![Value::from(session_id)],
    )
}

/// Where a session's points are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// D1, from the partitions of these months.
    D1(Vec<Month>),
    /// The archive object at this key (its D1 points are pruned).
    Archive(String),
}

/// The source from the rows of [`point_months`] and [`archive_state`].
pub fn source(months: &[Value], archive: &[Value]) -> Result<Source, LifecycleError> {
    if let Some(a) = archive.first() {
        if col_int(a, "pruned")? >= 1 {
            return Ok(Source::Archive(col_str(a, "key")?));
        }
    }
    Ok(Source::D1(parse_point_months(months)?))
}

/// The archive at `key` from the answer to its get; a missing one is an
/// error (it was verified before anything pointed at it).
pub fn decoded(key: &str, answer: Option<Answer>) -> Result<Decoded, LifecycleError> {
    let bytes = object(answer)?.ok_or_else(|| LifecycleError::Object {
        key: key.to_owned(),
        detail: "missing".into(),
    })?;
    decode(&bytes).map_err(|detail| LifecycleError::Object {
        key: key.to_owned(),
        detail,
    })
}

// The partitions that exist and where an ended session's points are now:
// one D1 round trip.
fn locate(session_id: &str) -> Io {
    Io::Batch(vec![
        Statement::new(LIST_PARTITIONS, vec![]),
        point_months(session_id),
        archive_state(session_id),
    ])
}

fn located(answer: Option<Answer>) -> Result<(Existing, Source), LifecycleError> {
    let first = rows(answer)?;
    let none = Vec::new();
    let at = |i: usize| first.get(i).unwrap_or(&none);
    let ex = Existing::from_rows(at(0))?;
    Ok((ex, source(at(1), at(2))?))
}

#[derive(Debug)]
enum Read {
    Start,
    Located,
    Archive(String),
    D1,
    Done,
}

/// A page of an ended session's points from D1 or, once pruned, from its
/// archive: the answer of `GET /v1/sessions/{id}/points` for a session
/// whose live object has no storage. Done with `None`: no such session in
/// D1 (404). Two D1 round trips, or one and an R2 read.
#[derive(Debug)]
pub struct EndedPoints {
    session_id: String,
    after_seq: u64,
    limit: u64,
    state: Read,
    answer: Option<Answer>,
}

impl EndedPoints {
    /// The page of `session_id`'s points after `after_seq`, at most
    /// `limit` (clamped to the API's bounds).
    pub fn new(session_id: &str, after_seq: u64, limit: u64) -> EndedPoints {
        EndedPoints {
            session_id: session_id.to_owned(),
            after_seq,
            limit: limit.clamp(1, MAX_READ_LIMIT as u64),
            state: Read::Start,
            answer: None,
        }
    }
}

impl Driver for EndedPoints {
    type Output = Option<PointsPage>;

    fn poll(&mut self) -> Result<Poll<Option<PointsPage>>, LifecycleError> {
        let answer = self.answer.take();
        match std::mem::replace(&mut self.state, Read::Done) {
            Read::Start => {
                self.state = Read::Located;
                Ok(Poll::Io(locate(&self.session_id)))
            }
            Read::Located => match located(answer)? {
                (_, Source::Archive(key)) => {
                    self.state = Read::Archive(key.clone());
                    Ok(Poll::Io(Io::Get(key)))
                }
                (ex, Source::D1(months)) => {
                    let Some(find) = find_session(&self.session_id, &ex) else {
                        return Ok(Poll::Done(None));
                    };
                    let mut batch = vec![find];
                    batch.extend(read_points(
                        &self.session_id,
                        self.after_seq,
                        self.limit as u32,
                        &months,
                        &ex,
                    ));
                    self.state = Read::D1;
                    Ok(Poll::Io(Io::Batch(batch)))
                }
            },
            Read::Archive(key) => Ok(Poll::Done(Some(
                decoded(&key, answer)?.page(self.after_seq, self.limit),
            ))),
            Read::D1 => {
                let rows = rows(answer)?;
                let Some(session) = parse_found_session(rows.first().map_or(&[], Vec::as_slice))?
                else {
                    return Ok(Poll::Done(None));
                };
                let points = merge_points(rows.get(1..).unwrap_or(&[]), self.limit);
                Ok(Poll::Done(Some(points_page(&points, session.last_seq)?)))
            }
            Read::Done => Err(finished()),
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

/// The `stats` of an ended session whose live object has no storage (it
/// kept them): from a `GROUP BY` over its points in D1 or, once they are
/// pruned, from its archive. Two D1 round trips, or one and an R2 read.
#[derive(Debug)]
pub struct EndedStats {
    session_id: String,
    state: Read,
    answer: Option<Answer>,
}

impl EndedStats {
    /// The stats of `session_id`.
    pub fn new(session_id: &str) -> EndedStats {
        EndedStats {
            session_id: session_id.to_owned(),
            state: Read::Start,
            answer: None,
        }
    }
}

impl Driver for EndedStats {
    type Output = BTreeMap<String, KindStats>;

    fn poll(&mut self) -> Result<Poll<Self::Output>, LifecycleError> {
        let answer = self.answer.take();
        match std::mem::replace(&mut self.state, Read::Done) {
            Read::Start => {
                self.state = Read::Located;
                Ok(Poll::Io(locate(&self.session_id)))
            }
            Read::Located => match located(answer)? {
                (_, Source::Archive(key)) => {
                    self.state = Read::Archive(key.clone());
                    Ok(Poll::Io(Io::Get(key)))
                }
                (ex, Source::D1(months)) => {
                    let stmts = stats_statements(&self.session_id, &months, &ex);
                    if stmts.is_empty() {
                        return Ok(Poll::Done(BTreeMap::new()));
                    }
                    self.state = Read::D1;
                    Ok(Poll::Io(Io::Batch(stmts)))
                }
            },
            Read::Archive(key) => Ok(Poll::Done(stats_of(&decoded(&key, answer)?.points))),
            Read::D1 => Ok(Poll::Done(merge_stats(&rows(answer)?)?)),
            Read::Done => Err(finished()),
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

/// All of a session's points from D1, a page per round trip (the archive
/// step's read).
#[derive(Debug)]
pub struct AllPoints {
    session_id: String,
    months: Vec<Month>,
    ex: Existing,
    out: Vec<StoredPoint>,
    waiting: bool,
    answer: Option<Answer>,
}

impl AllPoints {
    /// Every point of `session_id`, from the partitions of `months`.
    pub fn new(session_id: &str, months: Vec<Month>, ex: Existing) -> AllPoints {
        AllPoints {
            session_id: session_id.to_owned(),
            months,
            ex,
            out: Vec::new(),
            waiting: false,
            answer: None,
        }
    }
}

impl Driver for AllPoints {
    type Output = Vec<StoredPoint>;

    fn poll(&mut self) -> Result<Poll<Vec<StoredPoint>>, LifecycleError> {
        if self.waiting {
            self.waiting = false;
            let rows = rows(self.answer.take())?;
            let page = points_page(&merge_points(&rows, MAX_READ_LIMIT as u64), 0)?;
            let n = page.points.len();
            self.out.extend(page.points);
            if n < MAX_READ_LIMIT {
                return Ok(Poll::Done(std::mem::take(&mut self.out)));
            }
        }
        let after = self.out.last().map_or(0, |p| p.seq);
        let stmts = read_points(
            &self.session_id,
            after,
            MAX_READ_LIMIT as u32,
            &self.months,
            &self.ex,
        );
        if stmts.is_empty() {
            return Ok(Poll::Done(std::mem::take(&mut self.out)));
        }
        self.waiting = true;
        Ok(Poll::Io(Io::Batch(stmts)))
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}
