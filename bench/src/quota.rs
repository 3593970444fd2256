//! Quota check load generator and checker: the job of
//! `../shared/bench/quotagen.mjs`, in Rust.
//!
//! Load mode: `concurrency` checks (`POST /v1/quota/check`) in flight,
//! round-robin over `subjects` fresh subjects, for `seconds`. Exact mode
//! (`exact` = R): a fresh subject is brought to `remaining == R`, 2R cost-1
//! checks go out at once over 2R connections, then one more (see
//! `--exact`).
//!
//! Errors, as quotagen.mjs counts them (see [`Checker`]), and one more:
//! checks still unanswered after the drain (`unanswered_at_end`).

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};

use super::drive::{self, closed_loop, fail, open_all, Answer, Errors, Response};
use super::summary::{fields, spread};
use super::{non_empty, non_negative, positive, seconds, Served};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Api,
    Sessions,
    Points,
}

impl Resource {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        ["api", "sessions", "points"][self as usize]
    }
}

/// The quota checks (the job and checks of quotagen.mjs).
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Window in seconds
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub seconds: f64,
    /// Fresh subjects, round-robin (1 = one hot subject)
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub subjects: usize,
    /// Checks in flight, over keep-alive connections
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub concurrency: usize,
    /// The checks' plan [default: enterprise; free with --exact]
    #[arg(long, value_parser = non_empty)]
    pub plan: Option<String>,
    /// The checked resource [default: api; points with --exact]
    #[arg(long, value_enum)]
    pub resource: Option<Resource>,
    /// Units per check
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub cost: u64,
    /// Caller tokens to rotate
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub callers: usize,
    /// Exactness instead of load: bring a fresh subject to remaining == R,
    /// fire 2R cost-1 checks at once over 2R connections, then one more;
    /// exact_ok needs exactly R admitted (remaining R-1..0 once each), R
    /// denied and a final 429 with remaining 0
    #[arg(long, value_name = "R", value_parser = positive)]
    pub exact: Option<usize>,
    /// Subjects are X-<i> [default: qg-<random>]
    #[arg(long, value_name = "X", value_parser = non_empty)]
    pub subject_prefix: Option<String>,
    /// Wait for checks in flight after the window
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub drain_seconds: f64,
}

impl Options {
    /// Exact mode's R; 0 = load mode.
    pub fn exact(&self) -> usize {
        self.exact.unwrap_or(0)
    }

    pub fn plan(&self) -> &str {
        let default = if self.exact() > 0 {
            "free"
        } else {
            "enterprise"
        };
        self.plan.as_deref().unwrap_or(default)
    }

    pub fn resource(&self) -> Resource {
        let default = [Resource::Api, Resource::Points][usize::from(self.exact() > 0)];
        self.resource.unwrap_or(default)
    }

    /// The combinations quotagen.mjs refuses.
    pub fn validate(&self) -> Result<()> {
        if self.exact() > 0 && self.resource() == Resource::Api {
            bail!("--exact needs a counter resource (points or sessions)");
        }
        Ok(())
    }
}

// ---- checks --------------------------------------------------------------

/// Parameter `key` of `"item";k=v;k=v` as quotagen.mjs reads it: a
/// JavaScript `Number` (empty is 0, missing or unparsable NaN).
fn sf_param(v: &str, key: &str) -> f64 {
    let value = v.split(';').skip(1).map(str::trim).filter_map(|p| {
        let mut kv = p.split('=');
        (kv.next() == Some(key)).then(|| kv.next().map(str::trim))
    });
    match value.last().flatten() {
        Some("") => 0.0,
        Some(x) => x.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

/// The `RateLimit-Policy` / `RateLimit` pair describes an `api` policy:
/// `"api";q=<per min>;w=60` and `"api";r=<available, integer, 0..=q>;t=<0..=60>`.
pub fn headers_ok(policy: Option<&str>, limit: Option<&str>) -> bool {
    let (Some(p), Some(l)) = (policy, limit) else {
        return false;
    };
    let api = |v: &str| v.split(';').next().map(str::trim) == Some("\"api\"");
    let (q, w, r, t) = (
        sf_param(p, "q"),
        sf_param(p, "w"),
        sf_param(l, "r"),
        sf_param(l, "t"),
    );
    api(p)
        && api(l)
        && q > 0.0
        && w == 60.0
        && r.fract() == 0.0
        && (0.0..=q).contains(&r)
        && (0.0..=60.0).contains(&t)
}

/// A JavaScript safe integer >= 0.
fn count(v: &Value) -> Option<u64> {
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_991.0).then_some(f as u64)
}

/// A well-formed check answer (`remaining` and `limit` `None` when unlimited).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
}

