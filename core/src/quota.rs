//! The quota core of one subject: the `api` rate limit as GCRA (decided by
//! `governor` on the time passed in, with its theoretical arrival time kept
//! here so it can be stored), and calendar counters for `sessions` (per UTC
//! month) and `points` (per UTC day).
//!
//! Every operation is synchronous and changes nothing when it refuses: a
//! denied check consumes nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::rc::Rc;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sesh_protocol::{
    ErrorCode, ErrorDetail, QuotaDecision, QuotaOverview, Resource, ResourceUsage, DEFAULT_PLAN,
};

use crate::clock::VirtualClock;
use crate::config::{Plan, Plans};
use thiserror::Error;

/// The quota core's one error type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuotaError {
    /// A call named a plan that `PLANS` does not have.
    #[error("unknown plan {0:?}")]
    UnknownPlan(String),
}
use crate::time::{rfc3339, Millis};

const NANOS_PER_MS: u64 = 1_000_000;

/// A calendar counter: units used in the period that starts at `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counter {
    /// Start of the period the count belongs to (ms).
    pub start: Millis,
    /// Units taken in that period (used, or reserved by sessions).
    pub used: u64,
    /// Of `used`, the units sessions reserved and have not settled yet.
    #[serde(default)]
    pub reserved: u64,
}

/// The stored state of one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaState {
    /// GCRA theoretical arrival time, ns since the Unix epoch.
    pub api_tat_ns: Option<u64>,
    /// Sessions created this UTC month.
    pub sessions: Counter,
    /// Points recorded this UTC day.
    pub points: Counter,
}

/// The state of the `api` rate limit, in the terms of the IETF rate-limit
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiHeaders {
    /// Requests per minute (`q`).
    pub per_min: u64,
    /// Units available now (`r`).
    pub available: u64,
    /// Seconds until the burst is full again (`t`).
    pub full_in_secs: u64,
}

impl ApiHeaders {
    /// The values of the rate-limit headers.
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            resource: Resource::Api,
            quota: self.per_min,
            window_secs: 60,
            remaining: self.available,
            reset_secs: self.full_in_secs,
        }
    }

    /// `RateLimit-Policy` value.
    pub fn policy(&self) -> String {
        self.rate().policy()
    }

    /// `RateLimit` value.
    pub fn limit(&self) -> String {
        self.rate().limit()
    }
}

/// One resource's rate-limit policy and standing, as data: the edge turns
/// it into the `RateLimit-Policy` and `RateLimit` headers
/// ([`RateLimit::policy`], [`RateLimit::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// The resource the policy is named after.
    pub resource: Resource,
    /// Units per window (`q`).
    pub quota: u64,
    /// The window in seconds (`w`).
    pub window_secs: u64,
    /// Units left now (`r`).
    pub remaining: u64,
    /// Seconds until the window (or the burst) is whole again (`t`).
    pub reset_secs: u64,
}

impl RateLimit {
    /// The `RateLimit-Policy` value, e.g. `"points";q=10000;w=86400`.
    pub fn policy(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.resource.as_str(),
            self.quota,
            self.window_secs
        )
    }

    /// The `RateLimit` value, e.g. `"points";r=9996;t=60`.
    pub fn limit(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.resource.as_str(),
            self.remaining,
            self.reset_secs
        )
    }
}

/// A governor state store over one cell, so the TAT can be read and stored.
#[derive(Debug, Clone, Default)]
struct TatCell(Rc<Cell<Option<u64>>>);

impl StateStore for TatCell {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (out, next) = f(self.0.get().map(Nanos::new))?;
        self.0.set(Some(next.as_u64()));
        Ok(out)
    }
}

fn emission_ns(plan: &Plan) -> u64 {
    60_000 * NANOS_PER_MS / plan.api_per_min.max(1)
}

fn ms_ceil(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_MS)
}

/// Start of the UTC day and of the next one.
fn day_bounds(now: Millis) -> (Millis, Millis) {
    let day = 86_400_000;
    let start = now.div_euclid(day) * day;
    (start, start + day)
}

/// Start of the UTC month and of the next one.
fn month_bounds(now: Millis) -> (Millis, Millis) {
    let d = DateTime::from_timestamp_millis(now).unwrap_or_default();
    let first = NaiveDate::from_ymd_opt(d.year(), d.month(), 1).unwrap_or_default();
    let start = Utc.from_utc_datetime(&first.and_time(chrono::NaiveTime::MIN));
    let next = start + Months::new(1);
    (start.timestamp_millis(), next.timestamp_millis())
}

