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

use super::drive::{self, closed_loop, open_all, Answer, Response};
use super::summary::{ordered_object, pairs, spread};
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

/// `Err(code)` unless `ok`.
fn ensure(ok: bool, code: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(code.to_owned())
    }
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
        match answer {
            Ok(r) => {
                let (p, l) = (r.header("ratelimit-policy"), r.header("ratelimit"));
                self.check_parts(r.status, p, l, &r.body, subject)
            }
            Err(e) => {
                self.fail(&format!("transport_{e}"));
                None
            }
        }
    }

    /// [`Checker::check`] of an answer's parts.
    pub fn check_parts(
        &mut self,
        status: u16,
        policy: Option<&str>,
        limit: Option<&str>,
        body: &[u8],
        subject: &str,
    ) -> Option<Decision> {
        let d = Self::decision(status, policy, limit, body)
            .map_err(|e| self.fail(&e))
            .ok()?;
        if d.allowed && d.limit.is_some() && self.resource != Resource::Api {
            let seen = self.seen.entry(subject.to_owned()).or_default();
            if !seen.insert(d.remaining.unwrap_or_default()) {
                // Over-admission: still counted as admitted.
                self.fail("duplicate_remaining");
            }
        }
        Some(d)
    }

    fn decision(
        status: u16,
        policy: Option<&str>,
        limit: Option<&str>,
        body: &[u8],
    ) -> Result<Decision, String> {
        ensure(status == 200 || status == 429, &format!("http_{status}"))?;
        let b: Value = serde_json::from_slice(body).map_err(|_| "bad_json")?;
        ensure(b.is_object() || b.is_array(), "bad_json")?;
        let Some(allowed) = b.get("allowed").and_then(Value::as_bool) else {
            let code = b["error"]["code"].as_str().unwrap_or("without_allowed");
            return Err(if status == 429 {
                format!("http_429_{code}")
            } else {
                "body_without_allowed".into()
            });
        };
        ensure(allowed == (status == 200), "allowed_status_mismatch")?;
        let (lim, rem) = (b.get("limit"), b.get("remaining"));
        let unlimited = matches!((lim, rem), (Some(Value::Null), Some(Value::Null)));
        let (lim, rem) = (lim.and_then(count), rem.and_then(count));
        ensure(
            unlimited || matches!((lim, rem), (Some(l), Some(r)) if r <= l),
            "bad_limit_remaining",
        )?;
        ensure(b.get("resetMs").and_then(count).is_some(), "bad_resetMs")?;
        ensure(
            b.get("retryAfterMs").is_none_or(|v| count(v).is_some()),
            "bad_retryAfterMs",
        )?;
        ensure(
            status == 200 || b["error"]["code"].is_string(),
            "429_without_error",
        )?;
        ensure(headers_ok(policy, limit), "bad_ratelimit_headers")?;
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

    fn shape(&self) -> (String, Value) {
        let (plan, resource, r) = (self.plan(), self.resource().name(), self.exact());
        if r > 0 {
            let text = format!(
                "quota exact R={r} ({} concurrent checks) plan={plan} resource={resource}",
                2 * r
            );
            return (
                text,
                json!({"exact_R": r, "fired": 2 * r, "plan": plan, "resource": resource}),
            );
        }
        let (n, c, secs, cost) = (self.subjects, self.concurrency, self.seconds, self.cost);
        let text =
            format!("quota subjects={n} concurrency={c} seconds={secs} plan={plan} resource={resource} cost={cost}");
        let shape = json!({"subjects": n, "concurrency": c, "seconds": secs, "plan": plan,
            "resource": resource, "cost": cost, "callers": self.callers});
        (text, shape)
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

/// Runs the generator against `url`, with service tokens (plan
/// enterprise, one per caller) minted with `secret` or no `Authorization`
/// header (quota-ref accepts anything): quotagen.mjs' JSON line (a run that
/// cannot be carried out has `fatal`).
pub fn run(opts: &Options, url: &str, secret: Option<&str>, watch_pids: &[u32]) -> String {
    let mut checker = Checker::new(opts.resource());
    let result = (|| {
        let auth = caller_ids(opts.callers)
            .iter()
            .filter_map(|id| {
                secret.map(|k| crate::mint(k, id, "enterprise", Some("service"), 3600))
            })
            .map(|t| t.map(|t| format!("Bearer {t}")))
            .collect::<Result<_>>()?;
        let mut gen = Gen {
            opts,
            client: drive::client()?,
            base: url.to_owned(),
            url: format!("{url}/v1/quota/check"),
            auth,
            next_auth: 0,
            checker: Checker::new(opts.resource()),
        };
        let port = super::port_of(url)?;
        let r = drive::block_on(async {
            match opts.exact() {
                0 => load_mode(&mut gen, port, watch_pids).await,
                _ => exact_mode(&mut gen).await,
            }
        })?;
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
    let random = || drive::tag(8);
    opts.subject_prefix
        .clone()
        .unwrap_or_else(|| format!("qg-{}", random()))
}

type Fields = Vec<(&'static str, Value)>;

async fn load_mode(gen: &mut Gen<'_>, port: u16, watch_pids: &[u32]) -> Result<Fields> {
    let opts = gen.opts;
    open_all(&gen.client, &gen.base, opts.concurrency).await?;
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
        (opts.seconds, None, opts.drain_seconds),
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
    Ok(pairs! {
        "checks_per_s": ((allowed + denied) as f64 / opts.seconds).round() as u64,
        "allowed": allowed, "denied": denied, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "errors": Value::Null, "subjects": opts.subjects, "concurrency": opts.concurrency,
        "seconds": opts.seconds, "plan": opts.plan(), "resource": opts.resource().name(),
        "cost": opts.cost, "callers": callers, "answers_total": total, "error_detail": Value::Null,
        "cpu_pct": outcome.cpu,
    })
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
    open_all(&gen.client, &gen.base, n).await?;
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
    // The admitted answers' `remaining` values are exactly R-1, ..., 0,
    // and the check after the burst was denied with `remaining` 0.
    remainders.sort_unstable_by(|a, b| b.cmp(a));
    let remaining_values_ok = remainders.iter().rev().copied().eq(0..r);
    let final_ok = last
        .as_ref()
        .is_some_and(|d| !d.allowed && d.remaining == Some(0));
    let errors = gen.checker.count();
    let exact_ok = allowed == r && denied == r && remaining_values_ok && final_ok && errors == 0;
    let mut lat: Vec<f64> = answers.iter().map(|(_, ms)| *ms).collect();
    let [p50, p99, max] = spread(&mut lat);
    Ok(pairs! {
        "mode": "exact", "exact_ok": exact_ok, "exact_R": r, "fired": n, "allowed": allowed,
        "denied": denied, "remaining_values_ok": remaining_values_ok,
        "final_denied": last.as_ref().map(|d| !d.allowed),
        "final_remaining": last.as_ref().and_then(|d| d.remaining), "p50_ms": p50, "p99_ms": p99,
        "max_ms": max, "errors": Value::Null, "plan": plan, "resource": resource,
        "error_detail": Value::Null,
    })
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
        Ok(a) => anyhow!("{what}: {}", a.head()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::defaults;
    use super::*;
    use crate::bench::drive::fake;

    const POLICY: &str = "\"api\";q=6000;w=60";
    const LIMIT: &str = "\"api\";r=999;t=1";

    #[test]
    fn ratelimit_headers_must_describe_the_api_policy() {
        assert!(headers_ok(Some(POLICY), Some(LIMIT)));
        assert!(
            headers_ok(Some("\"api\";q=60;w=60"), Some("\"api\";r=;t=60")),
            "Number(\"\") is 0"
        );
        let bad = [
            "\"points\";q=9;w=60",
            "api;q=6000;w=60",
            "\"api\";q=6000;w=30",
            "\"api\";r=6001;t=1",
            "\"api\";r=1.5;t=1",
            "\"api\";r=1;t=61",
            "\"api\";r=1;t",
        ];
        for (i, b) in bad.iter().enumerate() {
            let (p, l) = if i < 3 { (*b, LIMIT) } else { (POLICY, *b) };
            assert!(!headers_ok(Some(p), Some(l)), "{b}");
        }
    }

    #[test]
    fn answers_are_checked_like_quotagen() {
        let mut c = Checker::new(Resource::Points);
        let ok = r#"{"allowed":true,"limit":10,"remaining":4,"resetMs":100}"#;
        let d = c.check_parts(200, Some(POLICY), Some(LIMIT), ok.as_bytes(), "s");
        assert_eq!(
            d,
            Some(Decision {
                allowed: true,
                remaining: Some(4),
                limit: Some(10)
            })
        );
        // status, RateLimit headers or not, the error code, the body
        let cases = r#"
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
            let h = (f[1] == "h").then_some((POLICY, LIMIT));
            let before = c.errors.get(f[2]).copied().unwrap_or(0);
            let d = c.check_parts(
                f[0].parse().unwrap(),
                h.map(|h| h.0),
                h.map(|h| h.1),
                f[3].as_bytes(),
                "s",
            );
            assert_eq!(
                (d.is_some(), c.errors.get(f[2])),
                (f[2] == "duplicate_remaining", Some(&(before + 1))),
                "{case}"
            );
        }
        assert_eq!(c.count(), 12, "{:?}", c.errors);
    }

    /// A counter per subject with `limit` units for service tokens; `over`
    /// admits one check too many.
    fn fake_quota(limit: u64, over: bool) -> String {
        let used: Arc<Mutex<(BTreeMap<String, u64>, bool)>> = Arc::default();
        let port = fake::start(Arc::new(move |_, target, h, body| {
            if target == "/health" {
                return (200, vec![], "{}".into());
            }
            let who = fake::claims(h, b"secret");
            if who["role"] != "service" || who["plan"] != "enterprise" {
                return (401, vec![], "{}".into());
            }
            let v: Value = serde_json::from_slice(body).unwrap();
            let mut g = used.lock().unwrap();
            let u = *g.0.get(v["subject"].as_str().unwrap()).unwrap_or(&0);
            let cost = v["cost"].as_u64().unwrap();
            let allowed = u + cost <= limit || over && !std::mem::replace(&mut g.1, true);
            let u = if allowed { (u + cost).min(limit) } else { u };
            g.0.insert(v["subject"].as_str().unwrap().into(), u);
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
        }));
        format!("http://127.0.0.1:{port}")
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
        // 3 subjects x 50 units; service tokens, or 401
        assert_eq!(
            (&r["errors"], &r["allowed"], &r["callers"]),
            (&json!(0), &json!(150), &json!(3)),
            "{r}"
        );
        assert!(r["denied"].as_u64() > Some(0) && r["p50_ms"].is_number());
    }
}
