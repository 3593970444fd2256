//! `cargo xtask bench`: the benchmarks of `../shared/bench` with their
//! generators in Rust, each target served the same way (`serve.mjs`,
//! inspector off) on a free port with a throw-away state folder:
//!
//! - `sessions`: session WebSockets (compare.sh + run.sh + loadgen.mjs),
//!   the Rust worker beside the JS references, alternately;
//! - `quota`: `POST /v1/quota/check` (quotagen.mjs), the Rust worker beside
//!   `quota-ref`, alternately;
//! - `presence`: presence reads and heartbeats, the Rust worker alone.
//!
//! `loadgen`, `quotagen` and `presencegen` run a generator alone against a
//! server already running (`--url`).

mod cpu;
mod drive;
mod http;
mod loadgen;
mod presence;
mod quota;
mod serve;
mod summary;

use std::path::PathBuf;
use std::process::Command;

use serve::Target;
use summary::{Figures, Summary};

const HELP: &str = "\
usage: cargo xtask bench sessions [options]   session WebSockets: rust beside the JS references
       cargo xtask bench quota [options]      quota checks: rust beside quota-ref
       cargo xtask bench presence [options]   presence reads and heartbeats: rust alone
       cargo xtask bench loadgen|quotagen|presencegen --url URL [options]
                                              one generator against a running server

Servers (sessions, quota, presence):
  --rounds N           rounds, targets alternately in each (default 1)
  --state-root DIR     where the throw-away state folders go (default /dev/shm, else /tmp)
  --targets \"A B\"      what to serve (sessions: default \"rust js-ref\", also party-ref;
                       quota: default \"rust quota-ref\"); rust = this workspace (bundle
                       built first, tokens minted with .dev.vars' AUTH_SECRET), or a
                       directory with a wrangler config
  Each prints `<target> {json}` per run (presence: per phase), then a summary
  table on stderr and one JSON summary line (medians, min, max, ratios of
  rust to each other target). Exits non-zero when any run had correctness
  errors or did not run.

Generator alone (loadgen, quotagen, presencegen):
  --url http://127.0.0.1:8787   the server
  --watch-pids 1,2     report these processes' CPU over the window
  --tokens             (loadgen, quotagen) mint tokens with .dev.vars' AUTH_SECRET:
                       loadgen ?token= (plan enterprise) instead of ?user=,
                       quotagen service tokens instead of no Authorization header

bench sessions / loadgen:
  --sessions S         sessions (default 4)
  --participants P     participants per session (default 5)
  --seconds T          send window in seconds (default 10)
  --window K           points in flight per participant (default 8)
  --rate R             open loop: R points/s per participant (default 0 = closed loop)
  --connect-timeout S  seconds for each upgrade + welcome (default 20)
  --drain-seconds S    after the window, wait up to S for acks, then for deliveries (default 10)
  --user-prefix X      user ids are X-s<S>-p<P> (default bench-<random>)
  --create-sessions    (loadgen) POST /v1/sessions first (implies --tokens); bench
                       sessions does so for the rust target
  The references get ?user=, the rust target enterprise tokens.

bench quota / quotagen (the job and checks of quotagen.mjs):
  --subjects S         fresh subjects, round-robin (default 100; 1 = one hot subject)
  --concurrency C      checks in flight, one keep-alive connection each (default 16)
  --seconds T          window (default 10)
  --plan P             the checks' plan (default enterprise; free with --exact)
  --resource R         api | sessions | points (default api; points with --exact)
  --cost N             units per check (default 1)
  --callers K          caller tokens to rotate (default 1)
  --exact R            exactness instead of load: bring a fresh subject to
                       remaining == R, fire 2R cost-1 checks at once over 2R
                       connections, then one more; exact_ok needs exactly R
                       admitted (remaining R-1..0 once each), R denied and a
                       final 429 with remaining 0
  --drain-seconds S    wait for checks in flight after the window (default 10)
  --subject-prefix X   subjects are X-<i> (default qg-<random>)
  The rust target (and quota-ref beside it, which ignores it) gets service
  tokens (role service, plan enterprise: not charged).