/// `Err(code)` unless `ok`.
fn ensure(ok: bool, code: &str) -> Result<(), String> {
    ok.then_some(()).ok_or_else(|| code.to_owned())
}

/// Checks answers as quotagen.mjs does: errors are statuses other than
/// 200/429, bodies that are not JSON or lack `allowed`/`limit`/`remaining`/
/// `resetMs`, `allowed` not matching the status, a 429 without `error`,
/// missing or malformed `RateLimit`/`RateLimit-Policy` headers, a counter's
/// `remaining` repeated among one subject's admitted answers
/// (over-admission), transport errors; a 429 without `allowed` (a limit in
/// front of the check) is `http_429_<code>`.
#[derive(Debug)]
pub struct Checker {
    resource: Resource,
    /// Per subject: the `remaining` values of its admitted counter checks.
    seen: HashMap<String, HashSet<u64>>,
}

impl Checker {
    pub fn new(resource: Resource) -> Checker {
        let seen = HashMap::new();
        Checker { resource, seen }
    }

    /// The decision when `answer` is a well-formed check answer (also when
    /// it shows over-admission, so that what the server admitted counts).
    pub fn check(&mut self, a: &Answer, subject: &str, errors: &mut Errors) -> Option<Decision> {
        let d = a.as_ref().map_err(|e| format!("transport_{e}"));
        let d = d
            .and_then(Self::decision)
            .map_err(|e| fail(errors, &e))
            .ok()?;
        if d.allowed && d.limit.is_some() && self.resource != Resource::Api {
            let seen = self.seen.entry(subject.to_owned()).or_default();
            if !seen.insert(d.remaining.unwrap_or_default()) {
                // Over-admission: still counted as admitted.
                fail(errors, "duplicate_remaining");
            }
        }
        Some(d)
    }

    fn decision(r: &Response) -> Result<Decision, String> {
        let status = r.status;
        ensure(status == 200 || status == 429, &format!("http_{status}"))?;
        let b: Value = serde_json::from_slice(&r.body).map_err(|_| "bad_json")?;
        ensure(b.is_object() || b.is_array(), "bad_json")?;
        let Some(allowed) = b.get("allowed").and_then(Value::as_bool) else {
            let code = b["error"]["code"].as_str().unwrap_or("without_allowed");
            return Err(match status {
                429 => format!("http_429_{code}"),
                _ => "body_without_allowed".into(),
            });
        };
        ensure(allowed == (status == 200), "allowed_status_mismatch")?;
        let (lim, rem) = (b.get("limit"), b.get("remaining"));
        let unlimited = matches!((lim, rem), (Some(Value::Null), Some(Value::Null)));
        let (lim, rem) = (lim.and_then(count), rem.and_then(count));
        let limited = matches!((lim, rem), (Some(l), Some(r)) if r <= l);
        ensure(unlimited || limited, "bad_limit_remaining")?;
        ensure(b.get("resetMs").and_then(count).is_some(), "bad_resetMs")?;
        let retry_ok = b.get("retryAfterMs").is_none_or(|v| count(v).is_some());
        ensure(retry_ok, "bad_retryAfterMs")?;
        let error_ok = status == 200 || b["error"]["code"].is_string();
        ensure(error_ok, "429_without_error")?;
        let (p, l) = (r.header("ratelimit-policy"), r.header("ratelimit"));
        ensure(headers_ok(p, l), "bad_ratelimit_headers")?;
        Ok(Decision {
            allowed,
            remaining: rem,
            limit: lim,
        })
    }
}

// ---- run -----------------------------------------------------------------

impl super::Gen for Options {
    const TITLE: &'static str = "bench quota";

