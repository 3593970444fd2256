//! The session object's SQLite glue: the schema and its migrations run,
//! the wake-up read that rebuilds the core, and the writes the core
//! decides (points, record, units, stats, outbox entries, the D1
//! watermark), each bound from the statements of
//! `sesh_core::session::storage`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use sesh_protocol::KindStats;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{SqlStorage, SqlStorageValue};

use super::ActiveSessionDO;
use crate::edge::http::internal;
use crate::error::ApiError;
use crate::time::Millis;
use sesh_core::session::storage;
use sesh_core::session::{
    point_frame, Checkpoint, EntryId, FlushBatch, IdLookup, Meta, PresenceNote, Restored,
    SettleNote, Settlement, Units, Write,
};

#[wasm_bindgen]
extern "C" {
    /// The object's `DurableObjectStorage`, for the one method `worker`
    /// does not bind.
    #[wasm_bindgen(extends = js_sys::Object)]
    type TxStorage;

    // `storage.transactionSync(fn)`: runs `fn` as one SQLite transaction,
    // rolled back if it throws (DO SQL refuses BEGIN and SAVEPOINT).
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(this: &TxStorage, work: &js_sys::Function) -> Result<JsValue, JsValue>;
}

/// One statement with its parameters.
pub(super) type Stmt = (&'static str, Vec<SqlStorageValue>);

#[derive(Deserialize)]
struct SessionRow {
    meta: String,
    meta_version: i64,
    flushed_meta_version: i64,
    flushed_seq: i64,
}

#[derive(Deserialize)]
struct UnitsRow {
    day: i64,
    held: i64,
    used: i64,
}

#[derive(Deserialize)]
struct StatsRow {
    kind: String,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

#[derive(Deserialize)]
struct MarkRow {
    through_seq: i64,
}

#[derive(Deserialize)]
struct TailRow {
    kind: String,
    value: f64,
}

#[derive(Deserialize)]
pub(super) struct BodyRow {
    pub ts: i64,
    pub body: String,
}

#[derive(Deserialize)]
struct SeqBodyRow {
    seq: i64,
    body: String,
}

#[derive(Deserialize)]
struct SeqRow {
    seq: i64,
}

#[derive(Deserialize)]
struct PresenceRow {
    id: i64,
    user_id: String,
    conn_id: String,
    online: i64,
}

#[derive(Deserialize)]
struct SettleRow {
    id: i64,
    owner: String,
    plan: String,
    day: i64,
    used: i64,
    returned: i64,
}

#[derive(Deserialize)]
struct LastIdRow {
    name: String,
    seq: i64,
}

#[derive(Deserialize)]
struct MaxRow {
    m: Option<i64>,
}

/// A seq as SQLite takes it: values past `i64::MAX` clamp rather than wrap.
pub(super) fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn rows<T: for<'de> Deserialize<'de>>(
    sql: &SqlStorage,
    q: &str,
    params: Vec<SqlStorageValue>,
) -> Result<Vec<T>, ApiError> {
    sql.exec(q, params)
        .and_then(|c| c.to_array())
        .map_err(internal)
}

/// Client ids looked up through the `(user_id, client_id)` index.
pub(super) struct SqlIds<'a>(pub &'a SqlStorage);

impl IdLookup for SqlIds<'_> {
    fn seq_of(&mut self, user: &str, id: &str) -> Option<u64> {
        let q = "SELECT seq FROM points WHERE user_id = ? AND client_id = ? LIMIT 1";
        let found: Vec<SeqRow> = rows(self.0, q, vec![user.into(), id.into()]).ok()?;
        found.first().map(|r| r.seq as u64)
    }
}