bench presence / presencegen:
  --users N            users, each heartbeats first with its own token (default 200)
  --seconds T          length of each phase: single reads, batch reads,
                       heartbeats (default 10)
  --concurrency C      requests in flight, one keep-alive connection each (default 16)
  --batch B            ids per batch read, at most 100 (default 100)
  --callers K          caller tokens reads rotate over (default N: the users);
                       every request is charged to its caller (enterprise: 100/s
                       after a burst of 1000), see max_caller_req_per_s
  --drain-seconds S    wait for requests in flight after each phase (default 10)
  --user-prefix X      user ids are X-u<i> (default pres-<random>)
  The summary line has batch_p50_over_single_p50 (goal: <= 3).

Run through `cargo xtask` (a debug build), the bench first builds the xtask
optimised into target/xtask-bench and runs that, so that the generator takes
less of the CPU it shares with the server; SESH_BENCH_DEBUG=1 skips this.
";

/// The bench commands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Which {
    Sessions,
    Quota,
    Presence,
}

/// Servers and generator, or the generator alone (`--url`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Bench,
    Gen,
}

/// Runs `cargo xtask bench ...`.
pub fn run(args: &[String]) -> Result<(), String> {
    let optimised = !cfg!(debug_assertions) || std::env::var_os("SESH_BENCH_DEBUG").is_some();
    let (cmd, mode) = match args.first().map(String::as_str) {
        Some("sessions") => (Which::Sessions, Mode::Bench),
        Some("loadgen") => (Which::Sessions, Mode::Gen),
        Some("quota") => (Which::Quota, Mode::Bench),
        Some("quotagen") => (Which::Quota, Mode::Gen),
        Some("presence") => (Which::Presence, Mode::Bench),
        Some("presencegen") => (Which::Presence, Mode::Gen),
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            return Ok(());
        }
        Some(other) => return Err(format!("unknown bench command {other}\n\n{HELP}")),
    };
    let rest = &args[1..];
    // A typo fails before any build.
    let parsed = match cmd {
        Which::Sessions => parse_sessions(rest, mode).map(Parsed::Sessions),
        Which::Quota => parse_quota(rest, mode).map(Parsed::Quota),
        Which::Presence => parse_presence(rest, mode).map(Parsed::Presence),
    }?;
    if !optimised {
        return exec_optimised(args);
    }
    match (parsed, mode) {
        (Parsed::Sessions(a), Mode::Bench) => sessions(a),
        (Parsed::Sessions(a), Mode::Gen) => loadgen_only(a),
        (Parsed::Quota(a), Mode::Bench) => quota_bench(a),
        (Parsed::Quota(a), Mode::Gen) => quotagen_only(a),
        (Parsed::Presence(a), Mode::Bench) => presence_bench(a),
        (Parsed::Presence(a), Mode::Gen) => presencegen_only(a),
    }
}

enum Parsed {
    Sessions(Args<loadgen::Options>),
    Quota(Args<quota::Options>),
    Presence(Args<presence::Options>),
}

/// The generator shares two cores with the server it measures, and a
/// debug build of it (what `cargo xtask` runs) takes about twice the CPU of
/// an optimised one. So the bench builds the xtask optimised, in a target
/// folder of its own (no other build is disturbed or rebuilt), and runs
/// that instead. `SESH_BENCH_DEBUG=1` keeps the debug build.
fn exec_optimised(args: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let root = crate::root();
    let target_dir = root.join("target/xtask-bench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "bench: building an optimised xtask into {} (a few minutes the first time)",
        target_dir.display()
    );
    crate::run(
        Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "xtask",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
    )?;
    let bin = target_dir.join("release/xtask");
    let err = Command::new(&bin).arg("bench").args(args).exec();
    Err(format!("could not run {}: {err}", bin.display()))
}

// ---- arguments -----------------------------------------------------------

/// What a bench command was asked for: the generator's options and the
/// options common to the commands.
#[derive(Debug, PartialEq)]
pub struct Args<G> {
    pub gen: G,
    pub targets: Vec<String>,
    pub rounds: usize,
    pub state_root: Option<PathBuf>,
    /// Generator alone: mint tokens.
    pub tokens: bool,
    /// Generator alone: processes to report CPU for.
    pub watch_pids: Vec<u32>,
    /// Generator alone: the server.
    pub url: Option<String>,
}

