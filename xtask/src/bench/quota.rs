//! Quota check load generator and checker: the job of
//! `../shared/bench/quotagen.mjs`, in Rust, run in-process by `cargo xtask
//! bench quota`.
//!
//! Load mode: `concurrency` checks (`POST /v1/quota/check`) in flight over
//! keep-alive connections (opened with `GET /health` first), spread
//! round-robin over `subjects` fresh subjects, for `seconds`. Answers in the
//! window count; later ones are still checked.
//!
//! Exact mode (`exact` = R): a fresh subject's counter (`points`, or
//! `sessions`) of a plan with a finite limit is brought to `remaining == R`
//! (a cost-1 check, then one of cost `remaining - R`), 2R cost-1 checks go
//! out at once over 2R connections, then one more. `exact_ok`: exactly R
//! admitted with `remaining` values R-1..0 once each, R denied, and a final
//! 429 with `remaining` 0.
//!
//! Errors, as quotagen.mjs counts them: statuses other than 200/429, bodies
//! that are not JSON or lack `allowed`/`limit`/`remaining`/`resetMs`,
//! `allowed` not matching the status, a 429 without `error`, missing or
//! malformed `RateLimit`/`RateLimit-Policy` headers, a counter's
//! `remaining` repeated among one subject's admitted answers
//! (over-admission), transport errors; a 429 without `allowed` (a limit in
//! front of the check) is `http_429_<code>`. One more than quotagen.mjs:
//! checks still unanswered after the drain (`unanswered_at_end`).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};

use super::drive::{self, closed_loop, open_all, Answer, Response, Until};
use super::summary::{ordered_object, spread};
use super::{non_empty, non_negative, positive, seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Api,
    Sessions,
    Points,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Api => "api",
            Resource::Sessions => "sessions",
            Resource::Points => "points",
        }
    }
}

/// The quota checks (the job and checks of quotagen.mjs).
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// `http://host:port` of the server.
    #[arg(skip)]
    pub url: String,
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

impl Default for Options {
    fn default() -> Self {
        super::defaults()
    }
}

impl Options {
    /// Exact mode's R; 0 = load mode.
    pub fn exact(&self) -> usize {
        self.exact.unwrap_or(0)
    }

    pub fn plan(&self) -> &str {
        match &self.plan {
            Some(p) => p,
            None if self.exact() > 0 => "free",
            None => "enterprise",
        }
    }

    pub fn resource(&self) -> Resource {
        match self.resource {
            Some(r) => r,
            None if self.exact() > 0 => Resource::Points,
            None => Resource::Api,
        }
    }

    /// The combinations quotagen.mjs refuses.
    pub fn validate(&self) -> Result<()> {
        if self.exact() > 0 && self.resource() == Resource::Api {
            bail!("--exact needs a counter resource (points or sessions)");
        }
        Ok(())
    }
}

/// How the generator identifies itself.
pub enum Auth {
    /// No `Authorization` header (quota-ref accepts anything).
    None,
    /// Service tokens (plan enterprise, `role: service`) minted with this
    /// secret, one per caller.
    Service(String),
}

/// The caller ids: `quotagen`, or `quotagen-1..K`.
pub fn caller_ids(callers: usize) -> Vec<String> {
    if callers == 1 {
        vec!["quotagen".into()]
    } else {
        (1..=callers).map(|i| format!("quotagen-{i}")).collect()
    }
}

// ---- checks --------------------------------------------------------------

/// `"api";k=v;k=v` as quotagen.mjs reads it: the first item, and each
/// parameter as a number (JavaScript's `Number`: empty is 0, anything
/// unparsable NaN).
pub fn sf_params(v: &str) -> (String, BTreeMap<String, f64>) {
    let mut parts = v.split(';').map(str::trim);
    let name = parts.next().unwrap_or("").to_owned();
    let mut params = BTreeMap::new();
    for p in parts {
        let mut kv = p.split('=');
        let k = kv.next().unwrap_or("").to_owned();
        let x = match kv.next().map(str::trim) {
            None => f64::NAN,
            Some("") => 0.0,
            Some(x) => x.parse().unwrap_or(f64::NAN),
        };
        params.insert(k, x);
    }
    (name, params)
}

