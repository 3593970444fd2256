//! What the lifecycle work (partition moves, archives, pruning, exports,
//! retired-session reads) needs from the platform, as requests a driver
//! emits: run a D1 batch, get and put an R2 object ([`Io`], answered by an
//! [`Answer`]). The drivers decide every statement and key and never wait;
//! the Worker's adapter (`crate::lifecycle` of the Worker crate) carries
//! their requests out in one small loop, and native tests run the same
//! loop ([`drive`]) on SQLite and a map.

use serde_json::Value;
use thiserror::Error;

use crate::data::partition::{RowError, Statement};

/// A failure of the lifecycle work. None is the client's fault: the edge
/// maps `Store` to 503 `unavailable` and the rest to 500 `internal`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LifecycleError {
    /// D1 or R2 failed (the message is for the log).
    #[error("storage: {0}")]
    Store(String),
    /// A D1 row did not have the expected shape.
    #[error(transparent)]
    Row(#[from] RowError),
    /// An archive or export object is missing or damaged.
    #[error("object {key}: {detail}")]
    Object {
        /// The R2 key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// A request a driver needs carried out: one D1 or R2 round trip. A batch
/// runs as one transaction (all or nothing), as D1's `batch()` does.
// New kinds of request (R2 multipart uploads, ranged reads) are new
// variants with their own `Answer`; a carrier that meets one it does not
// know is a build error, not a silent skip.
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Run these statements as one D1 batch; answered by [`Answer::Rows`].
    Batch(Vec<Statement>),
    /// Read the R2 object at this key; answered by [`Answer::Object`].
    Get(String),
    /// Write (replace) the R2 object at `key`; answered by [`Answer::Stored`].
    Put {
        /// The R2 key.
        key: String,
        /// The whole object.
        bytes: Vec<u8>,
    },
    /// Delete the R2 objects at these keys (missing ones are no error);
    /// answered by [`Answer::Deleted`].
    Delete(Vec<String>),
}

/// The answer to an [`Io`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The rows of each statement of a batch, in order.
    Rows(Vec<Vec<Value>>),
    /// The object read, `None` when there is none.
    Object(Option<Vec<u8>>),
    /// The object is written.
    Stored,
    /// The objects are deleted.
    Deleted,
}

impl Answer {
    fn name(&self) -> &'static str {
        match self {
            Answer::Rows(_) => "rows",
            Answer::Object(_) => "an object",
            Answer::Stored => "stored",
            Answer::Deleted => "deleted",
        }
    }
}

/// What a driver's [`Driver::poll`] gives: a request to carry out, or its
/// output once it is done.
#[derive(Debug)]
pub enum Poll<T> {
    /// Carry this out and hand the answer to [`Driver::handle`].
    Io(Io),
    /// The driver is done.
    Done(T),
}

/// A driver's step that asks for `io`: its state moves to `next`, where
/// the answer will be taken up.
pub fn ask<S, T>(state: &mut S, next: S, io: Io) -> Result<Poll<T>, LifecycleError> {
    *state = next;
    Ok(Poll::Io(io))
}

/// A lifecycle driver: a state machine that asks for one D1 or R2 round
/// trip at a time and never waits itself (quinn-proto's `poll_transmit` /
/// `handle_event`). The carrier calls [`poll`](Driver::poll); on
/// [`Poll::Io`] it carries the request out and hands the answer to
/// [`handle`](Driver::handle), then polls again. A failed request ends the
/// drive with its error (the driver is dropped): every driver keeps its
/// progress in D1, so a new one goes on from there.
pub trait Driver {
    /// What the driver answers when done.
    type Output;
    /// The next request, or the output.
    fn poll(&mut self) -> Result<Poll<Self::Output>, LifecycleError>;
    /// The answer to the request the last `poll` gave.
    fn handle(&mut self, answer: Answer);
}

/// Runs a driver to its end with a synchronous carrier (native tests, and
/// anything else that can answer at once); the Worker's adapter has the
/// same loop with an `await` in it.
pub fn drive<D: Driver>(
    mut driver: D,
    mut carry: impl FnMut(Io) -> Result<Answer, LifecycleError>,
) -> Result<D::Output, LifecycleError> {
    loop {
        match driver.poll()? {
            Poll::Done(out) => return Ok(out),
            Poll::Io(io) => {
                let answer = carry(io)?;
                driver.handle(answer);
            }
        }
    }
}

/// The answer a driver waits for, which must be there and be rows: the
/// rows of each statement.
pub fn rows(answer: Option<Answer>) -> Result<Vec<Vec<Value>>, LifecycleError> {
    match answer {
        Some(Answer::Rows(r)) => Ok(r),
        other => Err(mismatch("rows", other)),
    }
}

/// The rows of a one-statement batch.
pub fn first_rows(answer: Option<Answer>) -> Result<Vec<Value>, LifecycleError> {
    Ok(rows(answer)?.into_iter().next().unwrap_or_default())
}