    fn shape(&self) -> Value {
        let (plan, resource, r) = (self.plan(), self.resource().name(), self.exact());
        if r > 0 {
            return json!({"exact_R": r, "fired": 2 * r, "plan": plan, "resource": resource});
        }
        let (n, c, secs, cost) = (self.subjects, self.concurrency, self.seconds, self.cost);
        json!({"subjects": n, "concurrency": c, "seconds": secs, "plan": plan,
            "resource": resource, "cost": cost, "callers": self.callers})
    }

    fn metrics(&self) -> &'static str {
        match self.exact() {
            0 => {
                "checks_per_s allowed denied p50_ms p99_ms max_ms errors cpu_workerd_pct \
            cpu_proxy_pct cpu_node_pct cpu_loadgen_pct cpu_machine_pct \
            workerd_cpu_us_per_check"
            }
            _ => "exact_ok allowed denied final_remaining p50_ms p99_ms errors",
        }
    }

    /// The same service tokens for every target: the rust worker needs
    /// them, quota-ref ignores them.
    fn for_target(&self, _rust: bool, secret: Option<&str>) -> (Self, Option<String>) {
        (self.clone(), secret.map(str::to_owned))
    }

    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>> {
        Ok(vec![run(self, &s.url, s.secret.as_deref(), &s.pids)])
    }
}

struct Gen<'a> {
    opts: &'a Options,
    client: Client,
    base: String,
    /// The callers' `Authorization` headers, taken in turn.
    auth: Vec<String>,
    next_auth: std::cell::Cell<usize>,
}

impl Gen<'_> {
    fn body(&self, subject: &str, cost: u64) -> String {
        let (plan, resource) = (self.opts.plan(), self.opts.resource().name());
        json!({"subject": subject, "plan": plan, "resource": resource, "cost": cost}).to_string()
    }

    /// A check request, with the next caller's token.
    fn request(&self, body: &str) -> RequestBuilder {
        let rb = self.client.post(format!("{}/v1/quota/check", self.base));
        let rb = rb.header("content-type", "application/json");
        let rb = rb.body(body.to_owned());
        let Some(auth) = self.auth.get(self.next_auth.get() % self.auth.len().max(1)) else {
            return rb;
        };
        self.next_auth.set(self.next_auth.get() + 1);
        rb.header("authorization", auth)
    }

    fn prefix(&self) -> String {
        let random = || format!("qg-{}", drive::tag(8));
        self.opts.subject_prefix.clone().unwrap_or_else(random)
    }
}

/// Runs the generator against `url`, with service tokens (plan
/// enterprise, one per caller: `quotagen`, or `quotagen-1..K`) minted with
/// `secret` or no `Authorization` header (quota-ref accepts anything):
/// quotagen.mjs' JSON line (a run that cannot be carried out has `fatal`).
pub fn run(opts: &Options, url: &str, secret: Option<&str>, watch_pids: &[u32]) -> String {
    let mut errors = Errors::new();
    let line = (|| {
        let ids: Vec<String> = match opts.callers {
            1 => vec!["quotagen".into()],
            k => (1..=k).map(|i| format!("quotagen-{i}")).collect(),
        };
        let mint = |k, id: &String| xtask::mint(k, id, "enterprise", Some("service"), 3600);
        let auth = secret.map_or(Ok(vec![]), |k| ids.iter().map(|id| mint(k, id)).collect())?;
        let gen = Gen {
            opts,
            client: drive::client()?,
            base: url.to_owned(),
            auth: auth.into_iter().map(|t| format!("Bearer {t}")).collect(),
            next_auth: Default::default(),
        };
        let watch = (watch_pids, super::port_of(url)?);
        drive::block_on(async {
            match opts.exact() {
                0 => load_mode(&gen, watch).await,
                _ => exact_mode(&gen, &mut errors).await,
            }
        })?
    })();
    line.unwrap_or_else(|e| {
        let mode = if opts.exact() > 0 { "exact" } else { "load" };
        let (n, exact_ok) = (
            errors.values().sum::<u64>() + 1,
            (opts.exact() > 0).then_some(false),
        );
        let mut v = fields! {"mode": mode, "fatal": format!("{e:#}"), "errors": n,
        "error_detail": errors, "exact_ok": exact_ok, "generator": "xtask"};
        if exact_ok.is_none() {
            v = v.replace(",\"exact_ok\":null", "");
        }
        v
    })
}