impl QuotaState {
    /// Checks `cost` units of `res` and takes them if allowed; a refusal
    /// changes nothing.
    pub fn check(&mut self, plan: &Plan, res: Resource, cost: u64, now: Millis) -> QuotaDecision {
        match res {
            Resource::Api => self.check_api(plan, cost, now),
            Resource::Sessions | Resource::Points => {
                let (limit, bounds) = self.calendar(plan, res, now);
                let counter = self.counter_mut(res);
                roll(counter, bounds.0);
                let used = counter.used;
                let reset_ms = (bounds.1 - now).max(0) as u64;
                match limit {
                    None => {
                        counter.used = used.saturating_add(cost);
                        decision(true, None, None, None, None)
                    }
                    Some(limit) if used.saturating_add(cost) <= limit => {
                        counter.used = used + cost;
                        decision(
                            true,
                            Some(limit),
                            Some(limit - used - cost),
                            Some(reset_ms),
                            None,
                        )
                    }
                    Some(limit) => {
                        let retry = (cost <= limit).then_some(reset_ms);
                        decision(
                            false,
                            Some(limit),
                            Some(limit.saturating_sub(used)),
                            Some(reset_ms),
                            retry,
                        )
                    }
                }
            }
        }
    }

    /// Reserves up to `want` points units (as many as remain) for a
    /// session, and says how many and from which UTC day (ms at its start).
    pub fn reserve(&mut self, plan: &Plan, want: u64, now: Millis) -> (u64, Millis) {
        let (day, _) = day_bounds(now);
        let remaining = self.peek(plan, Resource::Points, now).remaining;
        let grant = remaining.map_or(want, |r| r.min(want));
        if grant > 0 && self.check(plan, Resource::Points, grant, now).allowed {
            self.points.reserved = self.points.reserved.saturating_add(grant);
            (grant, day)
        } else {
            (0, day)
        }
    }

    /// A session settles units it reserved on the UTC day starting at
    /// `day`: `used` of them recorded points, `returned` go back. Units of a
    /// day that has passed go back to that day, which no longer counts.
    /// Points counters are per UTC day whatever the plan, so settling
    /// needs none: a plan removed from `PLANS` cannot wedge a settlement.
    /// Answers whether it changed the day's counters.
    pub fn settle(&mut self, day: Millis, used: u64, returned: u64, now: Millis) -> bool {
        roll(&mut self.points, day_bounds(now).0);
        if self.points.start != day {
            return false;
        }
        let c = &mut self.points;
        c.reserved = c.reserved.saturating_sub(used.saturating_add(returned));
        c.used = c.used.saturating_sub(returned);
        true
    }

    /// The state of `res` now, without taking anything.
    pub fn peek(&mut self, plan: &Plan, res: Resource, now: Millis) -> QuotaDecision {
        match res {
            Resource::Api => {
                let h = self.api_headers(plan, now);
                let tat = self.api_tat_ns.unwrap_or(0).max(now_ns(now));
                decision(
                    h.available > 0,
                    Some(plan.api_per_min),
                    Some(h.available),
                    Some(ms_ceil(tat - now_ns(now))),
                    None,
                )
            }
            Resource::Sessions | Resource::Points => {
                let (limit, bounds) = self.calendar(plan, res, now);
                let counter = self.counter_mut(res);
                roll(counter, bounds.0);
                let remaining = limit.map(|l| l.saturating_sub(counter.used));
                let reset = limit.map(|_| (bounds.1 - now).max(0) as u64);
                decision(remaining != Some(0), limit, remaining, reset, None)
            }
        }
    }

    /// Gives `cost` units of `res` back (never below zero use).
    pub fn refund(&mut self, plan: &Plan, res: Resource, cost: u64, now: Millis) -> QuotaDecision {
        match res {
            Resource::Api => {
                if let Some(tat) = self.api_tat_ns {
                    let back = cost.saturating_mul(emission_ns(plan));
                    self.api_tat_ns = Some(tat.saturating_sub(back).max(now_ns(now)));
                }
            }
            Resource::Sessions | Resource::Points => {
                let (_, bounds) = self.calendar(plan, res, now);
                let counter = self.counter_mut(res);
                roll(counter, bounds.0);
                counter.used = counter.used.saturating_sub(cost);
            }
        }
        self.peek(plan, res, now)
    }

