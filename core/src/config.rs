//! Configuration from Worker vars, parsed without the runtime so it can be
//! tested natively: subscription plans (`PLANS`) and the tuning knobs.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Limits of one subscription plan (CONTRACT.md section 7). `None` means
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Sustained API requests per minute.
    pub api_per_min: u64,
    /// API burst: requests that may be made at once from a full bucket.
    pub api_burst: u64,
    /// Sessions created per UTC month.
    pub sessions_per_month: Option<u64>,
    /// Points recorded per UTC day.
    pub points_per_day: Option<u64>,
    /// Live connections per session.
    pub participants_per_session: u64,
}

impl Plan {
    const FREE: Plan = Plan {
        api_per_min: 60,
        api_burst: 20,
        sessions_per_month: Some(30),
        points_per_day: Some(10_000),
        participants_per_session: 5,
    };
    const PRO: Plan = Plan {
        api_per_min: 600,
        api_burst: 100,
        sessions_per_month: Some(1_000),
        points_per_day: Some(1_000_000),
        participants_per_session: 25,
    };
    const ENTERPRISE: Plan = Plan {
        api_per_min: 6_000,
        api_burst: 1_000,
        sessions_per_month: None,
        points_per_day: None,
        participants_per_session: 100,
    };
}

/// Bounds that keep the quota arithmetic exact: the `api` emission interval
/// (60 s / `api_per_min`, in ns) never rounds to zero, a full burst of
/// emission intervals fits a u64 of nanoseconds with the clock added, and
/// counters stay below 2^53 so JSON clients read them exactly.
const MAX_API_PER_MIN: u64 = 60_000_000;
const MAX_API_BURST: u64 = 1_000_000_000;
const MAX_BURST_SPAN_NS: u64 = 1_000_000_000_000_000_000;
const MAX_COUNTER: u64 = 1 << 53;
const MAX_PARTICIPANTS: u64 = 100_000;

impl Plan {
    /// Refuses values that would divide by zero or overflow later, with
    /// the reason (for the operator's log).
    fn check(&self) -> Result<(), String> {
        let in_range = |name: &str, v: u64, max: u64| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be from 1 to {max}, not {v}"))
            }
        };
        in_range("api_per_min", self.api_per_min, MAX_API_PER_MIN)?;
        in_range("api_burst", self.api_burst, MAX_API_BURST)?;
        in_range(
            "participants",
            self.participants_per_session,
            MAX_PARTICIPANTS,
        )?;
        let emission_ns = 60_000_000_000 / self.api_per_min;
        if self.api_burst.saturating_mul(emission_ns) > MAX_BURST_SPAN_NS {
            return Err("api_burst / api_per_min spans more than 31 years".into());
        }
        for (name, v) in [
            ("sessions", self.sessions_per_month),
            ("points", self.points_per_day),
        ] {
            if v.is_some_and(|v| v > MAX_COUNTER) {
                return Err(format!("{name} must be at most {MAX_COUNTER} (or null)"));
            }
        }
        Ok(())
    }
}

/// The plan table, looked up by a token's `plan` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans(BTreeMap<String, Plan>);

/// One plan as written in `PLANS`: every field optional, falling back to the
/// default plan of the same name (or `free` for a new name). `null` in a
/// counter field means unlimited. Field names match the bench's reference
/// implementation so one `PLANS` value configures both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanPatch {
    api_per_min: Option<u64>,
    api_burst: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    sessions: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    points: Option<Option<u64>>,
    participants: Option<u64>,
}

// Distinguishes an absent field (keep the default) from `null` (unlimited).
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

impl Default for Plans {
    fn default() -> Self {
        Plans(BTreeMap::from([
            ("free".to_owned(), Plan::FREE),
            ("pro".to_owned(), Plan::PRO),
            ("enterprise".to_owned(), Plan::ENTERPRISE),
        ]))
    }
}

