//! Native tests of the quota core on a virtual clock.

use super::*;
use crate::config::Plans;

/// 2025-11-30T23:59:00Z: a minute before both a month and a day roll over.
const T0: Millis = 1_764_547_140_000;
const DEC_1: Millis = 1_764_547_200_000;

fn plan(name: &str) -> Plan {
    *Plans::default().get(name).unwrap()
}

#[test]
fn api_burst_then_one_per_emission_interval() {
    let free = plan("free"); // 60/min, burst 20: one unit a second.
    let mut s = QuotaState::default();
    for i in 0..20 {
        let d = s.check(&free, Resource::Api, 1, T0);
        assert!(d.allowed, "call {i}");
        assert_eq!(d.remaining, Some(19 - i));
    }
    let before = s;
    let d = s.check(&free, Resource::Api, 1, T0);
    assert!(!d.allowed);
    assert_eq!(
        (d.limit, d.remaining, d.retry_after_ms),
        (Some(60), Some(0), Some(1_000))
    );
    assert_eq!(d.reset_ms, Some(20_000), "the burst is whole again in 20 s");
    assert_eq!(s, before, "a denied check changes nothing");
    assert!(!s.check(&free, Resource::Api, 1, T0 + 999).allowed);
    let d = s.check(&free, Resource::Api, 1, T0 + 1_000);
    assert!(d.allowed, "refilled after one emission interval");
    assert_eq!(d.remaining, Some(0));
}

#[test]
fn api_headers_follow_the_ietf_draft() {
    let free = plan("free");
    let mut s = QuotaState::default();
    let h = s.api_headers(&free, T0);
    assert_eq!((h.available, h.full_in_secs), (20, 0));
    assert_eq!(h.policy(), "\"api\";q=60;w=60");
    for _ in 0..5 {
        s.check(&free, Resource::Api, 1, T0);
    }
    let h = s.api_headers(&free, T0);
    assert_eq!(h.limit(), "\"api\";r=15;t=5");
    let h = s.api_headers(&free, T0 + 2_500);
    assert_eq!((h.available, h.full_in_secs), (17, 3));
}

#[test]
fn cost_weighted_checks_and_cost_above_the_burst() {
    let free = plan("free");
    let mut s = QuotaState::default();
    let d = s.check(&free, Resource::Api, 5, T0);
    assert_eq!((d.allowed, d.remaining), (true, Some(15)));
    let d = s.check(&free, Resource::Api, 16, T0);
    assert!(!d.allowed);
    assert_eq!(
        d.retry_after_ms,
        Some(1_000),
        "16 fit after one more unit refills"
    );
    let before = s;
    let d = s.check(&free, Resource::Api, 21, T0 + 60_000);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, None, "no wait makes 21 fit a burst of 20");
    assert_eq!(s, before);
}

#[test]
fn api_refund_gives_units_back() {
    let free = plan("free");
    let mut s = QuotaState::default();
    for _ in 0..20 {
        s.check(&free, Resource::Api, 1, T0);
    }
    let d = s.refund(&free, Resource::Api, 3, T0);
    assert_eq!(d.remaining, Some(3));
    let d = s.refund(&free, Resource::Api, 100, T0);
    assert_eq!(d.remaining, Some(20), "never more than the burst");
}

#[test]
fn sessions_per_month_roll_over_at_the_utc_month() {
    let free = plan("free"); // 30 sessions a month.
    let mut s = QuotaState::default();
    for _ in 0..30 {
        assert!(s.check(&free, Resource::Sessions, 1, T0).allowed);
    }
    let d = s.check(&free, Resource::Sessions, 1, T0);
    assert!(!d.allowed);
    assert_eq!((d.limit, d.remaining), (Some(30), Some(0)));
    assert_eq!(d.reset_ms, Some(60_000), "a minute to December");
    assert_eq!(d.retry_after_ms, Some(60_000));
    let d = s.check(&free, Resource::Sessions, 1, DEC_1);
    assert_eq!((d.allowed, d.remaining), (true, Some(29)));
    let d = s.peek(&free, Resource::Sessions, DEC_1);
    assert_eq!(d.reset_ms, Some(31 * 86_400_000), "December has 31 days");
}

#[test]
fn points_per_day_roll_over_at_utc_midnight() {
    let free = plan("free"); // 10,000 points a day.
    let mut s = QuotaState::default();
    assert!(s.check(&free, Resource::Points, 10_000, T0).allowed);
    let d = s.check(&free, Resource::Points, 1, T0 + 59_999);
    assert_eq!((d.allowed, d.reset_ms), (false, Some(1)));
    let d = s.check(&free, Resource::Points, 10_001, DEC_1);
    assert_eq!(
        (d.allowed, d.retry_after_ms),
        (false, None),
        "more than a day's worth"
    );
    assert!(s.check(&free, Resource::Points, 1, DEC_1).allowed);
}