async fn load_mode(gen: &Gen<'_>, watch: (&[u32], u16)) -> Result<String> {
    let opts = gen.opts;
    open_all(&gen.client, &gen.base, opts.concurrency).await?;
    let prefix = gen.prefix();
    let subjects: Vec<String> = (0..opts.subjects)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let bodies: Vec<String> = subjects.iter().map(|s| gen.body(s, opts.cost)).collect();
    let (mut checker, mut allowed, mut denied) = (Checker::new(opts.resource()), 0u64, 0u64);
    let mut t = closed_loop(
        opts.concurrency,
        (opts.seconds, None, opts.drain_seconds),
        watch,
        |i| {
            let s = (i % subjects.len() as u64) as usize;
            (gen.request(&bodies[s]), s)
        },
        |s, a, counted, t| match checker.check(a, &subjects[s], &mut t.errors) {
            Some(d) if counted && d.allowed => allowed += 1,
            Some(_) if counted => denied += 1,
            _ => {}
        },
    )
    .await;
    let [p50, p99, max] = spread(&mut t.lat);
    let callers = (!gen.auth.is_empty()).then_some(gen.auth.len());
    Ok(fields! {
        "checks_per_s": ((allowed + denied) as f64 / opts.seconds).round() as u64,
        "allowed": allowed, "denied": denied, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "errors": t.errors.values().sum::<u64>(), "subjects": opts.subjects,
        "concurrency": opts.concurrency, "seconds": opts.seconds, "plan": opts.plan(),
        "resource": opts.resource().name(), "cost": opts.cost, "callers": callers,
        "answers_total": t.answers, "error_detail": t.errors, "cpu_pct": t.cpu,
        "generator": "xtask",
    })
}