impl ActiveSessionDO {
    /// Creates the tables (and migrates storage written before the
    /// `user_id` column, the trigger columns and the stats checkpoint)
    /// when they are missing.
    pub(super) fn prepare_schema(&self) -> Result<(), ApiError> {
        self.sql.exec(storage::SCHEMA, None).map_err(internal)?;
        if self.sql.exec(storage::HAS_USER_ID, None).is_err() {
            self.sql
                .exec(storage::MIGRATE_USER_ID, None)
                .map_err(internal)?;
        }
        if self.sql.exec(storage::HAS_KIND, None).is_err() {
            self.sql
                .exec(storage::MIGRATE_KIND, None)
                .map_err(internal)?;
        }
        self.sql
            .exec(storage::INDEX_AND_TRIGGERS, None)
            .map_err(internal)?;
        Ok(())
    }

    /// What storage holds of the session, if one lives here: its record
    /// and what rebuilds the core (sockets aside). Reads a bounded number
    /// of rows whatever the number of points.
    pub(super) fn read_session(&self) -> Result<Option<(Meta, Restored)>, ApiError> {
        // No tables: no session was ever created here, or it was retired.
        // Reading creates nothing, so a retired object stays empty.
        let q = "SELECT count(*) AS m FROM sqlite_master WHERE type = 'table' AND name = 'session'";
        let tables: Vec<MaxRow> = rows(&self.sql, q, Vec::new())?;
        if tables.first().and_then(|r| r.m).unwrap_or(0) == 0 {
            return Ok(None);
        }
        self.prepare_schema()?;
        let q =
            "SELECT meta, meta_version, flushed_meta_version, flushed_seq FROM session WHERE k = 0";
        let found: Vec<SessionRow> = rows(&self.sql, q, Vec::new())?;
        let Some(row) = found.into_iter().next() else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_str(&row.meta).map_err(internal)?;
        let last: Vec<MaxRow> = rows(&self.sql, "SELECT MAX(seq) AS m FROM points", Vec::new())?;
        let units: Vec<UnitsRow> = rows(&self.sql, storage::LOAD_UNITS, Vec::new())?;
        let stats: Vec<StatsRow> = rows(&self.sql, storage::LOAD_STATS, Vec::new())?;
        let mark: Vec<MarkRow> = rows(&self.sql, storage::LOAD_STATS_MARK, Vec::new())?;
        let stats_through = mark.first().map_or(0, |m| m.through_seq.max(0) as u64);
        // At most about `stats_every` rows: the points since the checkpoint.
        let tail: Vec<TailRow> = rows(
            &self.sql,
            storage::STATS_TAIL,
            vec![sql_seq(stats_through).into()],
        )?;
        let presence: Vec<PresenceRow> =
            rows(&self.sql, storage::LOAD_PRESENCE_OUTBOX, Vec::new())?;
        let settle: Vec<SettleRow> = rows(&self.sql, storage::LOAD_SETTLE_OUTBOX, Vec::new())?;
        // `sqlite_sequence` exists once an outbox had an entry; none is 0.
        let last_ids: Vec<LastIdRow> =
            rows(&self.sql, storage::OUTBOX_LAST_IDS, Vec::new()).unwrap_or_default();
        let last_id = |name: &str| {
            last_ids
                .iter()
                .find(|r| r.name == name)
                .map_or(0, |r| r.seq.max(0) as u64)
        };
        let restored = Restored {
            last_seq: last.first().and_then(|r| r.m).unwrap_or(0) as u64,
            flushed_seq: row.flushed_seq as u64,
            conns: Vec::new(),
            meta_version: row.meta_version as u64,
            flushed_meta_version: row.flushed_meta_version as u64,
            units: units
                .first()
                .map(|u| Units {
                    day: u.day,
                    held: u.held as u64,
                    used: u.used as u64,
                })
                .unwrap_or_default(),
            stats: stats
                .into_iter()
                .map(|s| {
                    let figures = KindStats {
                        count: s.count as u64,
                        sum: s.sum,
                        min: s.min,
                        max: s.max,
                        last: s.last,
                    };
                    (s.kind, figures)
                })
                .collect::<BTreeMap<_, _>>(),
            stats_through,
            stats_tail: tail.into_iter().map(|t| (t.kind, t.value)).collect(),
            presence_outbox: presence
                .into_iter()
                .map(|r| {
                    let note = PresenceNote {
                        user: r.user_id,
                        conn: r.conn_id,
                        online: r.online != 0,
                    };
                    (r.id as u64, note)
                })
                .collect(),
            settle_outbox: settle
                .into_iter()
                .map(|r| {
                    let settlement = Settlement {
                        day: r.day,
                        used: r.used as u64,
                        returned: r.returned as u64,
                    };
                    let note = SettleNote {
                        owner: r.owner,
                        plan: r.plan,
                        settlement,
                    };
                    (r.id as u64, note)
                })
                .collect(),
            outbox_last_ids: (last_id("presence_outbox"), last_id("settle_outbox")),
        };
        Ok(Some((meta, restored)))
    }

