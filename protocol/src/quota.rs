//! Quota checks, refunds and the caller's quota overview (CONTRACT.md
//! section 7).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorDetail, Validate};
use crate::ids::is_valid_user_id;
use crate::limits::{char_len, MAX_PLAN_CHARS};

/// A metered resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// `"api"`: requests, per minute (GCRA with burst).
    Api,
    /// `"sessions"`: sessions created, per UTC calendar month.
    Sessions,
    /// `"points"`: points recorded, per UTC day.
    Points,
}

impl Resource {
    /// Every resource, in the order of the overview.
    pub const ALL: [Resource; 3] = [Resource::Api, Resource::Sessions, Resource::Points];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Api => "api",
            Resource::Sessions => "sessions",
            Resource::Points => "points",
        }
    }
}

/// The `cost` of a check when none is given.
pub const DEFAULT_COST: u64 = 1;

/// The `plan` of a check when none is given.
pub const DEFAULT_PLAN: &str = "free";

/// Body of `POST /v1/quota/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaCheck {
    /// The user id whose quota is checked.
    pub subject: String,
    /// The subject's plan name, 1-64 characters; `free` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// What is being used.
    pub resource: Resource,
    /// Units to take, at least 1; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
}

impl QuotaCheck {
    /// The cost, defaulted.
    pub fn cost(&self) -> u64 {
        self.cost.unwrap_or(DEFAULT_COST)
    }

    /// The plan name, defaulted.
    pub fn plan(&self) -> &str {
        self.plan.as_deref().unwrap_or(DEFAULT_PLAN)
    }
}

/// Message for a `subject` that is not a user id.
fn bad_subject() -> String {
    "subject must be a valid user id (1-128 characters of A-Z a-z 0-9 _ . : @ -)".to_owned()
}