    /// The `api` policy for the rate-limit headers.
    pub fn api_headers(&self, plan: &Plan, now: Millis) -> ApiHeaders {
        let t = emission_ns(plan);
        let now_ns = now_ns(now);
        let tat = self.api_tat_ns.unwrap_or(0).max(now_ns);
        let room = (now_ns + plan.api_burst * t).saturating_sub(tat);
        ApiHeaders {
            per_min: plan.api_per_min,
            available: (room / t).min(plan.api_burst),
            full_in_secs: (tat - now_ns).div_ceil(1_000 * NANOS_PER_MS),
        }
    }

    /// The rate-limit policy and standing of `res` (the IETF
    /// `RateLimit-Policy` and `RateLimit` headers' values); `None` for an
    /// unlimited counter, which has no policy to describe.
    pub fn rate_headers(&mut self, plan: &Plan, res: Resource, now: Millis) -> Option<RateLimit> {
        if res == Resource::Api {
            return Some(self.api_headers(plan, now).rate());
        }
        let (limit, bounds) = self.calendar(plan, res, now);
        let limit = limit?;
        let counter = self.counter_mut(res);
        roll(counter, bounds.0);
        Some(RateLimit {
            resource: res,
            quota: limit,
            window_secs: ((bounds.1 - bounds.0) / 1000) as u64,
            remaining: limit.saturating_sub(counter.used),
            reset_secs: ((bounds.1 - now).max(0) as u64).div_ceil(1000),
        })
    }

    /// What `GET /v1/quota` shows for `res`.
    pub fn usage(&mut self, plan: &Plan, res: Resource, now: Millis) -> ResourceUsage {
        match res {
            Resource::Api => {
                let h = self.api_headers(plan, now);
                let reset_ms = h.full_in_secs * 1_000;
                ResourceUsage {
                    limit: Some(plan.api_per_min),
                    used: plan.api_burst - h.available,
                    remaining: Some(h.available),
                    reset_ms: Some(reset_ms),
                    resets_at: Some(rfc3339(now + reset_ms as Millis)),
                    reserved: None,
                }
            }
            Resource::Sessions | Resource::Points => {
                let (limit, bounds) = self.calendar(plan, res, now);
                let counter = self.counter_mut(res);
                roll(counter, bounds.0);
                ResourceUsage {
                    limit,
                    used: counter.used.saturating_sub(counter.reserved),
                    remaining: limit.map(|l| l.saturating_sub(counter.used)),
                    reset_ms: limit.map(|_| (bounds.1 - now).max(0) as u64),
                    resets_at: limit.map(|_| rfc3339(bounds.1)),
                    reserved: (res == Resource::Points).then_some(counter.reserved),
                }
            }
        }
    }

    fn check_api(&mut self, plan: &Plan, cost: u64, now: Millis) -> QuotaDecision {
        let per_min = NonZeroU32::new(u32::try_from(plan.api_per_min).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(u32::try_from(plan.api_burst).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let cell = TatCell(Rc::new(Cell::new(self.api_tat_ns)));
        // The limiter's own origin is the epoch (the clock reads 0 when it
        // is built), so the TAT it keeps is absolute and can be stored.
        let clock = VirtualClock::default();
        let limiter: RateLimiter<NotKeyed, TatCell, VirtualClock, NoOpMiddleware<Duration>> =
            RateLimiter::new(
                Quota::per_minute(per_min).allow_burst(burst),
                cell.clone(),
                clock.clone(),
            );
        clock.set(now);
        let n = NonZeroU32::new(u32::try_from(cost).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let outcome = limiter.check_n(n);
        let allowed = matches!(outcome, Ok(Ok(())));
        if allowed {
            self.api_tat_ns = cell.0.get();
        }
        let h = self.api_headers(plan, now);
        let tat = self.api_tat_ns.unwrap_or(0).max(now_ns(now));
        let reset_ms = ms_ceil(tat - now_ns(now));
        let retry = match outcome {
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(Duration::from_millis(now.max(0) as u64));
                Some((wait.as_millis() as u64).max(1))
            }
            // The cost is larger than the burst: no wait helps.
            _ => None,
        };
        decision(
            allowed,
            Some(plan.api_per_min),
            Some(h.available),
            Some(reset_ms),
            retry,
        )
    }

    fn calendar(&self, plan: &Plan, res: Resource, now: Millis) -> (Option<u64>, (Millis, Millis)) {
        match res {
            Resource::Sessions => (plan.sessions_per_month, month_bounds(now)),
            _ => (plan.points_per_day, day_bounds(now)),
        }
    }

    fn counter_mut(&mut self, res: Resource) -> &mut Counter {
        match res {
            Resource::Sessions => &mut self.sessions,
            _ => &mut self.points,
        }
    }
}

/// A subject's quota as the object keeps it: the counters and the plan the
/// subject was last seen under (refunds name no plan, and a session asks
/// for its owner's current plan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaCore {
    /// The counters, stored as JSON.
    pub state: QuotaState,
    /// The plan of the subject's last charge or check.
    pub last_plan: Option<String>,
    /// The settlements applied (id to the UTC day they settled), each
    /// applied once however often it is delivered. Only today's are kept:
    /// a settlement of a past day changes nothing anyway.
    pub settled: BTreeMap<String, Millis>,
}

/// What a settlement did, for the object to store with the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The id is new: store it as applied on `day`.
    pub record: Option<Millis>,
    /// Ids of days before this one (ms at the day's start) can be
    /// forgotten.
    pub forget_before: Millis,
}

