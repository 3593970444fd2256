//! What the session object asks of others for the core, each answer fed
//! back as the core's event: units and the owner's plan from the owner's
//! quota object, outbox deliveries to presence and quota objects, and the
//! D1 flush.

use super::storage::SqlIds;
use super::{log_error, ActiveSessionDO};
use crate::edge::http::{Caller, Hop};
use crate::error::ApiError;
use crate::time::now_ms;
use sesh_core::calls::{PresenceCall, QuotaAnswer, QuotaCall};
use sesh_core::data::d1;
use sesh_core::quota::Reserved;
use sesh_core::session::{EntryId, FlushJob, Outgoing, PresenceNote, SettleNote};

impl ActiveSessionDO {
    /// Reserves points units of the owner and feeds the answer to the core.
    pub(super) async fn reserve(&self, owner: &str, plan: &str, want: u64) -> Result<(), ApiError> {
        let call = QuotaCall::Reserve {
            plan: plan.to_owned(),
            want,
        };
        let got: Option<Reserved> = match self.quota_call(owner, call).await {
            Some(QuotaAnswer::Reserved(r)) => Some(r),
            _ => None,
        };
        let now = now_ms();
        let sql = &self.sql;
        self.feed(|c| match got {
            Some(r) => c.granted(r.granted, r.day, now, &mut SqlIds(sql)),
            None => c.reserve_failed(now),
        })
    }

    /// Asks the owner's quota object for the owner's current plan and
    /// feeds the answer (or that there was none) to the core.
    pub(super) async fn ask_plan(&self, owner: &str) -> Result<(), ApiError> {
        let asked = match self.quota_call(owner, QuotaCall::CurrentPlan).await {
            Some(QuotaAnswer::Plan(plan)) => Some(plan),
            _ => None,
        };
        self.feed(|c| c.plan_known(asked.as_deref(), &self.plans))
    }

    async fn quota_call(&self, subject: &str, call: QuotaCall) -> Option<QuotaAnswer> {
        let caller = Caller::internal(subject);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        hop.quota(subject, call).await.ok()?.ok()
    }

    /// Delivers one outbox entry and feeds the outcome to the core; a
    /// delivered entry leaves storage first.
    pub(super) async fn deliver(&self, id: EntryId, item: Outgoing) -> Result<(), ApiError> {
        let ok = match &item {
            Outgoing::Presence(note) => self.tell_presence(note).await,
            Outgoing::Settle(note) => self.settle(id, note).await,
        };
        let now = now_ms();
        if !ok {
            return self.feed(|c| c.undeliverable(id, now));
        }
        // Not deleted: delivered again after a wake-up, under its id.
        if let Err(e) = self.delete_entry(id) {
            log_error(&e);
        }
        self.feed(|c| c.delivered(id, now))
    }

    /// Tells a user's presence object that a connection came or went.
    async fn tell_presence(&self, note: &PresenceNote) -> bool {
        #[cfg(feature = "test-faults")]
        if crate::faults::presence_failing() {
            return false;
        }
        let Ok(session_id) = self.feed(|c| c.meta().id.clone()) else {
            return false;
        };
        let caller = Caller::internal(&note.user);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let update = PresenceCall::Conn {
            user_id: note.user.clone(),
            conn_id: note.conn.clone(),
            session_id,
            online: note.online,
        };
        matches!(hop.presence(&note.user, update).await, Ok(Ok(_)))
    }

    /// Delivers a settlement to the owner's quota object, under an id
    /// unique for ever (the session's and the entry's), so that a
    /// redelivery is applied once.
    async fn settle(&self, id: EntryId, note: &SettleNote) -> bool {
        let s = note.settlement;
        // Outbox ids are never given twice (storage keeps the highest).
        let (EntryId::Settle(n) | EntryId::Presence(n)) = id;
        let Ok(session) = self.feed(|c| c.meta().id.clone()) else {
            return false;
        };
        let call = QuotaCall::Settle {
            id: format!("{session}:{n}"),
            day: s.day,
            used: s.used,
            returned: s.returned,
        };
        self.quota_call(&note.owner, call).await.is_some()
    }

    /// Writes one planned batch to D1 and feeds the outcome to the core.
    pub(super) async fn flush(&self, job: FlushJob) -> Result<(), ApiError> {
        let ok = match self.write_d1(&job).await {
            Ok(()) => self.save_watermark(job.batch).is_ok(),
            Err(e) => {
                log_error(&e);
                false
            }
        };
        self.feed(|c| c.flush_done(job.batch, ok, now_ms()))
    }

    /// Binds and runs the D1 plan of one flush as one `batch()`.
    async fn write_d1(&self, job: &FlushJob) -> Result<(), ApiError> {
        #[cfg(feature = "test-faults")]
        if crate::faults::d1_failing() {
            return Err(ApiError::Unavailable(
                "D1 failure injected for tests".into(),
            ));
        }
        #[cfg(feature = "test-faults")]
        if crate::faults::d1_slow() {
            worker::Delay::from(std::time::Duration::from_millis(crate::faults::D1_SLOW_MS)).await;
        }
        let points = self.flush_points(job.batch)?;
        let plan = d1::plan(
            &job.meta.record(job.point_count),
            &points,
            &job.stats,
            now_ms(),
            crate::objects::partition_known,
        )?;
        let db = crate::db::database(&self.env)?;
        if let Err(e) = crate::db::batch(&db, &plan.stmts).await {
            crate::objects::forget_partitions(&plan.tables);
            return Err(e);
        }
        for table in plan.tables {
            crate::objects::remember_partition(table);
        }
        Ok(())
    }
}