/// The `RateLimit-Policy` / `RateLimit` pair describes an `api` policy:
/// `"api";q=<per min>;w=60` and `"api";r=<available, integer, 0..=q>;t=<0..=60>`.
pub fn headers_ok(policy: Option<&str>, limit: Option<&str>) -> bool {
    let (Some(policy), Some(limit)) = (policy, limit) else {
        return false;
    };
    let (pn, p) = sf_params(policy);
    let (sn, s) = sf_params(limit);
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let (q, w, r, t) = (get(&p, "q"), get(&p, "w"), get(&s, "r"), get(&s, "t"));
    pn == "\"api\""
        && sn == "\"api\""
        && q > 0.0
        && w == 60.0
        && r.fract() == 0.0
        && r >= 0.0
        && r <= q
        && (0.0..=60.0).contains(&t)
}

/// A JavaScript safe integer >= 0.
fn count(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return (n < (1u64 << 53)).then_some(n);
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_991.0).then_some(f as u64)
}

/// A well-formed check answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// `None` when unlimited.
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
}

/// Checks answers as quotagen.mjs does and counts what is wrong.
#[derive(Debug)]
pub struct Checker {
    resource: Resource,
    /// Per subject: the `remaining` values of its admitted counter checks.
    seen: HashMap<String, HashSet<u64>>,
    pub errors: BTreeMap<String, u64>,
}