/// The outcome of one operation: its answer, and whether the state
/// changed (then it must be stored before the answer leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<T> {
    /// What to answer.
    pub answer: T,
    /// The state changed: store it first.
    pub changed: bool,
}

/// The answer to a request's `api` charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Charged {
    /// The request may go on.
    pub allowed: bool,
    /// The `api` rate limit after the charge.
    pub rate: RateLimit,
    /// On a refusal, the wait in milliseconds until a unit is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The answer to a check or a refund: the decision, and the checked
/// resource's own rate limit (`None` when it is unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decided {
    /// The decision, as the client sees it.
    pub decision: QuotaDecision,
    /// The resource's rate limit after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

impl QuotaCore {
    fn plan(plans: &Plans, name: &str) -> Result<Plan, QuotaError> {
        plans
            .get(name)
            .copied()
            .ok_or_else(|| QuotaError::UnknownPlan(name.to_owned()))
    }

    // Answers whether the plan changed (the state then needs storing).
    fn remember(&mut self, plan: &str) -> bool {
        if self.last_plan.as_deref() == Some(plan) {
            return false;
        }
        self.last_plan = Some(plan.to_owned());
        true
    }

    // The counters are `Copy`: comparing them with the state before is
    // cheaper than cloning the whole core (this runs for every request's
    // charge).
    fn applied<T>(&self, before: QuotaState, plan_changed: bool, answer: T) -> Applied<T> {
        Applied {
            answer,
            changed: plan_changed || self.state != before,
        }
    }

    /// One `api` unit of plan `name` for a request. Each operation is
    /// synchronous from read to write, so concurrent calls cannot
    /// interleave.
    pub fn charge(
        &mut self,
        plans: &Plans,
        name: &str,
        now: Millis,
    ) -> Result<Applied<Charged>, QuotaError> {
        let before = self.state;
        let plan = Self::plan(plans, name)?;
        let d = self.state.check(&plan, Resource::Api, 1, now);
        let plan_changed = d.allowed && self.remember(name);
        let charged = Charged {
            allowed: d.allowed,
            rate: self.state.api_headers(&plan, now).rate(),
            retry_after_ms: d.retry_after_ms,
        };
        Ok(self.applied(before, plan_changed, charged))
    }

    /// `subject`'s usage of every resource under plan `name`.
    pub fn overview(
        &mut self,
        subject: &str,
        plans: &Plans,
        name: &str,
        now: Millis,
    ) -> Result<Applied<QuotaOverview>, QuotaError> {
        let before = self.state;
        let plan = Self::plan(plans, name)?;
        let view = QuotaOverview {
            subject: subject.to_owned(),
            plan: name.to_owned(),
            api: self.state.usage(&plan, Resource::Api, now),
            sessions: self.state.usage(&plan, Resource::Sessions, now),
            points: self.state.usage(&plan, Resource::Points, now),
        };
        Ok(self.applied(before, false, view))
    }