    /// Runs statements as one SQLite transaction: all or nothing.
    pub(super) fn atomic(&self, stmts: Vec<Stmt>) -> Result<(), ApiError> {
        let sql = self.sql.clone();
        let work = Rc::new(RefCell::new(Some(stmts)));
        let todo = Rc::clone(&work);
        let f = Closure::<dyn FnMut() -> Result<(), JsValue>>::new(move || {
            let stmts = todo.borrow_mut().take().unwrap_or_default();
            for (q, params) in stmts {
                sql.exec(q, params)
                    .map_err(|e| JsValue::from_str(&e.to_string()))?;
            }
            Ok(())
        });
        let storage = self.state.storage();
        let raw: &TxStorage = storage.as_raw().unchecked_ref();
        raw.transaction_sync(f.as_ref().unchecked_ref())
            .map(|_| ())
            .map_err(|e| ApiError::Internal(format!("storage transaction failed: {e:?}")))
    }

    /// One write of the core: its points, in one statement (the triggers
    /// spend their units and count their figures in the same statement).
    pub(super) fn store(&self, w: &Write) -> Result<(), ApiError> {
        let stmt = match &w.points[..] {
            [r] => {
                let p = &r.point;
                (
                    storage::INSERT_POINT,
                    vec![
                        sql_seq(p.seq).into(),
                        p.id.clone().into(),
                        p.ts.into(),
                        r.json.as_str().into(),
                        p.user_id.as_str().into(),
                        p.kind.as_str().into(),
                        p.value.into(),
                    ],
                )
            }
            rows => (
                storage::INSERT_POINTS,
                vec![storage::points_json(rows).into()],
            ),
        };
        #[cfg(feature = "test-faults")]
        if w.points
            .iter()
            .any(|r| r.point.kind == crate::faults::FAIL_STORE_KIND)
        {
            // Fails after the points went in, in the same transaction, so
            // the rollback is what a test sees.
            return self.atomic(vec![
                stmt,
                (
                    "INSERT INTO no_such_table_injected_fault VALUES (1)",
                    Vec::new(),
                ),
            ]);
        }
        self.sql.exec(stmt.0, stmt.1).map(|_| ()).map_err(internal)
    }