impl<G: Default> Args<G> {
    fn new(targets: &[&str]) -> Args<G> {
        Args {
            gen: G::default(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            rounds: 1,
            state_root: None,
            tokens: false,
            watch_pids: Vec::new(),
            url: None,
        }
    }
}

impl<G> Args<G> {
    /// Takes `name` when it is one of the common options in `mode`
    /// (`targets`: whether `--targets` is one; `tokens`: `--tokens`).
    fn common(
        &mut self,
        name: &str,
        v: &str,
        mode: Mode,
        (targets, tokens): (bool, bool),
    ) -> Result<bool, String> {
        match (name, mode) {
            ("--targets", Mode::Bench) if targets => {
                self.targets = v
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                if self.targets.is_empty() {
                    return Err("--targets names no target".into());
                }
            }
            ("--rounds", Mode::Bench) => self.rounds = positive_int(name, v)?,
            ("--state-root", Mode::Bench) => self.state_root = Some(PathBuf::from(v)),
            ("--url", Mode::Bench) => {
                return Err("this bench starts its own servers; --url is for the generator alone (loadgen, quotagen, presencegen)".into())
            }
            ("--url", Mode::Gen) => {
                http::host_port(v)?;
                self.url = Some(v.trim_end_matches('/').to_owned());
            }
            ("--tokens", Mode::Gen) if tokens => self.tokens = true,
            ("--watch-pids", Mode::Gen) => {
                self.watch_pids = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse()
                            .map_err(|_| format!("bad pid {p:?} in --watch-pids"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The generator alone needs `--url`.
    fn finish(self, mode: Mode) -> Result<Self, String> {
        if mode == Mode::Gen && self.url.is_none() {
            return Err("the generator alone needs --url http://host:port".into());
        }
        Ok(self)
    }
}

/// `--name value` and `--name=value` options and value-less `flags`, in
/// order, as `(name, value)` (`""` for a flag).
pub fn options(args: &[String], flags: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let value = if flags.contains(&name) {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            String::new()
        } else {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("missing value for {name}"))?
                }
            }
        };
        out.push((name.to_owned(), value));
        i += 1;
    }
    Ok(out)
}

fn positive_int(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} must be a positive integer, not {v:?}")),
    }
}

fn number(flag: &str, v: &str, min_exclusive: bool) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (x > 0.0 || (!min_exclusive && x == 0.0)) => Ok(x),
        _ => Err(format!(
            "{flag} must be a number {} 0, not {v:?}",
            if min_exclusive { ">" } else { ">=" }
        )),
    }
}

fn non_empty(flag: &str, v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(format!("{flag} must not be empty"));
    }
    Ok(v.to_owned())
}

fn unknown(name: &str) -> String {
    format!("unknown option {name}\n\n{HELP}")
}

/// Parses the options of `bench sessions` / `bench loadgen`.
pub fn parse_sessions(args: &[String], mode: Mode) -> Result<Args<loadgen::Options>, String> {
    let mut a: Args<loadgen::Options> = Args::new(&["rust", "js-ref"]);
    for (name, v) in options(args, &["--create-sessions", "--tokens"])? {
        let (name, v) = (name.as_str(), v.as_str());
        if a.common(name, v, mode, (true, true))? {
            continue;
        }
        let g = &mut a.gen;
        match (name, mode) {
            ("--sessions", _) => g.sessions = positive_int(name, v)?,
            ("--participants", _) => g.participants = positive_int(name, v)?,
            ("--window", _) => g.window = positive_int(name, v)?,
            ("--seconds", _) => g.seconds = number(name, v, true)?,
            ("--rate", _) => g.rate = number(name, v, false)?,
            ("--connect-timeout", _) => g.connect_timeout = number(name, v, true)?,
            ("--drain-seconds", _) => g.drain_seconds = number(name, v, false)?,
            ("--user-prefix", _) => g.user_prefix = Some(non_empty(name, v)?),
            // Per target in `bench sessions` (only the rust target needs it).
            ("--create-sessions", Mode::Bench) => {}
            ("--create-sessions", Mode::Gen) => {
                g.create_sessions = true;
                a.tokens = true;
            }
            _ => return Err(unknown(name)),
        }
    }
    if let Some(url) = &a.url {
        a.gen.url = url.clone();
    }
    a.finish(mode)
}