    /// Takes `cost` units of `res` under plan `name` if they are all there.
    pub fn check(
        &mut self,
        plans: &Plans,
        res: Resource,
        cost: u64,
        name: &str,
        now: Millis,
    ) -> Result<Applied<Decided>, QuotaError> {
        let before = self.state;
        let plan = Self::plan(plans, name)?;
        let mut d = self.state.check(&plan, res, cost, now);
        let mut plan_changed = false;
        if d.allowed {
            plan_changed = self.remember(name);
        } else {
            d.error = Some(refusal(res));
        }
        let decided = self.decided(&plan, res, d, now);
        Ok(self.applied(before, plan_changed, decided))
    }

    /// Gives `cost` units of `res` back, under the last plan seen.
    pub fn refund(
        &mut self,
        plans: &Plans,
        res: Resource,
        cost: u64,
        now: Millis,
    ) -> Result<Applied<Decided>, QuotaError> {
        let before = self.state;
        let name = self.last_plan.as_deref().unwrap_or(DEFAULT_PLAN);
        let plan = Self::plan(plans, name)?;
        let d = self.state.refund(&plan, res, cost, now);
        let decided = self.decided(&plan, res, d, now);
        Ok(self.applied(before, false, decided))
    }

    /// A session reserves up to `want` points units of plan `name`.
    pub fn reserve(
        &mut self,
        plans: &Plans,
        name: &str,
        want: u64,
        now: Millis,
    ) -> Result<Applied<Reserved>, QuotaError> {
        let before = self.state;
        let plan = Self::plan(plans, name)?;
        let (granted, day) = self.state.reserve(&plan, want, now);
        Ok(self.applied(before, false, Reserved { granted, day }))
    }

    /// A session settles units it reserved on the UTC day starting at
    /// `day`: `used` recorded points, `returned` go back. `id` names the
    /// settlement (the session's outbox entry): a redelivery of an applied
    /// one changes nothing. No plan is needed.
    pub fn settle(
        &mut self,
        id: &str,
        day: Millis,
        used: u64,
        returned: u64,
        now: Millis,
    ) -> Applied<Settled> {
        let today = day_bounds(now).0;
        self.settled.retain(|_, d| *d >= today);
        let fresh = !self.settled.contains_key(id);
        let record = (fresh && self.state.settle(day, used, returned, now)).then_some(day);
        if let Some(d) = record {
            self.settled.insert(id.to_owned(), d);
        }
        Applied {
            changed: record.is_some(),
            answer: Settled {
                record,
                forget_before: today,
            },
        }
    }

    /// The plan the subject was last seen under (`free` if never).
    pub fn current_plan(&self) -> &str {
        self.last_plan.as_deref().unwrap_or(DEFAULT_PLAN)
    }

    /// A check's or refund's answer, with the checked resource's own rate
    /// limit.
    fn decided(
        &mut self,
        plan: &Plan,
        res: Resource,
        decision: QuotaDecision,
        now: Millis,
    ) -> Decided {
        Decided {
            rate: self.state.rate_headers(plan, res, now),
            decision,
        }
    }
}

/// The answer to a points reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reserved {
    /// Units granted (0 when none remain).
    pub granted: u64,
    /// The UTC day they were taken from (ms at its start).
    pub day: Millis,
}

/// The error object of a refused check, by resource.
fn refusal(res: Resource) -> ErrorDetail {
    match res {
        Resource::Api => ErrorDetail::new(ErrorCode::RateLimited, "api rate limit exceeded"),
        Resource::Sessions => {
            ErrorDetail::new(ErrorCode::QuotaExceeded, "monthly sessions quota exceeded")
        }
        Resource::Points => {
            ErrorDetail::new(ErrorCode::QuotaExceeded, "daily points quota exceeded")
        }
    }
}

fn now_ns(now: Millis) -> u64 {
    (now.max(0) as u64).saturating_mul(NANOS_PER_MS)
}

/// A new period starts the count afresh.
fn roll(counter: &mut Counter, period_start: Millis) {
    if counter.start != period_start {
        *counter = Counter {
            start: period_start,
            used: 0,
            reserved: 0,
        };
    }
}

fn decision(
    allowed: bool,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_ms: Option<u64>,
    retry_after_ms: Option<u64>,
) -> QuotaDecision {
    QuotaDecision {
        allowed,
        limit,
        remaining,
        reset_ms,
        retry_after_ms: if allowed { None } else { retry_after_ms },
        error: None,
    }
}

#[cfg(test)]
mod tests;
