//! The quota core of one subject: the `api` rate limit as GCRA (decided by
//! `governor` on the time passed in, with its theoretical arrival time kept
//! here so it can be stored), and calendar counters for `sessions` (per UTC
//! month) and `points` (per UTC day).
//!
//! Every operation is synchronous and changes nothing when it refuses: a
//! denied check consumes nothing.

use std::cell::Cell;
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

use crate::calls::QuotaCall;
use crate::clock::VirtualClock;
use crate::config::{Plan, Plans};
use thiserror::Error;

/// The quota core's one error type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuotaError {
    /// A call named a plan that `PLANS` does not have.
    #[error("unknown plan {0:?}")]
    UnknownPlan(String),
    /// An answer could not be encoded (a bug; for the log).
    #[error("encoding an answer: {0}")]
    Encode(String),
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

/// The `api` policy as the IETF rate-limit headers describe it.
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
    /// `RateLimit-Policy` value.
    pub fn policy(&self) -> String {
        format!("\"api\";q={};w=60", self.per_min)
    }

    /// `RateLimit` value.
    pub fn limit(&self) -> String {
        format!("\"api\";r={};t={}", self.available, self.full_in_secs)
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
    pub fn settle(&mut self, plan: &Plan, day: Millis, used: u64, returned: u64, now: Millis) {
        let (_, bounds) = self.calendar(plan, Resource::Points, now);
        roll(&mut self.points, bounds.0);
        if self.points.start != day {
            return;
        }
        let c = &mut self.points;
        c.reserved = c.reserved.saturating_sub(used.saturating_add(returned));
        c.used = c.used.saturating_sub(returned);
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

    /// The IETF rate-limit headers (`RateLimit-Policy`, `RateLimit`) of
    /// `res`, e.g. `"points";q=10000;w=86400`; `None` for an unlimited
    /// counter, which has no policy to describe.
    pub fn rate_headers(
        &mut self,
        plan: &Plan,
        res: Resource,
        now: Millis,
    ) -> Option<(String, String)> {
        if res == Resource::Api {
            let h = self.api_headers(plan, now);
            return Some((h.policy(), h.limit()));
        }
        let (limit, bounds) = self.calendar(plan, res, now);
        let limit = limit?;
        let counter = self.counter_mut(res);
        roll(counter, bounds.0);
        let name = res.as_str();
        let window_s = (bounds.1 - bounds.0) / 1000;
        let reset_s = ((bounds.1 - now).max(0) as u64).div_ceil(1000);
        Some((
            format!("\"{name}\";q={limit};w={window_s}"),
            format!(
                "\"{name}\";r={};t={reset_s}",
                limit.saturating_sub(counter.used)
            ),
        ))
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
}

/// What the object answers to a call, and whether the state must be
/// stored first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body; `None` for a headers-only answer.
    pub body: Option<String>,
    /// Headers to set.
    pub headers: Vec<(&'static str, String)>,
    /// The state changed: store it before the answer leaves.
    pub changed: bool,
}

/// Header of a refused charge: the wait in milliseconds (internal, read by
/// the gateway).
pub const H_RETRY_AFTER_MS: &str = "x-sesh-retry-after-ms";

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

    /// Carries out one call for `subject` at `now`. Synchronous from read
    /// to write, so concurrent calls cannot interleave.
    pub fn apply(
        &mut self,
        subject: &str,
        call: &QuotaCall,
        plans: &Plans,
        now: Millis,
    ) -> Result<Reply, QuotaError> {
        // The counters are `Copy`: comparing them is cheaper than cloning
        // the whole core (this runs for every request's charge).
        let before = self.state;
        let mut plan_changed = false;
        let mut reply = match call {
            QuotaCall::Charge { plan: name } => {
                let plan = Self::plan(plans, name)?;
                let d = self.state.check(&plan, Resource::Api, 1, now);
                if d.allowed {
                    plan_changed = self.remember(name);
                }
                let h = self.state.api_headers(&plan, now);
                let mut headers = vec![("ratelimit-policy", h.policy()), ("ratelimit", h.limit())];
                if let Some(ms) = d.retry_after_ms {
                    headers.push((H_RETRY_AFTER_MS, ms.to_string()));
                }
                let status = if d.allowed { 204 } else { 429 };
                Reply::new(status, None, headers)
            }
            QuotaCall::Overview { plan: name } => {
                let plan = Self::plan(plans, name)?;
                let view = QuotaOverview {
                    subject: subject.to_owned(),
                    plan: name.clone(),
                    api: self.state.usage(&plan, Resource::Api, now),
                    sessions: self.state.usage(&plan, Resource::Sessions, now),
                    points: self.state.usage(&plan, Resource::Points, now),
                };
                Reply::json(200, &view)?
            }
            QuotaCall::Check {
                resource,
                cost,
                plan: name,
            } => {
                let plan = Self::plan(plans, name)?;
                let mut d = self.state.check(&plan, *resource, *cost, now);
                if d.allowed {
                    plan_changed = self.remember(name);
                } else {
                    d.error = Some(refusal(*resource));
                }
                self.decision_reply(&plan, *resource, &d, now)?
            }
            QuotaCall::Refund { resource, cost } => {
                let name = self.last_plan.clone();
                let plan = Self::plan(plans, name.as_deref().unwrap_or(DEFAULT_PLAN))?;
                let d = self.state.refund(&plan, *resource, *cost, now);
                self.decision_reply(&plan, *resource, &d, now)?
            }
            QuotaCall::Reserve { plan: name, want } => {
                let plan = Self::plan(plans, name)?;
                let (granted, day) = self.state.reserve(&plan, *want, now);
                Reply::json(200, &Reserved { granted, day })?
            }
            QuotaCall::Settle {
                plan: name,
                day,
                used,
                returned,
            } => {
                let plan = Self::plan(plans, name)?;
                self.state.settle(&plan, *day, *used, *returned, now);
                Reply::json(200, &serde_json::json!({}))?
            }
            QuotaCall::CurrentPlan => {
                let plan = self.last_plan.as_deref().unwrap_or(DEFAULT_PLAN);
                Reply::json(200, &serde_json::json!({ "plan": plan }))?
            }
        };
        reply.changed = plan_changed || self.state != before;
        Ok(reply)
    }

    /// A check's or refund's answer, with the checked resource's own
    /// rate-limit headers and `Retry-After` on a refusal where a wait helps.
    fn decision_reply(
        &mut self,
        plan: &Plan,
        res: Resource,
        d: &QuotaDecision,
        now: Millis,
    ) -> Result<Reply, QuotaError> {
        let mut headers = Vec::new();
        if let Some((policy, limit)) = self.state.rate_headers(plan, res, now) {
            headers.push(("ratelimit-policy", policy));
            headers.push(("ratelimit", limit));
        }
        if let Some(ms) = d.retry_after_ms.filter(|_| !d.allowed) {
            headers.push(("retry-after", ms.div_ceil(1000).max(1).to_string()));
        }
        let mut reply = Reply::json(if d.allowed { 200 } else { 429 }, d)?;
        reply.headers = headers;
        Ok(reply)
    }
}

impl Reply {
    fn new(status: u16, body: Option<String>, headers: Vec<(&'static str, String)>) -> Reply {
        Reply {
            status,
            body,
            headers,
            changed: false,
        }
    }

    fn json<T: Serialize>(status: u16, body: &T) -> Result<Reply, QuotaError> {
        let text = serde_json::to_string(body).map_err(|e| QuotaError::Encode(e.to_string()))?;
        Ok(Reply::new(status, Some(text), Vec::new()))
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