/// Parses the options of `bench quota` / `bench quotagen`.
pub fn parse_quota(args: &[String], mode: Mode) -> Result<Args<quota::Options>, String> {
    let mut a: Args<quota::Options> = Args::new(&["rust", "quota-ref"]);
    for (name, v) in options(args, &["--tokens"])? {
        let (name, v) = (name.as_str(), v.as_str());
        if a.common(name, v, mode, (true, true))? {
            continue;
        }
        let g = &mut a.gen;
        match name {
            "--subjects" => g.subjects = positive_int(name, v)?,
            "--concurrency" => g.concurrency = positive_int(name, v)?,
            "--seconds" => g.seconds = number(name, v, true)?,
            "--plan" => g.plan = Some(non_empty(name, v)?),
            "--resource" => {
                g.resource = Some(
                    quota::Resource::parse(v)
                        .ok_or("--resource must be api, sessions or points")?,
                );
            }
            "--cost" => g.cost = positive_int(name, v)? as u64,
            "--callers" => g.callers = positive_int(name, v)?,
            "--exact" => g.exact = positive_int(name, v)?,
            "--drain-seconds" => g.drain_seconds = number(name, v, false)?,
            "--subject-prefix" => g.subject_prefix = Some(non_empty(name, v)?),
            _ => return Err(unknown(name)),
        }
    }
    a.gen.validate()?;
    if let Some(url) = &a.url {
        a.gen.url = url.clone();
    }
    a.finish(mode)
}

/// Parses the options of `bench presence` / `bench presencegen`.
pub fn parse_presence(args: &[String], mode: Mode) -> Result<Args<presence::Options>, String> {
    let mut a: Args<presence::Options> = Args::new(&["rust"]);
    for (name, v) in options(args, &[])? {
        let (name, v) = (name.as_str(), v.as_str());
        if a.common(name, v, mode, (false, false))? {
            continue;
        }
        let g = &mut a.gen;
        match name {
            "--users" => g.users = positive_int(name, v)?,
            "--seconds" => g.seconds = number(name, v, true)?,
            "--concurrency" => g.concurrency = positive_int(name, v)?,
            "--batch" => g.batch = positive_int(name, v)?,
            "--callers" => g.callers = Some(positive_int(name, v)?),
            "--drain-seconds" => g.drain_seconds = number(name, v, false)?,
            "--user-prefix" => g.user_prefix = Some(non_empty(name, v)?),
            _ => return Err(unknown(name)),
        }
    }
    a.gen.validate()?;
    if let Some(url) = &a.url {
        a.gen.url = url.clone();
    }
    a.finish(mode)
}

// ---- running -------------------------------------------------------------

/// What every bench with servers prepares once.
struct Bench {
    bench: PathBuf,
    targets: Vec<Target>,
    /// `.dev.vars`' `AUTH_SECRET`, when a target is the rust worker.
    secret: Option<String>,
    state_root: PathBuf,
}

impl Bench {
    /// Copies the shared bench (npm ci when needed), resolves the targets,
    /// and builds the Worker bundle when `rust` is one of them.
    fn prepare<G>(a: &Args<G>) -> Result<Bench, String> {
        let root = crate::root();
        let bench = serve::prepare_bench(&root)?;
        let targets: Vec<Target> = a
            .targets
            .iter()
            .map(|t| Target::resolve(t, &root, &bench))
            .collect::<Result<_, _>>()?;
        let secret = if targets.iter().any(|t| t.rust) {
            Some(serve::prepare_rust(&root)?)
        } else {
            None
        };
        let state_root = serve::state_root(a.state_root.as_deref());
        Ok(Bench {
            bench,
            targets,
            secret,
            state_root,
        })
    }