#[test]
fn unlimited_plans_answer_null_but_still_count() {
    let ent = plan("enterprise");
    let mut s = QuotaState::default();
    let d = s.check(&ent, Resource::Points, 1_000_000, T0);
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining, d.reset_ms), (None, None, None));
    let u = s.usage(&ent, Resource::Points, T0);
    assert_eq!((u.used, u.limit, u.remaining), (1_000_000, None, None));
}

#[test]
fn refund_and_reserve_of_counters() {
    let free = plan("free");
    let mut s = QuotaState::default();
    let day = DEC_1 - 86_400_000;
    assert_eq!(s.reserve(&free, 9_990, T0), (9_990, day));
    assert_eq!(s.reserve(&free, 100, T0), (10, day), "what remains");
    assert_eq!(s.reserve(&free, 100, T0), (0, day));
    s.settle(day, 0, 10_000, T0);
    let d = s.check(&free, Resource::Points, 9_960, T0);
    assert!(d.allowed);
    let d = s.refund(&free, Resource::Points, 40, T0);
    assert_eq!(d.remaining, Some(80));
    let d = s.refund(&free, Resource::Points, 1_000_000, T0);
    assert_eq!(d.remaining, Some(10_000), "never below zero use");
}

#[test]
fn reserved_units_are_shown_apart_and_settle_to_their_day() {
    let free = plan("free");
    let mut s = QuotaState::default();
    let day = DEC_1 - 86_400_000;
    assert_eq!(s.reserve(&free, 200, T0).0, 200);
    let u = s.usage(&free, Resource::Points, T0);
    assert_eq!(
        (u.used, u.reserved, u.remaining),
        (0, Some(200), Some(9_800))
    );
    // 30 recorded, 170 back.
    s.settle(day, 30, 170, T0);
    let u = s.usage(&free, Resource::Points, T0);
    assert_eq!(
        (u.used, u.reserved, u.remaining),
        (30, Some(0), Some(9_970))
    );
    // Units of yesterday go back to yesterday: today's count is untouched.
    assert_eq!(s.reserve(&free, 100, T0).0, 100);
    s.check(&free, Resource::Points, 5, DEC_1);
    s.settle(day, 0, 100, DEC_1);
    let u = s.usage(&free, Resource::Points, DEC_1);
    assert_eq!((u.used, u.reserved), (5, Some(0)));
    assert_eq!(s.usage(&free, Resource::Api, T0).reserved, None);
}

#[test]
fn counters_describe_their_own_rate_limit_policy() {
    let free = plan("free");
    let mut s = QuotaState::default();
    s.check(&free, Resource::Points, 4, T0);
    assert_eq!(
        s.rate_headers(&free, Resource::Points, T0)
            .map(|r| (r.policy(), r.limit())),
        Some((
            "\"points\";q=10000;w=86400".to_owned(),
            "\"points\";r=9996;t=60".to_owned()
        ))
    );
    let policy = s
        .rate_headers(&free, Resource::Sessions, T0)
        .unwrap()
        .policy();
    assert_eq!(
        policy, "\"sessions\";q=30;w=2592000",
        "November has 30 days"
    );
    let ent = plan("enterprise");
    assert_eq!(s.rate_headers(&ent, Resource::Points, T0), None);
    let policy = s.rate_headers(&free, Resource::Api, T0).unwrap().policy();
    assert_eq!(policy, "\"api\";q=60;w=60");
}

#[test]
fn exactly_r_of_2r_checks_are_admitted() {
    let free = plan("free");
    let mut s = QuotaState::default();
    s.check(&free, Resource::Points, 10_000 - 7, T0);
    let admitted: Vec<u64> = (0..14)
        .map(|_| s.check(&free, Resource::Points, 1, T0))
        .filter(|d| d.allowed)
        .map(|d| d.remaining.unwrap())
        .collect();
    assert_eq!(admitted, vec![6, 5, 4, 3, 2, 1, 0]);
}

#[test]
fn state_survives_storage() {
    let free = plan("free");
    let mut s = QuotaState::default();
    s.check(&free, Resource::Api, 3, T0);
    s.check(&free, Resource::Points, 3, T0);
    let back: QuotaState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.api_headers(&free, T0).available, 17);
}

#[test]
fn a_refused_charge_changes_nothing_and_says_how_long_to_wait() {
    let plans = Plans::default();
    let mut core = QuotaCore::default();
    let first = core.charge(&plans, "free", T0).unwrap();
    assert!(first.answer.allowed && first.changed);
    assert_eq!(core.last_plan.as_deref(), Some("free"));
    assert_eq!(first.answer.rate.policy(), "\"api\";q=60;w=60");
    assert_eq!(first.answer.rate.limit(), "\"api\";r=19;t=1");
    assert_eq!(first.answer.retry_after_ms, None);
    for _ in 0..19 {
        assert!(core.charge(&plans, "free", T0).unwrap().answer.allowed);
    }
    let refused = core.charge(&plans, "free", T0).unwrap();
    assert!(!refused.answer.allowed);
    assert!(!refused.changed, "nothing to store");
    assert_eq!(refused.answer.retry_after_ms, Some(1_000));
    assert_eq!(refused.answer.rate.remaining, 0);
    assert_eq!(
        core.charge(&plans, "gold", T0),
        Err(QuotaError::UnknownPlan("gold".into()))
    );
}

