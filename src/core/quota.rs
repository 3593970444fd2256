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
use sesh_protocol::{QuotaDecision, Resource, ResourceUsage};

use crate::config::Plan;
use crate::core::clock::VirtualClock;
use crate::time::{rfc3339, Millis};

const NANOS_PER_MS: u64 = 1_000_000;

/// A calendar counter: units used in the period that starts at `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counter {
    /// Start of the period the count belongs to (ms).
    pub start: Millis,
    /// Units used in that period.
    pub used: u64,
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

    /// Takes up to `want` units of `res` (as many as remain) and says how
    /// many: a session reserves a block of points this way.
    pub fn reserve(&mut self, plan: &Plan, res: Resource, want: u64, now: Millis) -> u64 {
        let remaining = self.peek(plan, res, now).remaining;
        let grant = remaining.map_or(want, |r| r.min(want));
        if grant > 0 && self.check(plan, res, grant, now).allowed {
            grant
        } else {
            0
        }
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
                }
            }
            Resource::Sessions | Resource::Points => {
                let (limit, bounds) = self.calendar(plan, res, now);
                let counter = self.counter_mut(res);
                roll(counter, bounds.0);
                ResourceUsage {
                    limit,
                    used: counter.used,
                    remaining: limit.map(|l| l.saturating_sub(counter.used)),
                    reset_ms: limit.map(|_| (bounds.1 - now).max(0) as u64),
                    resets_at: limit.map(|_| rfc3339(bounds.1)),
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

fn now_ns(now: Millis) -> u64 {
    (now.max(0) as u64).saturating_mul(NANOS_PER_MS)
}

/// A new period starts the count afresh.
fn roll(counter: &mut Counter, period_start: Millis) {
    if counter.start != period_start {
        *counter = Counter {
            start: period_start,
            used: 0,
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