impl Plans {
    /// Parses a `PLANS` value over the defaults. An empty or absent value
    /// gives the defaults. Errors are one line for the operator's log.
    pub fn parse(src: Option<&str>) -> Result<Plans, String> {
        let mut plans = Plans::default();
        let Some(src) = src.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(plans);
        };
        let patches: BTreeMap<String, PlanPatch> =
            serde_json::from_str(src).map_err(|e| format!("PLANS is not valid: {e}"))?;
        for (name, p) in patches {
            let base = plans.0.get(&name).copied().unwrap_or(Plan::FREE);
            let plan = Plan {
                api_per_min: p.api_per_min.unwrap_or(base.api_per_min),
                api_burst: p.api_burst.unwrap_or(base.api_burst),
                sessions_per_month: p.sessions.unwrap_or(base.sessions_per_month),
                points_per_day: p.points.unwrap_or(base.points_per_day),
                participants_per_session: p.participants.unwrap_or(base.participants_per_session),
            };
            plan.check()
                .map_err(|why| format!("PLANS: plan {name:?}: {why}"))?;
            plans.0.insert(name, plan);
        }
        Ok(plans)
    }

    /// The deployment's plan table from its `PLANS` var: the one policy
    /// for a malformed value, used by the gateway and every object. It is
    /// reported to `log` and the default plans (the contract's) are used,
    /// as for every other var ([`Tuning::from_vars`]): each reader reads
    /// the var once (per isolate, or per object lifetime), so the error is
    /// logged once there. Why not refuse with 500: a var only changes with
    /// a deployment, and a typo in it would otherwise take every request
    /// of every user down, sockets and sessions in flight included, where
    /// the defaults keep the service to the documented limits; refusing in
    /// some places and not others (as before) let the quota object and the
    /// session disagree about one plan. A token naming a plan only the
    /// broken value defined is refused as an invalid claim.
    pub fn from_var(src: Option<&str>, log: impl FnOnce(&str)) -> Plans {
        Plans::parse(src).unwrap_or_else(|e| {
            log(&e);
            Plans::default()
        })
    }

    /// The plan of that name, if configured.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.0.get(name)
    }

    /// Every plan's name, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Tuning knobs from vars, with the contract's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Flush to D1 once this many points are pending (`FLUSH_BATCH`).
    pub flush_batch: u32,
    /// Flush to D1 this long after the first pending point
    /// (`FLUSH_INTERVAL_MS`).
    pub flush_interval_ms: u64,
    /// A user with no connection and no heartbeat for this long is offline
    /// (`PRESENCE_TTL_MS`).
    pub presence_ttl_ms: u64,
    /// Points replayed per `resume` (`REPLAY_PAGE`, default 1000).
    pub replay_page: u64,
    /// Live sockets one user may hold in one session (`SEATS_PER_USER`,
    /// default 3).
    pub seats_per_user: u64,
    /// Frames per second of all of a session's sockets together
    /// (`SESSION_FRAMES_PER_SEC`, default 10000).
    pub session_frames_per_sec: u32,
    /// Burst of all of a session's sockets together
    /// (`SESSION_FRAMES_BURST`, default 10000).
    pub session_frames_burst: u32,
    /// Socket points that may wait for a points reservation at once
    /// (`WAITING_POINTS_MAX`, default 1000); beyond it a point gets
    /// `rate_limited`.
    pub waiting_points_max: u64,
    /// Bytes of the points waiting for a reservation (`WAITING_BYTES_MAX`,
    /// default 1 MiB).
    pub waiting_bytes_max: u64,
    /// Points units a session holds without a point or a socket before it
    /// gives them back (`UNITS_IDLE_MS`, default 60000).
    pub units_idle_ms: u64,
    /// Points units spent are settled as used at most this often
    /// (`UNITS_SETTLE_MS`, default 1000), and within this long of being
    /// spent.
    pub units_settle_ms: u64,
    /// Distinct point kinds a session holds (`MAX_KINDS`, default 1000).
    pub max_kinds: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            flush_batch: 10,
            flush_interval_ms: 2_000,
            presence_ttl_ms: 60_000,
            replay_page: 1_000,
            seats_per_user: 3,
            session_frames_per_sec: 10_000,
            session_frames_burst: 10_000,
            waiting_points_max: 1_000,
            waiting_bytes_max: 1 << 20,
            units_idle_ms: 60_000,
            units_settle_ms: 1_000,
            max_kinds: 1_000,
        }
    }
}