    /// `rounds` rounds, each target once per round in the order given:
    /// serves it, runs `gen(target, port, server pids)`, prints its lines
    /// (`<target> <json>`), and collects the results and the problems
    /// (correctness errors, runs that did not run).
    fn alternate<R: Figures>(
        &self,
        rounds: usize,
        mut gen: impl FnMut(&Target, u16, &[u32]) -> Result<R, String>,
    ) -> (Vec<(String, R)>, Vec<String>) {
        let mut runs = Vec::new();
        let mut problems = Vec::new();
        for round in 1..=rounds {
            for t in &self.targets {
                let result = serve::with_server(
                    t,
                    &self.bench,
                    &self.state_root,
                    |port, pids| gen(t, port, pids),
                    |r: &R| r.ok(),
                );
                match result {
                    Ok(r) => {
                        for line in r.lines() {
                            println!("{} {line}", t.name);
                        }
                        if !r.ok() {
                            problems.push(format!(
                                "{} round {round}: {} correctness errors {}",
                                t.name,
                                r.errors(),
                                serde_json::json!(r.error_detail())
                            ));
                        }
                        runs.push((t.name.clone(), r));
                    }
                    Err(e) => {
                        eprintln!("bench: {} round {round}: {e}", t.name);
                        problems.push(format!("{} round {round}: did not run: {e}", t.name));
                    }
                }
            }
        }
        (runs, problems)
    }

    fn names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }
}

/// Prints the summary; an error lists the problems.
fn conclude(summary: &Summary, problems: &[String]) -> Result<(), String> {
    eprint!("{}", summary.table);
    println!("{}", summary.json);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "correctness errors or failed runs:\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// `.dev.vars`' `AUTH_SECRET` (the file is created when missing).
fn dev_secret() -> Result<String, String> {
    let root = crate::root();
    crate::setup::dev_vars(&root)?;
    crate::setup::auth_secret(&root)
}

// ---- bench sessions / loadgen --------------------------------------------

const SESSION_METRICS: [&str; 14] = [
    "acks_per_s",
    "deliveries_per_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "delivery_p50_ms",
    "delivery_p99_ms",
    "ack_max_ms",
    "ack_share_min",
    "errors",
    "cpu_workerd_pct",
    "cpu_proxy_pct",
    "cpu_node_pct",
    "cpu_loadgen_pct",
    "workerd_cpu_us_per_ack",
];

impl Figures for loadgen::Report {
    /// The per-run figures summarised (as summarize.mjs).
    fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "acks_per_s" => Some(self.acks_per_s as f64),
            "deliveries_per_s" => Some(self.deliveries_per_s as f64),
            "ack_p50_ms" => self.ack_p50_ms,
            "ack_p99_ms" => self.ack_p99_ms,
            "delivery_p50_ms" => self.delivery_p50_ms,
            "delivery_p99_ms" => self.delivery_p99_ms,
            "ack_max_ms" => self.ack_max_ms,
            "ack_share_min" => self.ack_share_min,
            "errors" => Some(self.errors as f64),
            "workerd_cpu_us_per_ack" => cpu::workerd_cpu_us_per(&self.cpu_pct, self.acks_per_s),
            _ => cpu::cpu_metric(name, &self.cpu_pct),
        }
    }
    summary::one_line_figures!();
}

fn loadgen_only(a: Args<loadgen::Options>) -> Result<(), String> {
    let auth = if a.tokens {
        loadgen::Auth::Secret(dev_secret()?)
    } else {
        loadgen::Auth::UserParam
    };
    let report = loadgen::run(&a.gen, &auth, &a.watch_pids)?;
    println!("{}", report.to_json());
    if report.errors > 0 {
        return Err(format!("{} correctness errors", report.errors));
    }
    Ok(())
}