/// The answer to a get: the object, `None` when there is none.
pub fn object(answer: Option<Answer>) -> Result<Option<Vec<u8>>, LifecycleError> {
    match answer {
        Some(Answer::Object(o)) => Ok(o),
        other => Err(mismatch("an object", other)),
    }
}

/// The answer to a put.
pub fn stored(answer: Option<Answer>) -> Result<(), LifecycleError> {
    match answer {
        Some(Answer::Stored) => Ok(()),
        other => Err(mismatch("stored", other)),
    }
}

/// That the objects of an [`Io::Delete`] are gone.
pub fn deleted(answer: Option<Answer>) -> Result<(), LifecycleError> {
    match answer {
        Some(Answer::Deleted) => Ok(()),
        other => Err(mismatch("deleted", other)),
    }
}

// A carrier that answered the wrong request (or a driver polled without
// its answer) is a bug in the adapter; it fails the run like a storage
// error so the next run starts afresh.
fn mismatch(wanted: &str, got: Option<Answer>) -> LifecycleError {
    LifecycleError::Store(format!(
        "wanted {wanted}, got {}",
        got.as_ref().map_or("no answer", Answer::name)
    ))
}

/// Polling a driver that is already done (or in the middle of a step it
/// lost) is a bug of its carrier; it fails the drive.
pub(crate) fn finished() -> LifecycleError {
    LifecycleError::Store("polled after it was done".into())
}

/// A one-statement batch.
pub fn one(st: Statement) -> Io {
    Io::Batch(vec![st])
}

/// A bound on the round trips of one run, so a run stays within the
/// runtime's limits (subrequests, wall time) and stops early instead;
/// the next run at the same time goes on from the recorded progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: u32,
}

impl Budget {
    /// A budget of `calls` round trips.
    pub fn new(calls: u32) -> Budget {
        Budget { left: calls }
    }

    /// Takes `n` calls; `false` (and nothing taken) when fewer are left.
    pub fn take(&mut self, n: u32) -> bool {
        if self.left >= n {
            self.left -= n;
            true
        } else {
            false
        }
    }

    /// Whether at least `n` calls are left.
    pub fn has(&self, n: u32) -> bool {
        self.left >= n
    }
}

