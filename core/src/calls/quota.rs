//! Calls to a `QuotaDO` (one per subject), over JS RPC, and their answers.
//! The answers are data: the edge makes the status, the rate-limit headers
//! and `Retry-After` from them, in one place.

use serde::{Deserialize, Serialize};
use sesh_protocol::{QuotaOverview, Resource};

use super::Call;
use crate::quota::{Charged, Decided, Reserved};
use crate::time::Millis;

/// What a `QuotaDO` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum QuotaCall {
    /// One `api` unit for a request.
    Charge {
        /// The caller's plan.
        plan: String,
    },
    /// The subject's usage of every resource.
    Overview {
        /// The subject's plan.
        plan: String,
    },
    /// Take `cost` units of `resource` if they are all there.
    Check {
        /// What to take.
        resource: Resource,
        /// How many units.
        cost: u64,
        /// The subject's plan.
        plan: String,
    },
    /// Give `cost` units of `resource` back (under the last plan seen).
    Refund {
        /// What to give back.
        resource: Resource,
        /// How many units.
        cost: u64,
    },
    /// A session reserves up to `want` points units of its owner.
    Reserve {
        /// The owner's plan.
        plan: String,
        /// Units wanted.
        want: u64,
    },
    /// A session settles units it reserved: `used` recorded points,
    /// `returned` go back to the UTC day they came from.
    Settle {
        /// The settlement's id, unique for ever (the session's id and its
        /// outbox entry): the quota applies each id once.
        id: String,
        /// The UTC day of the reservation (ms at its start).
        day: Millis,
        /// Units that recorded points.
        used: u64,
        /// Units given back.
        returned: u64,
    },
    /// The plan the subject was last seen under (`free` if never).
    CurrentPlan,
}

/// What a `QuotaDO` answers, a variant per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum QuotaAnswer {
    /// To `Charge`.
    Charged(Charged),
    /// To `Overview`.
    Overview(QuotaOverview),
    /// To `Check` and `Refund`.
    Decided(Decided),
    /// To `Reserve`.
    Reserved(Reserved),
    /// To `Settle`.
    Settled,
    /// To `CurrentPlan`: the plan's name.
    Plan(String),
}

impl Call for QuotaCall {
    type Answer = QuotaAnswer;

    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::strict;
    use super::super::tests::{answer_round_trip, round_trip};
    use super::*;
    use crate::config::Plans;
    use crate::quota::QuotaCore;

    #[test]
    fn every_call_round_trips() {
        for c in [
            QuotaCall::Charge { plan: "pro".into() },
            QuotaCall::Overview {
                plan: "my plan&x=1".into(),
            },
            QuotaCall::Check {
                resource: Resource::Points,
                cost: 7,
                plan: "free".into(),
            },
            QuotaCall::Refund {
                resource: Resource::Sessions,
                cost: 1,
            },
            QuotaCall::Reserve {
                plan: "pro".into(),
                want: 3200,
            },
            QuotaCall::Settle {
                id: "s1:4".into(),
                day: 1_764_460_800_000,
                used: 3,
                returned: 10,
            },
            QuotaCall::CurrentPlan,
        ] {
            round_trip(c);
        }
    }

    #[test]
    fn every_answer_round_trips() {
        const T0: Millis = 1_764_547_140_000;
        let plans = Plans::default();
        let mut core = QuotaCore::default();
        let charged = core.charge(&plans, "free", T0).unwrap().answer;
        answer_round_trip(QuotaAnswer::Charged(charged));
        for _ in 0..20 {
            core.charge(&plans, "free", T0).unwrap();
        }
        let refused = core.charge(&plans, "free", T0).unwrap().answer;
        assert_eq!(refused.retry_after_ms, Some(1_000));
        answer_round_trip(QuotaAnswer::Charged(refused));
        let view = core.overview("u", &plans, "free", T0).unwrap().answer;
        answer_round_trip(QuotaAnswer::Overview(view));
        for (res, plan) in [(Resource::Points, "free"), (Resource::Points, "enterprise")] {
            let d = core.check(&plans, res, 1, plan, T0).unwrap().answer;
            answer_round_trip(QuotaAnswer::Decided(d));
        }
        let d = core
            .check(&plans, Resource::Sessions, 99, "free", T0)
            .unwrap();
        assert!(!d.answer.decision.allowed && d.answer.decision.error.is_some());
        answer_round_trip(QuotaAnswer::Decided(d.answer));
        let d = core
            .refund(&plans, Resource::Sessions, 1, T0)
            .unwrap()
            .answer;
        answer_round_trip(QuotaAnswer::Decided(d));
        let r = core.reserve(&plans, "free", 10, T0).unwrap().answer;
        answer_round_trip(QuotaAnswer::Reserved(r));
        answer_round_trip(QuotaAnswer::Settled);
        answer_round_trip(QuotaAnswer::Plan(core.current_plan().to_owned()));
    }

    #[test]
    fn malformed_calls_and_answers_are_refused() {
        for bad in [
            r#"{"check":{"resource":"disk","cost":1,"plan":"free"}}"#,
            r#"{"check":{"resource":"api","cost":-1,"plan":"free"}}"#,
            r#"{"charge":{}}"#,
            r#"{"charge":{"plan":"free","cost":1}}"#,
            r#"{"refund":{"resource":"api","cost":1,"plan":"free"}}"#,
            r#""currentPlan"x"#,
        ] {
            assert!(strict::<QuotaCall>(bad).is_err(), "{bad}");
        }
        for bad in [
            r#"{"reserved":{"granted":1,"day":0,"extra":0}}"#,
            r#"{"charged":{"allowed":true}}"#,
            r#"{"plan":"free","settled":null}"#,
        ] {
            assert!(strict::<QuotaAnswer>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_data_not_pasted_text() {
        let call = QuotaCall::Overview {
            plan: "a\",\"resource\":\"api".into(),
        };
        round_trip(call);
    }
}