async fn exact_mode(gen: &Gen<'_>, errors: &mut Errors) -> Result<String> {
    let opts = gen.opts;
    let r = opts.exact() as u64;
    let subject = format!("{}-exact", gen.prefix());
    let (plan, resource) = (opts.plan(), opts.resource().name());
    let mut checker = Checker::new(opts.resource());
    // One check of the set-up; an error says what failed.
    let mut step = async |cost: u64, what: &str| {
        let answer = drive::send(gen.request(&gen.body(&subject, cost))).await;
        let d = checker.check(&answer, &subject, errors);
        d.ok_or_else(|| match answer {
            Err(e) => anyhow!("{what}: {e}"),
            Ok(a) => anyhow!("{what}: {}", a.head()),
        })
    };
    let mut b = step(1, "first check (cost 1)").await?;
    let Some(remaining) = b.remaining.filter(|_| b.allowed && b.limit.is_some()) else {
        bail!("plan {plan} has no finite {resource} limit or denied: {b:?}");
    };
    if remaining < r {
        bail!("only {remaining} {resource} left after the first check; --exact {r} needs more");
    }
    if remaining > r {
        let cost = remaining - r;
        b = step(cost, &format!("check of cost {cost}")).await?;
    }
    if !b.allowed || b.remaining != Some(r) {
        bail!("could not bring remaining to {r}: {b:?}");
    }

    let n = 2 * opts.exact();
    open_all(&gen.client, &gen.base, n).await?;
    let body = gen.body(&subject, 1);
    let reqs: Vec<RequestBuilder> = (0..n).map(|_| gen.request(&body)).collect();
    let answers = futures_util::future::join_all(reqs.into_iter().map(|req| async move {
        let t0 = std::time::Instant::now();
        let a = drive::send(req).await;
        (a, t0.elapsed().as_secs_f64() * 1000.0)
    }))
    .await;
    let (mut allowed, mut denied, mut remainders) = (0u64, 0u64, Vec::new());
    for (a, _) in &answers {
        match checker.check(a, &subject, errors) {
            Some(d) if d.allowed => {
                allowed += 1;
                remainders.push(d.remaining.unwrap_or(u64::MAX));
            }
            Some(_) => denied += 1,
            None => {}
        }
    }
    let last = checker.check(&drive::send(gen.request(&body)).await, &subject, errors);
    // The admitted answers' `remaining` values are exactly R-1, ..., 0,
    // and the check after the burst was denied with `remaining` 0.
    remainders.sort_unstable();
    let remaining_values_ok = remainders.into_iter().eq(0..r);
    let final_ok = last
        .as_ref()
        .is_some_and(|d| !d.allowed && d.remaining == Some(0));
    let count: u64 = errors.values().sum();
    let exact_ok = allowed == r && denied == r && remaining_values_ok && final_ok && count == 0;
    let mut lat: Vec<f64> = answers.iter().map(|(_, ms)| *ms).collect();
    let [p50, p99, max] = spread(&mut lat);
    Ok(fields! {
        "mode": "exact", "exact_ok": exact_ok, "exact_R": r, "fired": n, "allowed": allowed,
        "denied": denied, "remaining_values_ok": remaining_values_ok,
        "final_denied": last.as_ref().map(|d| !d.allowed),
        "final_remaining": last.as_ref().and_then(|d| d.remaining), "p50_ms": p50, "p99_ms": p99,
        "max_ms": max, "errors": count, "plan": plan, "resource": resource,
        "error_detail": errors, "generator": "xtask",
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::super::defaults;
    use super::*;
    use crate::drive::fake;

    const POLICY: &str = "\"api\";q=6000;w=60";
    const LIMIT: &str = "\"api\";r=999;t=1";

    #[test]
    fn ratelimit_headers_must_describe_the_api_policy() {
        // RateLimit-Policy, RateLimit, whether they pass (Number("") is 0)
        let cases = r#"
"api";q=6000;w=60 "api";r=999;t=1 ok
"api";q=60;w=60 "api";r=;t=60 ok
"points";q=9;w=60 "api";r=999;t=1 bad
api;q=6000;w=60 "api";r=999;t=1 bad
"api";q=6000;w=30 "api";r=999;t=1 bad
"api";q=6000;w=60 "api";r=6001;t=1 bad
"api";q=6000;w=60 "api";r=1.5;t=1 bad
"api";q=6000;w=60 "api";r=1;t=61 bad
"api";q=6000;w=60 "api";r=1;t bad
"#;
        for case in cases.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = case.split(' ').collect();
            assert_eq!(headers_ok(Some(f[0]), Some(f[1])), f[2] == "ok", "{case}");
        }
        assert!(!headers_ok(None, Some(LIMIT)));
    }

    #[test]
    fn answers_are_checked_like_quotagen() {
        let (mut c, mut errors) = (Checker::new(Resource::Points), Errors::new());
        // status, RateLimit headers or not, the error code (or ok), the body
        let cases = r#"
200 h ok {"allowed":true,"limit":10,"remaining":4,"resetMs":100}
200 h duplicate_remaining {"allowed":true,"limit":10,"remaining":4,"resetMs":100}
500 h http_500 {}
200 h bad_json 3
200 h body_without_allowed {"limit":1}
429 h http_429_rate_limited {"error":{"code":"rate_limited"}}
200 h allowed_status_mismatch {"allowed":false,"limit":1,"remaining":0,"resetMs":1}
200 h bad_limit_remaining {"allowed":true,"limit":1,"remaining":2,"resetMs":1}
200 h bad_limit_remaining {"allowed":true,"limit":null,"remaining":2,"resetMs":1}
200 h bad_resetMs {"allowed":true,"limit":5,"remaining":2,"resetMs":-1}
200 h bad_retryAfterMs {"allowed":true,"limit":5,"remaining":2,"resetMs":1,"retryAfterMs":null}
429 h 429_without_error {"allowed":false,"limit":5,"remaining":0,"resetMs":1}
200 - bad_ratelimit_headers {"allowed":true,"limit":5,"remaining":3,"resetMs":1}
"#;
        for case in cases.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = case.splitn(4, ' ').collect();
            let mut headers = reqwest::header::HeaderMap::new();
            if f[1] == "h" {
                headers.insert("ratelimit-policy", POLICY.parse().unwrap());
                headers.insert("ratelimit", LIMIT.parse().unwrap());
            }
            let (status, body) = (f[0].parse().unwrap(), f[3].as_bytes().to_vec());
            let before = errors.get(f[2]).copied().unwrap_or(0);
            let d = c.check(
                &Ok(Response {
                    status,
                    headers,
                    body,
                }),
                "s",
                &mut errors,
            );
            let want = if f[2] == "ok" { 0 } else { before + 1 };
            assert_eq!(
                (d.is_some(), errors.get(f[2]).copied().unwrap_or(0)),
                (matches!(f[2], "ok" | "duplicate_remaining"), want),
                "{case}"
            );
        }
        assert_eq!(errors.values().sum::<u64>(), 12, "{errors:?}");
        assert!(c.check(&Err("TimedOut".into()), "s", &mut errors).is_none());
        assert_eq!(errors["transport_TimedOut"], 1);
    }

    /// A counter per subject with `limit` units for service tokens; `over`
    /// admits one check too many.
    fn fake_quota(limit: u64, over: bool) -> String {
        let used: Arc<Mutex<(BTreeMap<String, u64>, bool)>> = Arc::default();
        fake::start(Arc::new(move |req| {
            let who = fake::claims(&req, b"secret");
            if req.uri() == "/health" {
                return (200, vec![], "{}".into());
            } else if who["role"] != "service" || who["plan"] != "enterprise" {
                return (401, vec![], "{}".into());
            }
            let v: Value = serde_json::from_slice(req.body()).unwrap();
            let (mut g, subject) = (used.lock().unwrap(), v["subject"].as_str().unwrap());
            let (u, cost) = (*g.0.get(subject).unwrap_or(&0), v["cost"].as_u64().unwrap());
            let allowed = u + cost <= limit || over && !std::mem::replace(&mut g.1, true);
            let u = if allowed { (u + cost).min(limit) } else { u };
            g.0.insert(subject.into(), u);
            let mut b =
                json!({"allowed": allowed, "limit": limit, "remaining": limit - u, "resetMs": 1});
            if !allowed {
                b["error"] = json!({"code": "quota_exceeded"});
            }
            let headers = vec![
                ("ratelimit-policy", POLICY.into()),
                ("ratelimit", LIMIT.into()),
            ];
            (if allowed { 200 } else { 429 }, headers, b.to_string())
        }))
    }

    fn run_on(url: &str, opts: Options) -> Value {
        let o = Options {
            seconds: 0.3,
            subjects: 3,
            concurrency: 4,
            drain_seconds: 2.0,
            ..opts
        };
        serde_json::from_str(&run(&o, url, Some("secret"), &[])).unwrap()
    }

    #[test]
    fn exact_mode_passes_an_exact_server_and_catches_over_admission() {
        let exact = |r| Options {
            exact: Some(r),
            ..defaults::<Options>()
        };
        let r = run_on(&fake_quota(100, false), exact(5));
        assert_eq!(
            (&r["exact_ok"], &r["allowed"], &r["denied"]),
            (&json!(true), &json!(5), &json!(5)),
            "{r}"
        );
        let r = run_on(&fake_quota(100, true), exact(5));
        assert_eq!(
            (&r["exact_ok"], &r["allowed"]),
            (&json!(false), &json!(6)),
            "{r}"
        );
        assert_eq!(r["error_detail"]["duplicate_remaining"], 1);
        // 99 left after the first check: too few for R = 100
        let r = run_on(&fake_quota(100, false), exact(100));
        assert!(
            r["fatal"].as_str().unwrap().contains("needs more") && r["exact_ok"] == false,
            "{r}"
        );
    }

    #[test]
    fn load_mode_counts_answers_and_rotates_service_tokens() {
        let o = Options {
            resource: Some(Resource::Points),
            callers: 3,
            ..defaults()
        };
        let r = run_on(&fake_quota(50, false), o);
        // Service tokens, or 401s; 3 subjects x 50 units at most, however
        // many checks the run's time allowed on a loaded machine (a count
        // reached in time is not what this test is about).
        assert_eq!((&r["errors"], &r["callers"]), (&json!(0), &json!(3)), "{r}");
        let n = |k: &str| r[k].as_u64().unwrap_or_default();
        assert!(n("answers_total") > 0 && n("allowed") <= 150, "{r}");
        assert!(n("allowed") + n("denied") <= n("answers_total"), "{r}");
        assert!(r["p50_ms"].is_number());
    }
}