    pub(super) fn save_meta(&self, meta: &Meta, version: u64) -> Result<(), ApiError> {
        let text = serde_json::to_string(meta).map_err(internal)?;
        self.sql
            .exec(
                "INSERT INTO session (k, meta, meta_version) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET meta = excluded.meta, meta_version = excluded.meta_version",
                vec![text.into(), (version as i64).into()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Puts presence entry `id` in its outbox.
    pub(super) fn save_presence(&self, id: u64, note: &PresenceNote) -> Result<(), ApiError> {
        let params = vec![
            sql_seq(id).into(),
            note.user.as_str().into(),
            note.conn.as_str().into(),
            i64::from(note.online).into(),
        ];
        self.sql
            .exec(storage::INSERT_PRESENCE_OUTBOX, params)
            .map(|_| ())
            .map_err(internal)
    }

    /// Takes a delivered entry out of its outbox.
    pub(super) fn delete_entry(&self, id: EntryId) -> Result<(), ApiError> {
        let (q, n) = match id {
            EntryId::Presence(n) => (storage::DELETE_PRESENCE_OUTBOX, n),
            EntryId::Settle(n) => (storage::DELETE_SETTLE_OUTBOX, n),
        };
        self.sql
            .exec(q, vec![sql_seq(n).into()])
            .map(|_| ())
            .map_err(internal)
    }

    /// Notes that D1 holds everything through `batch`.
    pub(super) fn save_watermark(&self, batch: FlushBatch) -> Result<(), ApiError> {
        self.sql
            .exec(
                "UPDATE session SET flushed_seq = max(flushed_seq, ?), \
                 flushed_meta_version = max(flushed_meta_version, ?) WHERE k = 0",
                vec![sql_seq(batch.to).into(), sql_seq(batch.meta_version).into()],
            )
            .map(|_| ())
            .map_err(internal)
    }

    /// The stored points of a flush, `(ts, body)` in seq order.
    pub(super) fn flush_points(
        &self,
        batch: FlushBatch,
    ) -> Result<Vec<(Millis, String)>, ApiError> {
        if batch.from > batch.to {
            return Ok(Vec::new());
        }
        let found: Vec<BodyRow> = rows(
            &self.sql,
            "SELECT ts, body FROM points WHERE seq BETWEEN ? AND ? ORDER BY seq",
            vec![sql_seq(batch.from).into(), sql_seq(batch.to).into()],
        )?;
        Ok(found.into_iter().map(|r| (r.ts, r.body)).collect())
    }

    /// `GET .../points`: the stored bodies after `after`, already the wire
    /// form, so nothing is serialised again.
    pub(super) fn points_page(
        &self,
        after: u64,
        limit: u64,
        last_seq: u64,
    ) -> Result<String, ApiError> {
        let found: Vec<BodyRow> = rows(
            &self.sql,
            "SELECT ts, body FROM points WHERE seq > ? ORDER BY seq LIMIT ?",
            vec![sql_seq(after).into(), sql_seq(limit).into()],
        )?;
        let mut text =
            String::with_capacity(found.iter().map(|r| r.body.len() + 1).sum::<usize>() + 32);
        text.push_str("{\"points\":[");
        for (i, r) in found.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&r.body);
        }
        text.push_str(&format!("],\"lastSeq\":{last_seq}}}"));
        Ok(text)
    }

    /// Stored points with `after < seq <= through` as `point` frames, in
    /// chunks that advance by the last seq read.
    pub(super) fn replay_frames(
        &self,
        after: u64,
        through: u64,
        mut send: impl FnMut(&str),
    ) -> Result<(), ApiError> {
        let mut from = after;
        while from < through {
            let found: Vec<SeqBodyRow> = rows(
                &self.sql,
                "SELECT seq, body FROM points WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 500",
                vec![sql_seq(from).into(), sql_seq(through).into()],
            )?;
            let Some(last) = found.last() else { break };
            from = last.seq as u64;
            for r in &found {
                send(&point_frame(&r.body));
            }
        }
        Ok(())
    }
}

pub(super) fn units_stmt(u: Units) -> Stmt {
    (
        storage::SAVE_UNITS,
        vec![u.day.into(), sql_seq(u.held).into(), sql_seq(u.used).into()],
    )
}

pub(super) fn stats_stmts(c: &Checkpoint) -> Vec<Stmt> {
    let mut stmts: Vec<_> = c
        .kinds
        .iter()
        .map(|(kind, s)| {
            (
                storage::SAVE_STATS,
                vec![
                    kind.as_str().into(),
                    sql_seq(s.count).into(),
                    s.sum.into(),
                    s.min.into(),
                    s.max.into(),
                    s.last.into(),
                ],
            )
        })
        .collect();
    stmts.push((
        storage::SAVE_STATS_MARK,
        vec![sql_seq(c.through_seq).into()],
    ));
    stmts
}

/// Puts settlement `id` in its outbox.
pub(super) fn settle_stmt(id: u64, owner: String, plan: String, s: Settlement) -> Stmt {
    (
        storage::INSERT_SETTLE_OUTBOX,
        vec![
            sql_seq(id).into(),
            owner.into(),
            plan.into(),
            s.day.into(),
            sql_seq(s.used).into(),
            sql_seq(s.returned).into(),
        ],
    )
}