impl Validate for QuotaCheck {
    fn validate(&self) -> Result<(), String> {
        if !is_valid_user_id(&self.subject) {
            return Err(bad_subject());
        }
        if let Some(plan) = &self.plan {
            if !(1..=MAX_PLAN_CHARS).contains(&char_len(plan)) {
                return Err(format!("plan must be 1-{MAX_PLAN_CHARS} characters"));
            }
        }
        if self.cost == Some(0) {
            return Err("cost must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Body of `POST /v1/quota/refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaRefund {
    /// The user id whose units come back.
    pub subject: String,
    /// Which resource.
    pub resource: Resource,
    /// Units to give back, at least 1.
    pub cost: u64,
}

impl Validate for QuotaRefund {
    fn validate(&self) -> Result<(), String> {
        if !is_valid_user_id(&self.subject) {
            return Err(bad_subject());
        }
        if self.cost == 0 {
            return Err("cost must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Answer to `POST /v1/quota/check` (200 when allowed, 429 when not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaDecision {
    /// Whether the units were taken.
    pub allowed: bool,
    /// The plan's limit in the resource's window; `null` when unlimited.
    pub limit: Option<u64>,
    /// Units available now; `null` when unlimited.
    pub remaining: Option<u64>,
    /// Milliseconds until the allowance is whole again; `null` when unlimited.
    pub reset_ms: Option<u64>,
    /// When denied: milliseconds until the same check could pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// When denied: the usual error object (`rate_limited` or `quota_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// One resource in the `GET /v1/quota` overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceUsage {
    /// Limit in the window; `null` when unlimited.
    pub limit: Option<u64>,
    /// Units used in the current window.
    pub used: u64,
    /// Units available now; `null` when unlimited.
    pub remaining: Option<u64>,
    /// Milliseconds until the allowance is whole again; `null` when unlimited.
    pub reset_ms: Option<u64>,
    /// When the window resets, RFC 3339 UTC; `null` when unlimited.
    pub resets_at: Option<String>,
    /// `points` only: units held by live sessions and not yet used (they
    /// count against `remaining` but not in `used`). Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
}

/// Answer to `GET /v1/quota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaOverview {
    /// The caller.
    pub subject: String,
    /// The caller's plan.
    pub plan: String,
    /// API requests per minute.
    pub api: ResourceUsage,
    /// Sessions per UTC month.
    pub sessions: ResourceUsage,
    /// Points per UTC day.
    pub points: ResourceUsage,
}

/// Answer to `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
}

impl Health {
    /// `{"status":"ok"}`.
    pub fn ok() -> Self {
        Health {
            status: "ok".to_owned(),
        }
    }
}

object_only!(
    QuotaCheck: "a quota check object",
    QuotaRefund: "a quota refund object",
    QuotaDecision: "a quota decision object",
    ResourceUsage: "a resource usage object",
    QuotaOverview: "a quota overview object",
    Health: "a health object",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{parse_body, BodyError, ErrorCode};

    fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).expect("serialize");
        let back: T = serde_json::from_str(&json).expect("parse back");
        assert_eq!(&back, value, "{json}");
        json
    }

    #[test]
    fn check_parsing_and_defaults() {
        let c: QuotaCheck =
            parse_body(br#"{"subject":"alice","resource":"points"}"#).expect("valid");
        assert_eq!(
            (c.cost(), c.plan(), c.resource),
            (1, "free", Resource::Points)
        );
        let c: QuotaCheck =
            parse_body(br#"{"subject":"alice","plan":"pro","resource":"api","cost":5}"#)
                .expect("valid");
        assert_eq!((c.cost(), c.plan()), (5, "pro"));
        round_trip(&c);
    }

    #[test]
    fn check_rejections() {
        for (bad, needle) in [
            (&br#"{"subject":"a b","resource":"api"}"#[..], "subject"),
            (br#"{"subject":"","resource":"api"}"#, "subject"),
            (br#"{"subject":"a","resource":"api","cost":0}"#, "cost"),
            (
                br#"{"subject":"a","resource":"api","cost":-1}"#,
                "invalid value",
            ),
            (
                br#"{"subject":"a","resource":"api","cost":1.5}"#,
                "invalid type",
            ),
            (br#"{"subject":"a","resource":"api","plan":""}"#, "plan"),
            (br#"{"subject":"a","resource":"cpu"}"#, "unknown variant"),
            (br#"{"subject":"a"}"#, "missing field `resource`"),
            (
                br#"{"subject":"a","resource":"api","x":1}"#,
                "unknown field",
            ),
        ] {
            match parse_body::<QuotaCheck>(bad) {
                Err(BodyError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let long_plan = QuotaCheck {
            subject: "a".into(),
            plan: Some("p".repeat(65)),
            resource: Resource::Api,
            cost: None,
        };
        assert!(long_plan.validate().is_err());
    }

    #[test]
    fn refund_rules() {
        let r: QuotaRefund =
            parse_body(br#"{"subject":"svc:x","resource":"sessions","cost":2}"#).expect("valid");
        assert_eq!(r.resource, Resource::Sessions);
        round_trip(&r);
        assert!(matches!(
            parse_body::<QuotaRefund>(br#"{"subject":"a","resource":"api","cost":0}"#),
            Err(BodyError::Invalid(m)) if m.contains("cost")
        ));
        assert!(matches!(
            parse_body::<QuotaRefund>(br#"{"subject":"a","resource":"api"}"#),
            Err(BodyError::Invalid(m)) if m.contains("missing field `cost`")
        ));
        assert!(matches!(
            parse_body::<QuotaRefund>(br#"{"subject":"a/b","resource":"api","cost":1}"#),
            Err(BodyError::Invalid(m)) if m.contains("subject")
        ));
    }

    #[test]
    fn decision_wire_shapes() {
        let allowed = QuotaDecision {
            allowed: true,
            limit: Some(60),
            remaining: Some(59),
            reset_ms: Some(1000),
            retry_after_ms: None,
            error: None,
        };
        assert_eq!(
            round_trip(&allowed),
            r#"{"allowed":true,"limit":60,"remaining":59,"resetMs":1000}"#
        );
        let unlimited = QuotaDecision {
            allowed: true,
            limit: None,
            remaining: None,
            reset_ms: None,
            retry_after_ms: None,
            error: None,
        };
        assert_eq!(
            round_trip(&unlimited),
            r#"{"allowed":true,"limit":null,"remaining":null,"resetMs":null}"#
        );
        let denied = QuotaDecision {
            allowed: false,
            limit: Some(30),
            remaining: Some(0),
            reset_ms: Some(86_400_000),
            retry_after_ms: Some(3_600_000),
            error: Some(ErrorDetail::new(
                ErrorCode::QuotaExceeded,
                "monthly session quota reached",
            )),
        };
        assert_eq!(
            round_trip(&denied),
            r#"{"allowed":false,"limit":30,"remaining":0,"resetMs":86400000,"retryAfterMs":3600000,"error":{"code":"quota_exceeded","message":"monthly session quota reached"}}"#
        );
    }

    #[test]
    fn overview_and_health_round_trip() {
        let usage = |limit: Option<u64>, used| ResourceUsage {
            limit,
            used,
            remaining: limit.map(|l| l - used),
            reset_ms: limit.map(|_| 500),
            resets_at: limit.map(|_| "2024-11-01T00:00:00Z".to_owned()),
            reserved: None,
        };
        let overview = QuotaOverview {
            subject: "alice".into(),
            plan: "enterprise".into(),
            api: usage(Some(6000), 1),
            sessions: usage(None, 4),
            points: ResourceUsage {
                reserved: Some(200),
                ..usage(None, 0)
            },
        };
        let json = round_trip(&overview);
        assert!(json.contains(r#""reserved":200"#), "{json}");
        assert!(json.contains(
            r#""sessions":{"limit":null,"used":4,"remaining":null,"resetMs":null,"resetsAt":null}"#
        ));
        assert_eq!(round_trip(&Health::ok()), r#"{"status":"ok"}"#);
    }

    #[test]
    fn resource_strings() {
        for r in Resource::ALL {
            assert_eq!(
                serde_json::to_string(&r).expect("serialize"),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