#[test]
fn a_check_remembers_its_plan_and_a_refund_uses_it() {
    let plans = Plans::default();
    let mut core = QuotaCore::default();
    assert_eq!(core.current_plan(), DEFAULT_PLAN);
    let took = core
        .check(&plans, Resource::Sessions, 1, "pro", T0)
        .unwrap();
    assert!(took.changed && took.answer.decision.allowed);
    assert_eq!(core.current_plan(), "pro");
    let rate = took.answer.rate.unwrap();
    assert_eq!(rate.resource, Resource::Sessions);
    assert_eq!(rate.remaining, rate.quota - 1);
    let refused = core
        .check(&plans, Resource::Sessions, 1_000_000, "free", T0)
        .unwrap();
    assert!(
        !refused.changed,
        "a refusal stores nothing, not even the plan"
    );
    assert_eq!(core.current_plan(), "pro");
    let d = refused.answer.decision;
    assert!(!d.allowed);
    assert_eq!(d.error.map(|e| e.code), Some(ErrorCode::QuotaExceeded));
    // Given back under `pro`, the plan last seen, whose limit it shows.
    let back = core.refund(&plans, Resource::Sessions, 1, T0).unwrap();
    assert!(back.changed);
    assert_eq!(back.answer.decision.remaining, Some(rate.quota));
    let unlimited = core
        .check(&plans, Resource::Points, 1, "enterprise", T0)
        .unwrap();
    assert_eq!(
        unlimited.answer.rate, None,
        "an unlimited counter has no policy"
    );
}

#[test]
fn reservations_settle_through_the_core() {
    let plans = Plans::default();
    let mut core = QuotaCore::default();
    let r = core.reserve(&plans, "free", 100, T0).unwrap();
    assert!(r.changed);
    assert_eq!(r.answer.granted, 100);
    let s = core.settle("s:1", r.answer.day, 40, 60, T0);
    assert!(s.changed);
    assert_eq!(s.answer.record, Some(r.answer.day));
    assert_eq!(
        (core.state.points.used, core.state.points.reserved),
        (40, 0)
    );
    // The first overview rolls the untouched sessions counter into this
    // month (a change to store); the next one reads only.
    assert!(core.overview("u", &plans, "free", T0).unwrap().changed);
    let view = core.overview("u", &plans, "free", T0).unwrap();
    assert!(!view.changed);
    assert_eq!(view.answer.points.used, 40);
    assert_eq!(view.answer.subject, "u");
}

#[test]
fn a_settlement_is_applied_once_however_often_it_is_delivered() {
    let plans = Plans::default();
    let mut core = QuotaCore::default();
    let r = core
        .reserve(&plans, "free", 100, T0 - 60_000)
        .unwrap()
        .answer;
    let first = core.settle("s:7", r.day, 10, 90, T0 - 60_000);
    assert!(first.changed);
    let used = core.state.points.used;
    assert_eq!(used, 10);
    // Redelivered (an answer lost, a restart): nothing changes, nothing to store.
    let again = core.settle("s:7", r.day, 10, 90, T0 - 60_000);
    assert!(!again.changed);
    assert_eq!(again.answer.record, None);
    assert_eq!(
        core.state.points.used, used,
        "returned is not credited twice"
    );
    // Another session's entry of the same number is another settlement.
    let r2 = core.reserve(&plans, "free", 5, T0).unwrap().answer;
    assert!(core.settle("t:7", r2.day, 0, 5, T0).changed);
    assert_eq!(core.state.points.used, used);
    // The next day forgets the past day's ids (their settlements change
    // nothing any more).
    let next = core.settle("u:1", DEC_1, 0, 0, DEC_1);
    assert_eq!(next.answer.forget_before, DEC_1);
    assert!(!core.settled.contains_key("s:7"));
}

#[test]
fn settling_needs_no_plan() {
    // The plan was removed from PLANS after the reservation: the
    // settlement still lands (it names no plan).
    let plans = Plans::default();
    let mut core = QuotaCore::default();
    let r = core.reserve(&plans, "pro", 50, T0).unwrap().answer;
    let s = core.settle("s:1", r.day, 20, 30, T0);
    assert!(s.changed);
    assert_eq!(
        (core.state.points.used, core.state.points.reserved),
        (20, 0)
    );
}