impl Tuning {
    /// Builds the knobs from a var lookup; a missing var takes the default,
    /// a malformed one is an error naming it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Tuning, String> {
        let d = Tuning::default();
        let small = |name: &str, default: u32| -> Result<u32, String> {
            positive(&var, name, u64::from(default))?
                .try_into()
                .map_err(|_| format!("{name} is too large"))
        };
        Ok(Tuning {
            flush_batch: small("FLUSH_BATCH", d.flush_batch)?,
            flush_interval_ms: positive(&var, "FLUSH_INTERVAL_MS", d.flush_interval_ms)?,
            presence_ttl_ms: positive(&var, "PRESENCE_TTL_MS", d.presence_ttl_ms)?,
            replay_page: positive(&var, "REPLAY_PAGE", d.replay_page)?,
            seats_per_user: positive(&var, "SEATS_PER_USER", d.seats_per_user)?,
            session_frames_per_sec: small("SESSION_FRAMES_PER_SEC", d.session_frames_per_sec)?,
            session_frames_burst: small("SESSION_FRAMES_BURST", d.session_frames_burst)?,
            waiting_points_max: positive(&var, "WAITING_POINTS_MAX", d.waiting_points_max)?,
            waiting_bytes_max: positive(&var, "WAITING_BYTES_MAX", d.waiting_bytes_max)?,
            units_idle_ms: positive(&var, "UNITS_IDLE_MS", d.units_idle_ms)?,
            units_settle_ms: positive(&var, "UNITS_SETTLE_MS", d.units_settle_ms)?,
            max_kinds: positive(&var, "MAX_KINDS", d.max_kinds)?,
        })
    }
}

fn positive(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
) -> Result<u64, String> {
    match var(name) {
        None => Ok(default),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(format!("{name} must be a positive integer")),
        },
    }
}

/// The `ALLOWED_ORIGINS` var: a comma-separated list of origins, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedOrigins {
    list: Option<Vec<String>>,
}

impl AllowedOrigins {
    /// Parses the var; absent or blank means "not configured".
    pub fn parse(src: Option<&str>) -> AllowedOrigins {
        let list = src.map(str::trim).filter(|s| !s.is_empty()).map(|s| {
            s.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect()
        });
        AllowedOrigins { list }
    }