fn sessions(a: Args<loadgen::Options>) -> Result<(), String> {
    let b = Bench::prepare(&a)?;
    let g = &a.gen;
    eprintln!(
        "# bench sessions: targets={} rounds={} sessions={} participants={} seconds={} window={} rate={} state under {}",
        a.targets.join(","),
        a.rounds,
        g.sessions,
        g.participants,
        g.seconds,
        g.window,
        g.rate,
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(a.rounds, |t, port, pids| {
        let auth = match (&b.secret, t.rust) {
            (Some(s), true) => loadgen::Auth::Secret(s.clone()),
            _ => loadgen::Auth::UserParam,
        };
        let mut opts = g.clone();
        opts.url = format!("http://127.0.0.1:{port}");
        opts.create_sessions = t.rust;
        loadgen::run(&opts, &auth, pids)
    });
    let shape = serde_json::json!({
        "sessions": g.sessions, "participants": g.participants,
        "seconds": g.seconds, "window": g.window, "rate": g.rate,
    });
    let heading = format!(
        "sessions={} participants={} seconds={} window={} rate={}",
        g.sessions, g.participants, g.seconds, g.window, g.rate
    );
    let summary = summary::compare(
        "bench sessions",
        shape,
        &heading,
        &b.names(),
        &runs,
        &SESSION_METRICS,
        &problems,
    );
    conclude(&summary, &problems)
}

// ---- bench quota / quotagen ----------------------------------------------

fn quotagen_only(a: Args<quota::Options>) -> Result<(), String> {
    let auth = if a.tokens {
        quota::Auth::Service(dev_secret()?)
    } else {
        quota::Auth::None
    };
    let report = quota::run(&a.gen, &auth, &a.watch_pids);
    println!("{}", report.to_json());
    if !report.ok() {
        return Err(format!(
            "{} correctness errors{}",
            report.errors,
            if report.exact_ok == Some(false) {
                ", exact_ok false"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

fn quota_bench(a: Args<quota::Options>) -> Result<(), String> {
    let b = Bench::prepare(&a)?;
    let g = &a.gen;
    let shape = if g.exact > 0 {
        serde_json::json!({
            "exact_R": g.exact, "fired": 2 * g.exact, "plan": g.plan(),
            "resource": g.resource().name(),
        })
    } else {
        serde_json::json!({
            "subjects": g.subjects, "concurrency": g.concurrency, "seconds": g.seconds,
            "plan": g.plan(), "resource": g.resource().name(), "cost": g.cost,
            "callers": g.callers,
        })
    };
    let heading = if g.exact > 0 {
        format!(
            "quota exact R={} ({} concurrent checks) plan={} resource={}",
            g.exact,
            2 * g.exact,
            g.plan(),
            g.resource().name()
        )
    } else {
        format!(
            "quota subjects={} concurrency={} seconds={} plan={} resource={} cost={}",
            g.subjects,
            g.concurrency,
            g.seconds,
            g.plan(),
            g.resource().name(),
            g.cost
        )
    };
    eprintln!(
        "# bench quota: targets={} rounds={} {heading}; state under {}",
        a.targets.join(","),
        a.rounds,
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(a.rounds, |_t, port, pids| {
        // The same service tokens for every target: the rust worker needs
        // them, quota-ref ignores them.
        let auth = match &b.secret {
            Some(s) => quota::Auth::Service(s.clone()),
            None => quota::Auth::None,
        };
        let mut opts = g.clone();
        opts.url = format!("http://127.0.0.1:{port}");
        Ok(quota::run(&opts, &auth, pids))
    });
    let metrics: &[&str] = if g.exact > 0 {
        &quota::EXACT_METRICS
    } else {
        &quota::LOAD_METRICS
    };
    let summary = summary::compare(
        "bench quota",
        shape,
        &heading,
        &b.names(),
        &runs,
        metrics,
        &problems,
    );
    conclude(&summary, &problems)
}

// ---- bench presence / presencegen ----------------------------------------

fn presencegen_only(a: Args<presence::Options>) -> Result<(), String> {
    let report = presence::run(&a.gen, &dev_secret()?, &a.watch_pids);
    let problems: Vec<String> = if report.ok() {
        Vec::new()
    } else {
        vec![format!(
            "{} correctness errors {}",
            report.errors(),
            serde_json::json!(report.error_detail())
        )]
    };
    for line in report.lines() {
        println!("{line}");
    }
    conclude(
        &presence::summarize(&a.gen, &[report], &problems),
        &problems,
    )
}

fn presence_bench(a: Args<presence::Options>) -> Result<(), String> {
    let b = Bench::prepare(&a)?;
    let secret = b
        .secret
        .clone()
        .ok_or("bench presence needs the rust target")?;
    let g = &a.gen;
    eprintln!(
        "# bench presence: rounds={} users={} concurrency={} seconds={} batch={} callers={}; state under {}",
        a.rounds,
        g.users,
        g.concurrency,
        g.seconds,
        g.batch,
        g.callers(),
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(a.rounds, |_t, port, pids| {
        let mut opts = g.clone();
        opts.url = format!("http://127.0.0.1:{port}");
        Ok(presence::run(&opts, &secret, pids))
    });
    let reports: Vec<presence::Report> = runs.into_iter().map(|(_, r)| r).collect();
    conclude(&presence::summarize(g, &reports, &problems), &problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn option_splitting() {
        let got = options(&args("--a 1 --b=2 --flag --c= --d=x=y"), &["--flag"]).unwrap();
        let want: Vec<(String, String)> = [
            ("--a", "1"),
            ("--b", "2"),
            ("--flag", ""),
            ("--c", ""),
            ("--d", "x=y"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
        assert!(options(&args("--flag=1"), &["--flag"]).is_err());
        assert!(options(&args("--a"), &[]).is_err(), "a missing value");
        assert!(
            options(&args("x"), &[]).is_err(),
            "a bare word takes the next as its value"
        );
    }

    #[test]
    fn bench_defaults() {
        let a = parse_sessions(&[], Mode::Bench).unwrap();
        assert_eq!(a.targets, vec!["rust", "js-ref"]);
        assert_eq!(a.rounds, 1);
        assert_eq!(a.gen.sessions, 4);
        assert_eq!(a.gen.participants, 5);
        assert_eq!(a.gen.seconds, 10.0);
        assert_eq!(a.gen.window, 8);
        assert_eq!(a.gen.rate, 0.0);
        assert!(!a.gen.create_sessions);
    }

    #[test]
    fn bench_options() {
        let mut v =
            args("--sessions 1 --participants=10 --seconds 3 --window 2 --rate 50 --rounds 3");
        v.push("--targets".into());
        v.push("rust  js-ref,party-ref".into());
        let a = parse_sessions(&v, Mode::Bench).unwrap();
        assert_eq!(a.gen.sessions, 1);
        assert_eq!(a.gen.participants, 10);
        assert_eq!(a.gen.seconds, 3.0);
        assert_eq!(a.gen.window, 2);
        assert_eq!(a.gen.rate, 50.0);
        assert_eq!(a.rounds, 3);
        assert_eq!(a.targets, vec!["rust", "js-ref", "party-ref"]);
        // --create-sessions is decided per target in bench sessions
        let a = parse_sessions(&args("--create-sessions"), Mode::Bench).unwrap();
        assert!(!a.gen.create_sessions);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "--sessions 0",
            "--sessions -1",
            "--participants x",
            "--window 1.5",
            "--seconds 0",
            "--seconds nan",
            "--rate -1",
            "--rounds 0",
            "--sessions",
            "--bogus 1",
            "--url http://127.0.0.1:1",
            "--tokens",
            "--create-sessions=yes",
        ] {
            assert!(parse_sessions(&args(bad), Mode::Bench).is_err(), "{bad}");
        }
        assert!(parse_sessions(&["--targets".into(), " ".into()], Mode::Bench).is_err());
        assert!(parse_sessions(&args("--rounds 2"), Mode::Gen).is_err());
        assert!(
            parse_sessions(&args("--sessions 2"), Mode::Gen).is_err(),
            "no --url"
        );
        assert!(parse_sessions(&args("--url ws://x:1"), Mode::Gen).is_err());
    }

    #[test]
    fn loadgen_options() {
        let a = parse_sessions(
            &args(
                "--url http://127.0.0.1:9000/ --create-sessions --watch-pids 1,22 --user-prefix u",
            ),
            Mode::Gen,
        )
        .unwrap();
        assert_eq!(a.gen.url, "http://127.0.0.1:9000");
        assert!(a.gen.create_sessions);
        assert!(a.tokens, "--create-sessions needs tokens");
        assert_eq!(a.watch_pids, vec![1, 22]);
        assert_eq!(a.gen.user_prefix.as_deref(), Some("u"));
        assert!(parse_sessions(&args("--url http://x:1 --watch-pids 1,a"), Mode::Gen).is_err());
    }

    #[test]
    fn quota_defaults_follow_the_mode() {
        let a = parse_quota(&[], Mode::Bench).unwrap();
        assert_eq!(a.targets, vec!["rust", "quota-ref"]);
        assert_eq!(a.rounds, 1);
        let g = &a.gen;
        assert_eq!((g.subjects, g.concurrency, g.seconds), (100, 16, 10.0));
        assert_eq!(
            (g.plan(), g.resource()),
            ("enterprise", quota::Resource::Api)
        );
        assert_eq!((g.cost, g.callers, g.exact), (1, 1, 0));
        // exact mode: free plan, points, unless given
        let e = parse_quota(&args("--exact 50"), Mode::Bench).unwrap().gen;
        assert_eq!(e.exact, 50);
        assert_eq!((e.plan(), e.resource()), ("free", quota::Resource::Points));
        let e = parse_quota(
            &args("--exact 5 --plan pro --resource sessions"),
            Mode::Bench,
        )
        .unwrap()
        .gen;
        assert_eq!((e.plan(), e.resource()), ("pro", quota::Resource::Sessions));
    }

    #[test]
    fn quota_options() {
        let a = parse_quota(
            &args("--subjects 1 --concurrency=4 --seconds 2.5 --plan pro --resource points --cost 3 --callers 8 --rounds 2 --subject-prefix s"),
            Mode::Bench,
        )
        .unwrap();
        let g = &a.gen;
        assert_eq!((g.subjects, g.concurrency, g.seconds), (1, 4, 2.5));
        assert_eq!((g.plan(), g.resource()), ("pro", quota::Resource::Points));
        assert_eq!((g.cost, g.callers, a.rounds), (3, 8, 2));
        assert_eq!(g.subject_prefix.as_deref(), Some("s"));
        let a = parse_quota(&args("--url http://127.0.0.1:5/ --tokens"), Mode::Gen).unwrap();
        assert_eq!(a.gen.url, "http://127.0.0.1:5");
        assert!(a.tokens);
        for bad in [
            "--subjects 0",
            "--concurrency x",
            "--exact -1",
            "--exact 0",
            "--exact 5 --resource api",
            "--resource cpu",
            "--plan",
            "--cost 0",
            "--tokens",
            "--url http://127.0.0.1:1",
            "--sessions 4",
        ] {
            assert!(parse_quota(&args(bad), Mode::Bench).is_err(), "{bad}");
        }
        assert!(
            parse_quota(&args("--subjects 1"), Mode::Gen).is_err(),
            "no --url"
        );
    }

    #[test]
    fn presence_options() {
        let a = parse_presence(&[], Mode::Bench).unwrap();
        assert_eq!(a.targets, vec!["rust"]);
        let g = &a.gen;
        assert_eq!(
            (g.users, g.seconds, g.concurrency, g.batch),
            (200, 10.0, 16, 100)
        );
        assert_eq!(g.callers(), 200, "the users are the callers by default");
        let a = parse_presence(
            &args("--users 150 --seconds 2 --concurrency 4 --batch 50 --callers 40 --rounds 2"),
            Mode::Bench,
        )
        .unwrap();
        let g = &a.gen;
        assert_eq!(
            (g.users, g.seconds, g.concurrency, g.batch),
            (150, 2.0, 4, 50)
        );
        assert_eq!((g.callers(), a.rounds), (40, 2));
        for bad in [
            "--users 0",
            "--batch 101",
            "--users 50",
            "--users 99 --batch 100",
            "--targets rust",
            "--tokens",
            "--seconds -2",
        ] {
            assert!(parse_presence(&args(bad), Mode::Bench).is_err(), "{bad}");
        }
        let a =
            parse_presence(&args("--url http://127.0.0.1:8787 --users 100"), Mode::Gen).unwrap();
        assert_eq!(a.gen.url, "http://127.0.0.1:8787");
        assert!(parse_presence(&[], Mode::Gen).is_err(), "no --url");
    }
}