impl Checker {
    pub fn new(resource: Resource) -> Checker {
        Checker {
            resource,
            seen: HashMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn fail(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The decision when `answer` is a well-formed check answer (also when
    /// it shows over-admission, so that what the server admitted counts).
    pub fn check(&mut self, answer: &Result<Response, String>, subject: &str) -> Option<Decision> {
        let r = match answer {
            Ok(r) => r,
            Err(e) => {
                self.fail(&format!("transport_{e}"));
                return None;
            }
        };
        self.check_parts(
            r.status,
            r.header("ratelimit-policy"),
            r.header("ratelimit"),
            &r.body,
            subject,
        )
    }

    pub fn check_parts(
        &mut self,
        status: u16,
        policy: Option<&str>,
        limit: Option<&str>,
        body: &[u8],
        subject: &str,
    ) -> Option<Decision> {
        if status != 200 && status != 429 {
            self.fail(&format!("http_{status}"));
            return None;
        }
        let b: Value = match serde_json::from_slice(body) {
            Ok(b @ (Value::Object(_) | Value::Array(_))) => b,
            _ => {
                self.fail("bad_json");
                return None;
            }
        };
        let Some(allowed) = b.get("allowed").and_then(Value::as_bool) else {
            if status == 429 {
                let code = b["error"]["code"].as_str().unwrap_or("without_allowed");
                self.fail(&format!("http_429_{code}"));
            } else {
                self.fail("body_without_allowed");
            }
            return None;
        };
        if allowed != (status == 200) {
            self.fail("allowed_status_mismatch");
            return None;
        }
        let (lim, rem) = (b.get("limit"), b.get("remaining"));
        let unlimited = matches!((lim, rem), (Some(Value::Null), Some(Value::Null)));
        let (lim, rem) = (lim.and_then(count), rem.and_then(count));
        if !unlimited && !matches!((lim, rem), (Some(l), Some(r)) if r <= l) {
            self.fail("bad_limit_remaining");
            return None;
        }
        if b.get("resetMs").and_then(count).is_none() {
            self.fail("bad_resetMs");
            return None;
        }
        if b.get("retryAfterMs").is_some_and(|v| count(v).is_none()) {
            self.fail("bad_retryAfterMs");
            return None;
        }
        if status == 429 && !b["error"]["code"].is_string() {
            self.fail("429_without_error");
            return None;
        }
        if !headers_ok(policy, limit) {
            self.fail("bad_ratelimit_headers");
            return None;
        }
        if allowed && !unlimited && self.resource != Resource::Api {
            let r = rem.unwrap_or_default();
            let seen = self.seen.entry(subject.to_owned()).or_default();
            if !seen.insert(r) {
                // Over-admission: still counted as admitted.
                self.fail("duplicate_remaining");
            }
        }
        Some(Decision {
            allowed,
            remaining: rem,
            limit: lim,
        })
    }
}

/// What exact mode concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExactVerdict {
    /// The admitted answers' `remaining` values are exactly R-1, ..., 0.
    pub remaining_values_ok: bool,
    /// The check after the burst was denied with `remaining` 0.
    pub final_ok: bool,
    pub exact_ok: bool,
}

/// Exact mode's verdict on 2R concurrent checks against `remaining == r`.
pub fn exact_verdict(
    r: u64,
    allowed: u64,
    denied: u64,
    remainders: &[u64],
    last: Option<&Decision>,
    errors: u64,
) -> ExactVerdict {
    let mut sorted = remainders.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let remaining_values_ok = sorted.len() as u64 == r
        && sorted
            .iter()
            .enumerate()
            .all(|(i, &x)| x + 1 + i as u64 == r);
    let final_ok = last.is_some_and(|d| !d.allowed && d.remaining == Some(0));
    ExactVerdict {
        remaining_values_ok,
        final_ok,
        exact_ok: allowed == r && denied == r && remaining_values_ok && final_ok && errors == 0,
    }
}

// ---- run -----------------------------------------------------------------

/// The figures summarised for load runs (as summarize.mjs).
pub const LOAD_METRICS: [&str; 13] = [
    "checks_per_s",
    "allowed",
    "denied",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "cpu_workerd_pct",
    "cpu_proxy_pct",
    "cpu_node_pct",
    "cpu_loadgen_pct",
    "cpu_machine_pct",
    "workerd_cpu_us_per_check",
];

/// ... and for exact runs.
pub const EXACT_METRICS: [&str; 7] = [
    "exact_ok",
    "allowed",
    "denied",
    "final_remaining",
    "p50_ms",
    "p99_ms",
    "errors",
];

struct Gen<'a> {
    opts: &'a Options,
    client: Client,
    url: String,
    auth: Vec<String>,
    next_auth: usize,
    checker: Checker,
}

impl Gen<'_> {
    fn body(&self, subject: &str, cost: u64) -> Vec<u8> {
        json!({
            "subject": subject, "plan": self.opts.plan(),
            "resource": self.opts.resource().name(), "cost": cost,
        })
        .to_string()
        .into_bytes()
    }

    /// A check request, with the next caller's token.
    fn request(&mut self, body: &[u8]) -> RequestBuilder {
        let mut rb = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if !self.auth.is_empty() {
            rb = rb.header(
                "authorization",
                &self.auth[self.next_auth % self.auth.len()],
            );
            self.next_auth += 1;
        }
        rb
    }
}

/// Runs the generator against `opts.url`: quotagen.mjs' JSON line (a run
/// that cannot be carried out has `fatal`).
pub fn run(opts: &Options, auth: &Auth, watch_pids: &[u32]) -> String {
    let mut checker = Checker::new(opts.resource());
    let result = (|| {
        let auth = match auth {
            Auth::None => Vec::new(),
            Auth::Service(secret) => caller_ids(opts.callers)
                .iter()
                .map(|id| {
                    crate::mint(secret, id, "enterprise", Some("service"), 3600)
                        .map(|t| format!("Bearer {t}"))
                })
                .collect::<Result<_>>()?,
        };
        let mut gen = Gen {
            opts,
            client: drive::client()?,
            url: format!("{}/v1/quota/check", opts.url),
            auth,
            next_auth: 0,
            checker: Checker::new(opts.resource()),
        };
        let port = super::port_of(&opts.url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let r = rt.block_on(async {
            if opts.exact() > 0 {
                exact_mode(&mut gen).await
            } else {
                load_mode(&mut gen, port, watch_pids).await
            }
        });
        checker = gen.checker;
        r
    })();
    // The modes leave `errors` and `error_detail` (null) where their lines
    // have them; the checker's final counts go there.
    let mut f = result.unwrap_or_else(|e| {
        let mode = if opts.exact() > 0 { "exact" } else { "load" };
        let mut f = vec![("mode", json!(mode)), ("fatal", json!(format!("{e:#}")))];
        f.extend([("errors", Value::Null), ("error_detail", Value::Null)]);
        if opts.exact() > 0 {
            f.push(("exact_ok", json!(false)));
        }
        f
    });
    let fatal = u64::from(f[1].0 == "fatal");
    for (k, v) in &mut f {
        match *k {
            "errors" => *v = json!(checker.count() + fatal),
            "error_detail" => *v = json!(checker.errors),
            _ => {}
        }
    }
    f.push(("generator", json!("xtask")));
    ordered_object(&f)
}

fn prefix(opts: &Options) -> String {
    let random = || uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    opts.subject_prefix
        .clone()
        .unwrap_or_else(|| format!("qg-{}", random()))
}

type Fields = Vec<(&'static str, Value)>;

async fn load_mode(gen: &mut Gen<'_>, port: u16, watch_pids: &[u32]) -> Result<Fields> {
    let opts = gen.opts;
    open_all(&gen.client, &opts.url, opts.concurrency).await?;
    let prefix = prefix(opts);
    let subjects: Vec<String> = (0..opts.subjects)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let bodies: Vec<Vec<u8>> = subjects.iter().map(|s| gen.body(s, opts.cost)).collect();
    let mut lat = Vec::new();
    let (mut allowed, mut denied, mut total) = (0u64, 0u64, 0u64);
    let gen_cell = std::cell::RefCell::new(gen);
    let outcome = closed_loop(
        opts.concurrency,
        Until {
            seconds: opts.seconds,
            requests: None,
            drain_seconds: opts.drain_seconds,
        },
        (watch_pids, port),
        |i| {
            let s = (i % subjects.len() as u64) as usize;
            (gen_cell.borrow_mut().request(&bodies[s]), s)
        },
        |s, a: Answer| {
            total += 1;
            let d = gen_cell.borrow_mut().checker.check(&a.result, &subjects[s]);
            if !a.in_window {
                return;
            }
            lat.push(a.ms);
            match d {
                Some(d) if d.allowed => allowed += 1,
                Some(_) => denied += 1,
                None => {}
            }
        },
    )
    .await;
    let gen = gen_cell.into_inner();
    for _ in 0..outcome.unanswered {
        gen.checker.fail("unanswered_at_end");
    }
    let [p50, p99, max] = spread(&mut lat);
    let callers = (!gen.auth.is_empty()).then_some(gen.auth.len());
    Ok(vec![
        (
            "checks_per_s",
            json!(((allowed + denied) as f64 / opts.seconds).round() as u64),
        ),
        ("allowed", json!(allowed)),
        ("denied", json!(denied)),
        ("p50_ms", json!(p50)),
        ("p99_ms", json!(p99)),
        ("max_ms", json!(max)),
        ("errors", Value::Null),
        ("subjects", json!(opts.subjects)),
        ("concurrency", json!(opts.concurrency)),
        ("seconds", json!(opts.seconds)),
        ("plan", json!(opts.plan())),
        ("resource", json!(opts.resource().name())),
        ("cost", json!(opts.cost)),
        ("callers", json!(callers)),
        ("answers_total", json!(total)),
        ("error_detail", Value::Null),
        ("cpu_pct", json!(outcome.cpu)),
    ])
}

async fn exact_mode(gen: &mut Gen<'_>) -> Result<Fields> {
    let opts = gen.opts;
    let r = opts.exact() as u64;
    let subject = format!("{}-exact", prefix(opts));
    let (plan, resource) = (opts.plan(), opts.resource().name());
    let mut b = step(gen, &subject, 1, "first check (cost 1)").await?;
    let Some(remaining) = b.remaining.filter(|_| b.allowed && b.limit.is_some()) else {
        bail!("plan {plan} has no finite {resource} limit or denied: {b:?}");
    };
    if remaining < r {
        bail!("only {remaining} {resource} left after the first check; --exact {r} needs more");
    }
    if remaining > r {
        let cost = remaining - r;
        b = step(gen, &subject, cost, &format!("check of cost {cost}")).await?;
    }
    if !b.allowed || b.remaining != Some(r) {
        bail!("could not bring remaining to {r}: {b:?}");
    }

    let n = 2 * opts.exact();
    open_all(&gen.client, &opts.url, n).await?;
    let body = gen.body(&subject, 1);
    let reqs: Vec<RequestBuilder> = (0..n).map(|_| gen.request(&body)).collect();
    let answers = futures_util::future::join_all(reqs.into_iter().map(|req| async move {
        let t0 = std::time::Instant::now();
        let a = drive::send(req).await;
        (a, t0.elapsed().as_secs_f64() * 1000.0)
    }))
    .await;
    let (mut allowed, mut denied) = (0u64, 0u64);
    let mut remainders = Vec::new();
    for (a, _) in &answers {
        match gen.checker.check(a, &subject) {
            Some(d) if d.allowed => {
                allowed += 1;
                remainders.push(d.remaining.unwrap_or(u64::MAX));
            }
            Some(_) => denied += 1,
            None => {}
        }
    }
    let last_answer = drive::send(gen.request(&body)).await;
    let last = gen.checker.check(&last_answer, &subject);
    let v = exact_verdict(
        r,
        allowed,
        denied,
        &remainders,
        last.as_ref(),
        gen.checker.count(),
    );
    let mut lat: Vec<f64> = answers.iter().map(|(_, ms)| *ms).collect();
    let [p50, p99, max] = spread(&mut lat);
    Ok(vec![
        ("mode", json!("exact")),
        ("exact_ok", json!(v.exact_ok)),
        ("exact_R", json!(r)),
        ("fired", json!(n)),
        ("allowed", json!(allowed)),
        ("denied", json!(denied)),
        ("remaining_values_ok", json!(v.remaining_values_ok)),
        ("final_denied", json!(last.as_ref().map(|d| !d.allowed))),
        (
            "final_remaining",
            json!(last.as_ref().and_then(|d| d.remaining)),
        ),
        ("p50_ms", json!(p50)),
        ("p99_ms", json!(p99)),
        ("max_ms", json!(max)),
        ("errors", Value::Null),
        ("plan", json!(plan)),
        ("resource", json!(resource)),
        ("error_detail", Value::Null),
    ])
}

/// One check of exact mode's set-up; an error says what failed.
async fn step(gen: &mut Gen<'_>, subject: &str, cost: u64, what: &str) -> Result<Decision> {
    let body = gen.body(subject, cost);
    let answer = drive::send(gen.request(&body)).await;
    if let Some(d) = gen.checker.check(&answer, subject) {
        return Ok(d);
    }
    Err(match answer {
        Err(e) => anyhow!("{what}: {e}"),
        Ok(a) => {
            let text = String::from_utf8_lossy(&a.body);
            let head: String = text.chars().take(300).collect();
            anyhow!("{what}: {} {head}", a.status)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bench::drive::fake;
    use crate::bench::summary;

    fn line(text: String) -> Value {
        serde_json::from_str(&text).unwrap()
    }

    const POLICY: &str = "\"api\";q=6000;w=60";
    const LIMIT: &str = "\"api\";r=999;t=1";

    #[test]
    fn structured_field_params_read_like_javascript_numbers() {
        let (name, p) = sf_params(" \"api\" ; q=6000;w=60");
        assert_eq!(name, "\"api\"");
        assert_eq!(p["q"], 6000.0);
        assert_eq!(p["w"], 60.0);
        let (_, p) = sf_params("\"api\";r=;t;x=1.5;y=abc");
        assert_eq!(p["r"], 0.0, "Number(\"\") is 0");
        assert!(p["t"].is_nan(), "no value: NaN");
        assert_eq!(p["x"], 1.5);
        assert!(p["y"].is_nan());
    }

    #[test]
    fn ratelimit_headers_must_describe_the_api_policy() {
        assert!(headers_ok(Some(POLICY), Some(LIMIT)));
        assert!(headers_ok(
            Some("\"api\";q=60;w=60"),
            Some("\"api\";r=0;t=60")
        ));
        for (policy, limit) in [
            (None, Some(LIMIT)),
            (Some(POLICY), None),
            (
                Some("\"points\";q=10000;w=86400"),
                Some("\"points\";r=5;t=1"),
            ),
            (Some("api;q=6000;w=60"), Some(LIMIT)),
            (Some("\"api\";q=0;w=60"), Some("\"api\";r=0;t=1")),
            (Some("\"api\";q=6000;w=30"), Some(LIMIT)),
            (Some(POLICY), Some("\"api\";r=6001;t=1")),
            (Some(POLICY), Some("\"api\";r=1.5;t=1")),
            (Some(POLICY), Some("\"api\";r=-1;t=1")),
            (Some(POLICY), Some("\"api\";r=1;t=61")),
            (Some(POLICY), Some("\"api\";r=1")),
            (Some(POLICY), Some("\"api\";t=1")),
        ] {
            assert!(!headers_ok(policy, limit), "{policy:?} {limit:?}");
        }
    }

    fn checked(
        c: &mut Checker,
        status: u16,
        body: &str,
        headers: bool,
    ) -> (Option<Decision>, Vec<String>) {
        let before = c.errors.clone();
        let (p, l) = if headers {
            (Some(POLICY), Some(LIMIT))
        } else {
            (None, None)
        };
        let d = c.check_parts(status, p, l, body.as_bytes(), "s");
        let new: Vec<String> = c
            .errors
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        (d, new)
    }

    #[test]
    fn answers_are_checked_like_quotagen() {
        let mut c = Checker::new(Resource::Points);
        let ok = r#"{"allowed":true,"limit":10,"remaining":4,"resetMs":100}"#;
        let (d, e) = checked(&mut c, 200, ok, true);
        assert_eq!(
            d,
            Some(Decision {
                allowed: true,
                remaining: Some(4),
                limit: Some(10)
            })
        );
        assert!(e.is_empty());
        // the same remaining admitted twice on one subject: over-admission,
        // still a decision (the server admitted it)
        let (d, e) = checked(&mut c, 200, ok, true);
        assert!(d.is_some());
        assert_eq!(e, vec!["duplicate_remaining"]);
        let denied = r#"{"allowed":false,"limit":10,"remaining":0,"resetMs":5,"retryAfterMs":5,"error":{"code":"quota_exceeded","message":"m"}}"#;
        assert_eq!(checked(&mut c, 429, denied, true).1, Vec::<String>::new());
        let unlimited = r#"{"allowed":true,"limit":null,"remaining":null,"resetMs":0}"#;
        assert_eq!(
            checked(&mut c, 200, unlimited, true).1,
            Vec::<String>::new()
        );
        // status, RateLimit headers or not, the error code, the body
        let cases = r#"
500 h http_500 {}
200 h bad_json nope
200 h bad_json 3
200 h body_without_allowed {"limit":1}
429 h http_429_rate_limited {"error":{"code":"rate_limited"}}
429 h http_429_without_allowed {}
200 h allowed_status_mismatch {"allowed":false,"limit":1,"remaining":0,"resetMs":1}
200 h bad_limit_remaining {"allowed":true,"limit":1,"remaining":2,"resetMs":1}
200 h bad_limit_remaining {"allowed":true,"limit":null,"remaining":2,"resetMs":1}
200 h bad_limit_remaining {"allowed":true,"remaining":2,"resetMs":1}
200 h bad_resetMs {"allowed":true,"limit":5,"remaining":2}
200 h bad_resetMs {"allowed":true,"limit":5,"remaining":2,"resetMs":null}
200 h bad_resetMs {"allowed":true,"limit":5,"remaining":2,"resetMs":-1}
200 h bad_retryAfterMs {"allowed":true,"limit":5,"remaining":2,"resetMs":1,"retryAfterMs":null}
429 h 429_without_error {"allowed":false,"limit":5,"remaining":0,"resetMs":1}
200 - bad_ratelimit_headers {"allowed":true,"limit":5,"remaining":3,"resetMs":1}
"#;
        for case in cases.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = case.splitn(4, ' ').collect();
            let (d, e) = checked(&mut c, f[0].parse().unwrap(), f[3], f[1] == "h");
            assert_eq!(d, None, "{case}");
            assert_eq!(e, vec![f[2].to_owned()], "{case}");
        }
        let transport: Result<Response, String> = Err("ConnectionReset".into());
        assert_eq!(c.check(&transport, "s"), None);
        assert_eq!(c.errors.get("transport_ConnectionReset"), Some(&1));
        // api checks never count as over-admission
        let mut api = Checker::new(Resource::Api);
        checked(&mut api, 200, ok, true);
        assert!(checked(&mut api, 200, ok, true).1.is_empty());
    }

    #[test]
    fn the_exactness_verdict() {
        let denied0 = Decision {
            allowed: false,
            remaining: Some(0),
            limit: Some(10),
        };
        let v = exact_verdict(3, 3, 3, &[0, 2, 1], Some(&denied0), 0);
        assert_eq!(
            v,
            ExactVerdict {
                remaining_values_ok: true,
                final_ok: true,
                exact_ok: true
            }
        );
        // one admitted too many, with a repeated remaining
        let v = exact_verdict(3, 4, 2, &[0, 2, 1, 1], Some(&denied0), 1);
        assert!(!v.remaining_values_ok && !v.exact_ok);
        // a gap: 2, 1, 1 (0 missing)
        assert!(!exact_verdict(3, 3, 3, &[2, 1, 1], Some(&denied0), 0).remaining_values_ok);
        // values right but counts wrong (one answer lost)
        let v = exact_verdict(3, 3, 2, &[0, 1, 2], Some(&denied0), 0);
        assert!(v.remaining_values_ok && !v.exact_ok);
        // the final check admitted, or denied with units left, or missing
        let admitted = Decision {
            allowed: true,
            ..denied0.clone()
        };
        assert!(!exact_verdict(3, 3, 3, &[0, 1, 2], Some(&admitted), 0).final_ok);
        let left = Decision {
            remaining: Some(1),
            ..denied0.clone()
        };
        assert!(!exact_verdict(3, 3, 3, &[0, 1, 2], Some(&left), 0).exact_ok);
        assert!(!exact_verdict(3, 3, 3, &[0, 1, 2], None, 0).exact_ok);
        // errors elsewhere spoil it
        assert!(!exact_verdict(3, 3, 3, &[0, 1, 2], Some(&denied0), 1).exact_ok);
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        None,
        /// The check after the last unit is admitted too.
        OverAdmit,
        /// No RateLimit headers.
        NoHeaders,
    }

    /// A counter per subject with `limit` units (points), exact (one lock).
    fn fake_quota(fault: Fault, limit: u64) -> u16 {
        let used: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let over = Arc::new(Mutex::new(false));
        fake::start(Arc::new(move |method, target, _head, body| {
            if method == "GET" && target == "/health" {
                return (200, String::new(), r#"{"status":"ok"}"#.into());
            }
            let v: Value = serde_json::from_slice(body).unwrap();
            let subject = v["subject"].as_str().unwrap().to_owned();
            let cost = v["cost"].as_u64().unwrap();
            let mut used = used.lock().unwrap();
            let u = used.entry(subject).or_default();
            let mut allowed = *u + cost <= limit;
            if !allowed && fault == Fault::OverAdmit && !*over.lock().unwrap() {
                *over.lock().unwrap() = true;
                allowed = true;
            }
            if allowed {
                *u = (*u + cost).min(limit);
            }
            let remaining = limit - *u;
            let headers = if fault == Fault::NoHeaders {
                String::new()
            } else {
                "ratelimit-policy: \"api\";q=60;w=60\r\nratelimit: \"api\";r=20;t=0\r\n".into()
            };
            let mut b = json!({"allowed": allowed, "limit": limit, "remaining": remaining, "resetMs": 1000});
            if !allowed {
                b["error"] = json!({"code": "quota_exceeded", "message": "no"});
            }
            (if allowed { 200 } else { 429 }, headers, b.to_string())
        }))
    }

    fn opts(port: u16) -> Options {
        Options {
            url: format!("http://127.0.0.1:{port}"),
            seconds: 0.3,
            subjects: 3,
            concurrency: 4,
            drain_seconds: 2.0,
            ..Options::default()
        }
    }

    #[test]
    fn exact_mode_passes_an_exact_server_and_catches_over_admission() {
        let o = Options {
            exact: Some(5),
            ..opts(fake_quota(Fault::None, 100))
        };
        let r = line(run(&o, &Auth::None, &[]));
        assert_eq!(r["exact_ok"], true, "{r}");
        assert_eq!(
            (&r["allowed"], &r["denied"], &r["fired"]),
            (&json!(5), &json!(5), &json!(10))
        );
        assert_eq!(r["final_remaining"], 0);
        assert!(summary::ok(&[r]));

        let o = Options {
            exact: Some(5),
            ..opts(fake_quota(Fault::OverAdmit, 100))
        };
        let r = line(run(&o, &Auth::None, &[]));
        assert_eq!(r["exact_ok"], false, "{r}");
        assert_eq!((&r["allowed"], &r["denied"]), (&json!(6), &json!(4)));
        assert_eq!(r["error_detail"]["duplicate_remaining"], 1);
        assert!(!summary::ok(&[r]));

        // too few units for R (99 left after the first check): a fatal report
        let o = Options {
            exact: Some(100),
            ..opts(fake_quota(Fault::None, 100))
        };
        let text = run(&o, &Auth::None, &[]);
        let r = line(text.clone());
        assert!(r["fatal"].as_str().unwrap().contains("needs more"), "{r}");
        assert!(text.contains("\"exact_ok\":false"));
        assert!(!summary::ok(&[r]));
    }

    #[test]
    fn load_mode_counts_answers_and_errors() {
        // 3 subjects x 50 units: most checks are denied after a few ms
        let o = Options {
            resource: Some(Resource::Points),
            ..opts(fake_quota(Fault::None, 50))
        };
        let r = line(run(&o, &Auth::None, &[]));
        assert_eq!(
            (&r["errors"], &r["allowed"]),
            (&json!(0), &json!(150)),
            "{r}"
        );
        assert!(r["denied"].as_u64() > Some(0) && r["checks_per_s"].as_u64() > Some(0));
        assert!(r["p50_ms"].is_number() && r["cpu_pct"]["loadgen"].is_number());
        assert_eq!(
            (&r["resource"], &r["plan"]),
            (&json!("points"), &json!("enterprise"))
        );

        let r = line(run(
            &opts(fake_quota(Fault::NoHeaders, 1000)),
            &Auth::None,
            &[],
        ));
        assert!(r["errors"].as_u64() > Some(0));
        let codes: Vec<&String> = r["error_detail"].as_object().unwrap().keys().collect();
        assert_eq!(codes, vec!["bad_ratelimit_headers"]);
        assert_eq!(
            (&r["allowed"], &r["denied"]),
            (&json!(0), &json!(0)),
            "malformed answers do not count"
        );

        // nobody listening: fatal
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = line(run(&opts(port), &Auth::None, &[]));
        assert!(
            r["fatal"].as_str().unwrap().starts_with("GET /health"),
            "{r}"
        );
    }

    #[test]
    fn service_tokens_rotate_over_the_callers() {
        assert_eq!(caller_ids(1), vec!["quotagen"]);
        assert_eq!(
            caller_ids(3),
            vec!["quotagen-1", "quotagen-2", "quotagen-3"]
        );
        let subs: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = Arc::clone(&subs);
        let port = fake::start(Arc::new(move |method, _target, head, _body| {
            if method == "GET" {
                return (200, String::new(), "{}".into());
            }
            // the token's claims, unverified
            let token = head
                .lines()
                .find_map(|l| l.strip_prefix("authorization: Bearer "))
                .unwrap_or_default();
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.validate_exp = false;
            v.required_spec_claims.clear();
            let claims = jsonwebtoken::decode::<Value>(
                token,
                &jsonwebtoken::DecodingKey::from_secret(b"secret"),
                &v,
            )
            .map(|d| d.claims)
            .unwrap_or_default();
            let who = format!("{} {} {}", claims["sub"], claims["role"], claims["plan"]);
            seen.lock().unwrap().insert(who);
            (
                200,
                "ratelimit-policy: \"api\";q=60;w=60\r\nratelimit: \"api\";r=20;t=0\r\n".into(),
                r#"{"allowed":true,"limit":null,"remaining":null,"resetMs":0}"#.into(),
            )
        }));
        let o = Options {
            callers: 3,
            ..opts(port)
        };
        let r = line(run(&o, &Auth::Service("secret".into()), &[]));
        assert_eq!((&r["errors"], &r["callers"]), (&json!(0), &json!(3)), "{r}");
        let mut who: Vec<String> = subs.lock().unwrap().iter().cloned().collect();
        who.sort();
        assert_eq!(
            who,
            vec![
                r#""quotagen-1" "service" "enterprise""#,
                r#""quotagen-2" "service" "enterprise""#,
                r#""quotagen-3" "service" "enterprise""#,
            ]
        );
    }
}