    /// Whether a browser `Origin` may call the API cross-origin.
    pub fn allows(&self, origin: &str) -> bool {
        self.list
            .as_ref()
            .is_some_and(|l| l.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin)))
    }

    /// Whether a browser page of `origin` may open a session's WebSocket.
    /// The same rule as CORS, so an empty list lets no other site's page
    /// in (a WebSocket is not subject to CORS, so the gateway is the only
    /// guard); a page of the Worker's own origin (the console) is always
    /// admitted.
    pub fn admits_socket(&self, origin: &str, same_origin: bool) -> bool {
        same_origin || self.allows(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_table() {
        let p = Plans::parse(None).unwrap();
        assert_eq!(p.get("free"), Some(&Plan::FREE));
        assert_eq!(p.get("free").unwrap().api_burst, 20);
        assert_eq!(p.get("pro").unwrap().participants_per_session, 25);
        assert_eq!(p.get("enterprise").unwrap().points_per_day, None);
        assert_eq!(p.get("gold"), None);
        assert_eq!(Plans::parse(Some("  ")), Ok(Plans::default()));
    }

    #[test]
    fn plans_patch_over_defaults() {
        let p = Plans::parse(Some(
            r#"{"free":{"api_burst":3,"points":null},"gold":{"api_per_min":120}}"#,
        ))
        .unwrap();
        let free = p.get("free").unwrap();
        assert_eq!(free.api_burst, 3);
        assert_eq!(free.api_per_min, 60);
        assert_eq!(free.points_per_day, None);
        assert_eq!(free.sessions_per_month, Some(30));
        let gold = p.get("gold").unwrap();
        assert_eq!(gold.api_per_min, 120);
        assert_eq!(gold.api_burst, 20);
        assert!(p.get("pro").is_some());
    }

    #[test]
    fn malformed_plans_are_errors_not_defaults() {
        for bad in [
            "{",
            "[]",
            r#"{"free":{"api_per_minute":1}}"#,
            r#"{"free":{"api_burst":-1}}"#,
            r#"{"free":{"api_burst":0}}"#,
            r#"{"free":"x"}"#,
            r#"{"free":{"api_per_min":0}}"#,
            r#"{"free":{"participants":0}}"#,
            // Would make the emission interval 0 ns: a division by zero.
            r#"{"free":{"api_per_min":100000000000}}"#,
            // A burst whose span overflows the nanosecond clock.
            r#"{"free":{"api_per_min":1,"api_burst":999999999}}"#,
            r#"{"free":{"api_burst":18446744073709551615}}"#,
            r#"{"free":{"points":18446744073709551615}}"#,
        ] {
            let e = Plans::parse(Some(bad)).unwrap_err();
            assert!(e.starts_with("PLANS"), "{bad}: {e}");
        }
        // The edges themselves are fine.
        let ok = r#"{"free":{"api_per_min":60000000,"api_burst":1000,"points":9007199254740992}}"#;
        assert!(Plans::parse(Some(ok)).is_ok());
    }

    #[test]
    fn a_malformed_plans_var_is_logged_once_and_the_defaults_used() {
        let mut logged = Vec::new();
        let plans = Plans::from_var(Some("{"), |e| logged.push(e.to_owned()));
        assert_eq!(plans, Plans::default());
        assert_eq!(logged.len(), 1);
        assert!(logged[0].starts_with("PLANS"), "{}", logged[0]);
        let custom = r#"{"team":{"api_per_min":5}}"#;
        let plans = Plans::from_var(Some(custom), |e| panic!("{e}"));
        assert_eq!(plans.get("team").map(|p| p.api_per_min), Some(5));
        assert_eq!(Plans::from_var(None, |e| panic!("{e}")), Plans::default());
    }

    #[test]
    fn tuning_from_vars() {
        let t = Tuning::from_vars(|_| None).unwrap();
        assert_eq!(t, Tuning::default());
        let t = Tuning::from_vars(|k| (k == "PRESENCE_TTL_MS").then(|| "1500".to_owned())).unwrap();
        assert_eq!(t.presence_ttl_ms, 1500);
        let e = Tuning::from_vars(|k| (k == "FLUSH_BATCH").then(|| "0".to_owned())).unwrap_err();
        assert!(e.contains("FLUSH_BATCH"));
        assert!(Tuning::from_vars(|_| Some("ten".to_owned())).is_err());
        let t = Tuning::from_vars(|k| match k {
            "REPLAY_PAGE" => Some("5".to_owned()),
            "SEATS_PER_USER" => Some("2".to_owned()),
            "SESSION_FRAMES_PER_SEC" => Some("300".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (t.replay_page, t.seats_per_user, t.session_frames_per_sec),
            (5, 2, 300)
        );
        assert_eq!(t.waiting_points_max, 1_000);
        let e = Tuning::from_vars(|k| (k == "SEATS_PER_USER").then(|| "0".to_owned())).unwrap_err();
        assert!(e.contains("SEATS_PER_USER"));
    }

    #[test]
    fn allowed_origins() {
        let a = AllowedOrigins::parse(Some("https://app.example.com, http://localhost:3000/"));
        assert!(a.allows("https://app.example.com"));
        assert!(a.allows("http://localhost:3000"));
        assert!(!a.allows("https://evil.example.com"));
        let none = AllowedOrigins::parse(None);
        assert!(!none.allows("https://app.example.com"));
        // Sockets follow CORS: an empty list admits only the Worker's own
        // pages, a list only its origins.
        assert!(!none.admits_socket("https://app.example.com", false));
        assert!(none.admits_socket("http://127.0.0.1:8787", true));
        assert!(a.admits_socket("https://app.example.com", false));
        assert!(!a.admits_socket("https://evil.example.com", false));
        assert!(AllowedOrigins::parse(Some("*")).allows("https://any.example"));
    }
}