/// The test backend: D1 as in-memory SQLite (statements run as
/// `partition::testdb` does, but a failing batch rolls back and answers an
/// error, as D1 does), R2 as a map, and a kill switch that fails the n-th
/// call, before or after doing its work.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod mem {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use rusqlite::Connection;
    use serde_json::{Map, Value};

    use super::{Answer, Driver, Io, LifecycleError};
    use crate::data::partition::Statement;

    /// When the kill switch trips.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kill {
        /// The call fails without doing anything.
        Before,
        /// The call does its work, then reports a failure (the answer was
        /// lost).
        After,
    }

    /// In-memory D1 and R2.
    pub struct Mem {
        pub db: Connection,
        pub blobs: RefCell<BTreeMap<String, Vec<u8>>>,
        pub calls: Cell<u64>,
        pub kill: Cell<Option<(u64, Kill)>>,
    }

    impl Mem {
        /// All migrations applied, no objects.
        pub fn new() -> Mem {
            let db = crate::data::partition::testdb::open();
            db.execute_batch(include_str!("../../../migrations/0003_lifecycle.sql"))
                .expect("0003");
            Mem {
                db,
                blobs: RefCell::new(BTreeMap::new()),
                calls: Cell::new(0),
                kill: Cell::new(None),
            }
        }

        // Counts the call; the kill mode when this is the doomed one.
        fn tick(&self) -> Option<Kill> {
            let n = self.calls.get();
            self.calls.set(n + 1);
            match self.kill.get() {
                Some((at, k)) if at == n => Some(k),
                _ => None,
            }
        }

        /// Every table's rows (partition tables included), sorted, as text:
        /// what "the same end state" compares.
        pub fn dump(&self) -> String {
            let mut names: Vec<String> = self
                .db
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .expect("prepare")
                .query_map([], |r| r.get(0))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect();
            names.retain(|n| !n.starts_with("sqlite_"));
            let mut out = String::new();
            for n in names {
                let rows = run(
                    &self.db,
                    &Statement::new(format!("SELECT * FROM {n}"), vec![]),
                )
                .expect("dump");
                let mut lines: Vec<String> = rows.iter().map(Value::to_string).collect();
                lines.sort();
                out.push_str(&format!("{n}:\n{}\n", lines.join("\n")));
            }
            for (k, v) in self.blobs.borrow().iter() {
                out.push_str(&format!("blob {k}: {} bytes\n", v.len()));
            }
            out
        }
    }

    /// Runs one statement as D1 would (the shared test runner).
    pub fn run(db: &Connection, st: &Statement) -> Result<Vec<Value>, String> {
        crate::data::partition::testdb::try_run(db, st)
    }

    fn killed() -> LifecycleError {
        LifecycleError::Store("killed".into())
    }

    impl Mem {
        /// Carries out one request, as D1 and R2 would (the kill switch
        /// counts every call).
        pub fn call(&self, io: Io) -> Result<Answer, LifecycleError> {
            match io {
                Io::Batch(statements) => self.batch(&statements).map(Answer::Rows),
                Io::Get(key) => self.get(&key).map(Answer::Object),
                Io::Put { key, bytes } => self.put(&key, bytes).map(|()| Answer::Stored),
                Io::Delete(keys) => self.delete(&keys).map(|()| Answer::Deleted),
            }
        }

        /// Runs the statements as one batch.
        pub fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Value>>, LifecycleError> {
            let kill = self.tick();
            if kill == Some(Kill::Before) {
                return Err(killed());
            }
            self.db.execute_batch("BEGIN").expect("begin");
            let mut out = Vec::new();
            for st in statements {
                match run(&self.db, st) {
                    Ok(rows) => out.push(rows),
                    Err(e) => {
                        self.db.execute_batch("ROLLBACK").expect("rollback");
                        return Err(LifecycleError::Store(e));
                    }
                }
            }
            self.db.execute_batch("COMMIT").expect("commit");
            match kill {
                Some(_) => Err(killed()),
                None => Ok(out),
            }
        }

        /// Runs one statement; its rows.
        pub fn query(&self, st: Statement) -> Result<Vec<Value>, LifecycleError> {
            Ok(self.batch(&[st])?.into_iter().next().unwrap_or_default())
        }

        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LifecycleError> {
            if self.tick().is_some() {
                return Err(killed());
            }
            Ok(self.blobs.borrow().get(key).cloned())
        }

        fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LifecycleError> {
            let kill = self.tick();
            if kill == Some(Kill::Before) {
                return Err(killed());
            }
            self.blobs.borrow_mut().insert(key.to_owned(), bytes);
            match kill {
                Some(_) => Err(killed()),
                None => Ok(()),
            }
        }

        fn delete(&self, keys: &[String]) -> Result<(), LifecycleError> {
            let kill = self.tick();
            if kill == Some(Kill::Before) {
                return Err(killed());
            }
            let mut blobs = self.blobs.borrow_mut();
            for k in keys {
                blobs.remove(k);
            }
            match kill {
                Some(_) => Err(killed()),
                None => Ok(()),
            }
        }

        /// Runs a driver to its end against this backend.
        pub fn drive<D: Driver>(&self, driver: D) -> Result<D::Output, LifecycleError> {
            super::drive(driver, |io| self.call(io))
        }
    }

    /// Writes a session and its points (seqs 1.., one per `ts`, authored
    /// by the owner, value = seq) as a flush at `write_now` would, with the
    /// history layout (members, point months, roll-up marks).
    pub fn seed(
        m: &Mem,
        id: &str,
        owner: &str,
        members: &[String],
        ts: &[crate::time::Millis],
        ended: bool,
        write_now: crate::time::Millis,
    ) {
        use crate::data::history::{write_points, write_session};
        use crate::time::rfc3339;
        let started = crate::data::history::v7_time(id).expect("v7 id");
        let points: Vec<(crate::time::Millis, String)> = ts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = serde_json::json!({"seq": i + 1, "userId": owner, "kind": "k",
                    "value": i + 1, "data": {"i": i}, "ts": t});
                (*t, p.to_string())
            })
            .collect();
        let rec = sesh_protocol::SessionSummary {
            id: id.to_owned(),
            owner_id: owner.to_owned(),
            title: Some("t".to_owned()),
            members: members.to_vec(),
            viewers: vec![],
            metadata: Map::new(),
            status: if ended {
                sesh_protocol::SessionStatus::Ended
            } else {
                sesh_protocol::SessionStatus::Active
            },
            started_at: rfc3339(started),
            ended_at: ended.then(|| rfc3339(started + 1000)),
            point_count: ts.len() as u64,
            last_seq: ts.len() as u64,
            stats: Default::default(),
        };
        let mut stmts = Vec::new();
        for w in write_points(id, &points, write_now)
            .into_iter()
            .chain([write_session(&rec, write_now).expect("an RFC 3339 start")])
        {
            stmts.extend(w.ensure.statements);
            stmts.extend(w.statements);
        }
        crate::data::partition::testdb::batch(&m.db, &stmts);
    }

    /// A v7 session id created at `ms`, the same on every call with the
    /// same `ms` and `n`.
    pub fn sid(ms: crate::time::Millis, n: u16) -> String {
        let hex = format!("{:012x}", ms);
        format!("{}-{}-7000-8000-{:012x}", &hex[..8], &hex[8..12], n)
    }
}
