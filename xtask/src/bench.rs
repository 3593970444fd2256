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
//! server already running (`--url`). Each run prints `<target> {json}` (one
//! line per phase for presence), then a summary table on stderr and one
//! JSON summary line (medians, min, max, ratios of rust to each other
//! target); the command fails when any run had correctness errors or did
//! not run.

mod cpu;
mod drive;
mod loadgen;
mod presence;
mod quota;
mod serve;
mod summary;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, FromArgMatches, Subcommand};
use serde_json::{json, Value};

use serve::Target;
use summary::Summary;

/// The bench commands.
#[derive(Subcommand)]
#[command(
    after_help = "Run through `cargo xtask` (a debug build), the bench first builds the \
    xtask optimised into target/xtask-bench and runs that, so that the generator takes less of \
    the CPU it shares with the server; SESH_BENCH_DEBUG=1 skips this."
)]
pub enum Bench {
    /// Session WebSockets: rust beside the JS references (which get
    /// ?user=, the rust target enterprise tokens)
    Sessions {
        #[command(flatten)]
        servers: Servers,
        /// What to serve: rust (this workspace), js-ref, party-ref, or a
        /// directory with a wrangler config
        #[arg(long, default_value = "rust js-ref", value_parser = targets)]
        targets: Targets,
        #[command(flatten)]
        gen: loadgen::Options,
    },
    /// Quota checks: rust beside quota-ref (both get service tokens; the
    /// rust target does not charge them)
    Quota {
        #[command(flatten)]
        servers: Servers,
        /// What to serve: rust (this workspace), quota-ref, or a directory
        /// with a wrangler config
        #[arg(long, default_value = "rust quota-ref", value_parser = targets)]
        targets: Targets,
        #[command(flatten)]
        gen: quota::Options,
    },
    /// Presence reads (single, batch) and heartbeats: rust alone; the
    /// summary has batch_p50_over_single_p50 (goal: <= 3)
    Presence {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        gen: presence::Options,
    },
    /// The session generator alone against a running server
    Loadgen {
        #[command(flatten)]
        alone: Alone,
        /// Mint ?token= (plan enterprise) with .dev.vars' AUTH_SECRET
        /// instead of ?user=
        #[arg(long)]
        tokens: bool,
        #[command(flatten)]
        gen: loadgen::Options,
    },
    /// The quota check generator alone against a running server
    Quotagen {
        #[command(flatten)]
        alone: Alone,
        /// Send service tokens minted with .dev.vars' AUTH_SECRET instead of
        /// no Authorization header
        #[arg(long)]
        tokens: bool,
        #[command(flatten)]
        gen: quota::Options,
    },
    /// The presence generator alone against a running server
    Presencegen {
        #[command(flatten)]
        alone: Alone,
        #[command(flatten)]
        gen: presence::Options,
    },
}

/// Options of the benches that start their own servers.
#[derive(Args)]
pub struct Servers {
    /// Rounds, targets alternately in each
    #[arg(long, default_value_t = 1, value_parser = positive)]
    rounds: usize,
    /// Where the throw-away state folders go [default: /dev/shm, else /tmp]
    #[arg(long, value_name = "DIR")]
    state_root: Option<PathBuf>,
}

/// Options of a generator alone.
#[derive(Args)]
pub struct Alone {
    /// The server, e.g. http://127.0.0.1:8787
    #[arg(long, required = true, value_parser = http_url)]
    url: String,
    /// Report these processes' CPU over the window
    #[arg(long, value_delimiter = ',', value_name = "PID,...")]
    watch_pids: Vec<u32>,
}

/// The targets to serve, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets(Vec<String>);

fn targets(v: &str) -> Result<Targets, String> {
    let t: Vec<String> = v
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if t.is_empty() {
        return Err("names no target".into());
    }
    Ok(Targets(t))
}

/// An integer > 0.
fn positive(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "must be a positive integer".into())
}

/// A number > 0.
fn seconds(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| "must be a number > 0".into())
}

/// A number >= 0.
fn non_negative(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| "must be a number >= 0".into())
}

fn non_empty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(v.to_owned())
}

/// `http://host[:port]`, without a trailing slash.
fn http_url(v: &str) -> Result<String, String> {
    let u = reqwest::Url::parse(v).map_err(|e| e.to_string())?;
    if u.scheme() != "http" || u.host_str().is_none() || u.path() != "/" || u.query().is_some() {
        return Err("must be http://host:port".into());
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// The port of an `http://` URL.
fn port_of(url: &str) -> Result<u16> {
    reqwest::Url::parse(url)?
        .port_or_known_default()
        .ok_or_else(|| anyhow!("no port in {url}"))
}

/// A generator's options as its command line has them by default.
fn defaults<T: Args + FromArgMatches>() -> T {
    let matches = T::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// Runs `cargo xtask bench ...`.
pub fn run(b: Bench) -> Result<()> {
    match &b {
        Bench::Quota { gen, .. } | Bench::Quotagen { gen, .. } => gen.validate()?,
        Bench::Presence { gen, .. } | Bench::Presencegen { gen, .. } => gen.validate()?,
        _ => {}
    }
    // A typo fails above, before any build.
    if cfg!(debug_assertions) && std::env::var_os("SESH_BENCH_DEBUG").is_none() {
        return exec_optimised();
    }
    match b {
        Bench::Sessions {
            servers,
            targets,
            gen,
        } => sessions(&servers, targets, gen),
        Bench::Quota {
            servers,
            targets,
            gen,
        } => quota_bench(&servers, targets, gen),
        Bench::Presence { servers, gen } => presence_bench(&servers, gen),
        Bench::Loadgen {
            alone,
            tokens,
            mut gen,
        } => {
            gen.url = alone.url;
            let auth = if tokens || gen.create_sessions {
                loadgen::Auth::Secret(dev_secret()?)
            } else {
                loadgen::Auth::UserParam
            };
            alone_line(&loadgen::run(&gen, &auth, &alone.watch_pids)?)
        }
        Bench::Quotagen {
            alone,
            tokens,
            mut gen,
        } => {
            gen.url = alone.url;
            let auth = if tokens {
                quota::Auth::Service(dev_secret()?)
            } else {
                quota::Auth::None
            };
            alone_line(&quota::run(&gen, &auth, &alone.watch_pids))
        }
        Bench::Presencegen { alone, mut gen } => {
            gen.url = alone.url;
            let lines = presence::run(&gen, &dev_secret()?, &alone.watch_pids);
            for line in &lines {
                println!("{line}");
            }
            let values = parse_lines(&lines)?;
            let mut problems = Vec::new();
            if !summary::ok(&values) {
                problems.push(format!(
                    "{} correctness errors {}",
                    values.iter().map(summary::errors).sum::<u64>(),
                    json!(summary::error_detail(&values))
                ));
            }
            conclude(&presence::summarize(&gen, &[values], &problems), &problems)
        }
    }
}

/// The generator shares two cores with the server it measures, and a
/// debug build of it (what `cargo xtask` runs) takes about twice the CPU of
/// an optimised one. So the bench builds the xtask optimised, in a target
/// folder of its own (no other build is disturbed or rebuilt), and runs
/// that instead. `SESH_BENCH_DEBUG=1` keeps the debug build.
fn exec_optimised() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let root = crate::root();
    let target_dir = root.join("target/xtask-bench");
    eprintln!(
        "bench: building an optimised xtask into {} (a few minutes the first time)",
        target_dir.display()
    );
    crate::run(
        Command::new(crate::cargo())
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "-p", "xtask"])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
    )?;
    let bin = target_dir.join("release/xtask");
    let err = Command::new(&bin).args(std::env::args_os().skip(1)).exec();
    Err(err).with_context(|| format!("could not run {}", bin.display()))
}

/// Prints a generator's line; an error says what was wrong.
fn alone_line(line: &str) -> Result<()> {
    println!("{line}");
    let v: Value = serde_json::from_str(line)?;
    if !summary::ok(std::slice::from_ref(&v)) {
        let exact = if v["exact_ok"] == false {
            ", exact_ok false"
        } else {
            ""
        };
        bail!("{} correctness errors{exact}", summary::errors(&v));
    }
    Ok(())
}

fn parse_lines(lines: &[String]) -> Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).context("a report line is not JSON"))
        .collect()
}

/// What every bench with servers prepares once.
struct Prepared {
    bench: PathBuf,
    targets: Vec<Target>,
    /// `.dev.vars`' `AUTH_SECRET`, when a target is the rust worker.
    secret: Option<String>,
    state_root: PathBuf,
}

impl Prepared {
    /// Copies the shared bench (npm ci when needed), resolves the targets,
    /// and builds the Worker bundle when `rust` is one of them.
    fn new(targets: &[String], servers: &Servers) -> Result<Prepared> {
        let root = crate::root();
        let bench = serve::prepare_bench(&root)?;
        let targets: Vec<Target> = targets
            .iter()
            .map(|t| Target::resolve(t, &root, &bench))
            .collect::<Result<_>>()?;
        let secret = if targets.iter().any(|t| t.rust) {
            Some(serve::prepare_rust(&root)?)
        } else {
            None
        };
        Ok(Prepared {
            bench,
            targets,
            secret,
            state_root: serve::state_root(servers.state_root.as_deref()),
        })
    }

    /// `rounds` rounds, each target once per round in the order given:
    /// serves it, runs `gen(target, url, server pids)`, prints its lines
    /// (`<target> <json>`), and collects the runs' lines and the problems
    /// (correctness errors, runs that did not run).
    fn alternate(
        &self,
        rounds: usize,
        mut gen: impl FnMut(&Target, String, &[u32]) -> Result<Vec<String>>,
    ) -> (Vec<(String, Vec<Value>)>, Vec<String>) {
        let mut runs = Vec::new();
        let mut problems = Vec::new();
        for round in 1..=rounds {
            for t in &self.targets {
                let result = serve::with_server(
                    t,
                    &self.bench,
                    &self.state_root,
                    |url, pids| {
                        let lines = gen(t, url, pids)?;
                        let values = parse_lines(&lines)?;
                        Ok((lines, values))
                    },
                    |(_, values)| summary::ok(values),
                );
                match result {
                    Ok((lines, values)) => {
                        for line in &lines {
                            println!("{} {line}", t.name);
                        }
                        if !summary::ok(&values) {
                            problems.push(format!(
                                "{} round {round}: {} correctness errors {}",
                                t.name,
                                values.iter().map(summary::errors).sum::<u64>(),
                                json!(summary::error_detail(&values))
                            ));
                        }
                        runs.push((t.name.clone(), values));
                    }
                    Err(e) => {
                        eprintln!("bench: {} round {round}: {e:#}", t.name);
                        problems.push(format!("{} round {round}: did not run: {e:#}", t.name));
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
fn conclude(summary: &Summary, problems: &[String]) -> Result<()> {
    eprint!("{}", summary.table);
    println!("{}", summary.json);
    if !problems.is_empty() {
        bail!(
            "correctness errors or failed runs:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// `.dev.vars`' `AUTH_SECRET` (the file is created when missing).
fn dev_secret() -> Result<String> {
    let root = crate::root();
    crate::setup::dev_vars(&root)?;
    crate::setup::auth_secret(&root)
}

/// One line per run: `(target, line)` for the summary.
fn single_lines(runs: Vec<(String, Vec<Value>)>) -> Vec<(String, Value)> {
    runs.into_iter()
        .flat_map(|(t, lines)| lines.into_iter().map(move |v| (t.clone(), v)))
        .collect()
}

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

fn sessions(servers: &Servers, targets: Targets, g: loadgen::Options) -> Result<()> {
    let b = Prepared::new(&targets.0, servers)?;
    let shape = format!(
        "sessions={} participants={} seconds={} window={} rate={}",
        g.sessions, g.participants, g.seconds, g.window, g.rate
    );
    eprintln!(
        "# bench sessions: targets={} rounds={} {shape} state under {}",
        targets.0.join(","),
        servers.rounds,
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(servers.rounds, |t, url, pids| {
        let auth = match (&b.secret, t.rust) {
            (Some(s), true) => loadgen::Auth::Secret(s.clone()),
            _ => loadgen::Auth::UserParam,
        };
        let opts = loadgen::Options {
            url,
            create_sessions: t.rust,
            ..g.clone()
        };
        Ok(vec![loadgen::run(&opts, &auth, pids)?])
    });
    let shape_json = json!({
        "sessions": g.sessions, "participants": g.participants,
        "seconds": g.seconds, "window": g.window, "rate": g.rate,
    });
    let summary = summary::compare(
        "bench sessions",
        shape_json,
        &shape,
        &b.names(),
        &single_lines(runs),
        &SESSION_METRICS,
        &problems,
    );
    conclude(&summary, &problems)
}

fn quota_bench(servers: &Servers, targets: Targets, g: quota::Options) -> Result<()> {
    let b = Prepared::new(&targets.0, servers)?;
    let (plan, resource) = (g.plan(), g.resource().name());
    let (shape, heading) = if g.exact() > 0 {
        let r = g.exact();
        (
            json!({"exact_R": r, "fired": 2 * r, "plan": plan, "resource": resource}),
            format!(
                "quota exact R={r} ({} concurrent checks) plan={plan} resource={resource}",
                2 * r
            ),
        )
    } else {
        (
            json!({
                "subjects": g.subjects, "concurrency": g.concurrency, "seconds": g.seconds,
                "plan": plan, "resource": resource, "cost": g.cost, "callers": g.callers,
            }),
            format!(
                "quota subjects={} concurrency={} seconds={} plan={plan} resource={resource} cost={}",
                g.subjects, g.concurrency, g.seconds, g.cost
            ),
        )
    };
    eprintln!(
        "# bench quota: targets={} rounds={} {heading}; state under {}",
        targets.0.join(","),
        servers.rounds,
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(servers.rounds, |_t, url, pids| {
        // The same service tokens for every target: the rust worker needs
        // them, quota-ref ignores them.
        let auth = match &b.secret {
            Some(s) => quota::Auth::Service(s.clone()),
            None => quota::Auth::None,
        };
        let opts = quota::Options { url, ..g.clone() };
        Ok(vec![quota::run(&opts, &auth, pids)])
    });
    let metrics: &[&str] = if g.exact() > 0 {
        &quota::EXACT_METRICS
    } else {
        &quota::LOAD_METRICS
    };
    let summary = summary::compare(
        "bench quota",
        shape,
        &heading,
        &b.names(),
        &single_lines(runs),
        metrics,
        &problems,
    );
    conclude(&summary, &problems)
}

fn presence_bench(servers: &Servers, g: presence::Options) -> Result<()> {
    let b = Prepared::new(&["rust".to_owned()], servers)?;
    let secret = b
        .secret
        .clone()
        .ok_or_else(|| anyhow!("bench presence needs the rust target"))?;
    eprintln!(
        "# bench presence: rounds={} users={} concurrency={} seconds={} batch={} callers={}; state under {}",
        servers.rounds,
        g.users,
        g.concurrency,
        g.seconds,
        g.batch,
        g.callers(),
        b.state_root.display()
    );
    let (runs, problems) = b.alternate(servers.rounds, |_t, url, pids| {
        let opts = presence::Options { url, ..g.clone() };
        Ok(presence::run(&opts, &secret, pids))
    });
    let runs: Vec<Vec<Value>> = runs.into_iter().map(|(_, r)| r).collect();
    conclude(&presence::summarize(&g, &runs, &problems), &problems)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: Bench,
    }

    fn parse(s: &str) -> Result<Bench, clap::Error> {
        let mut args = vec!["bench"];
        args.extend(s.split_whitespace());
        Cli::try_parse_from(args).map(|c| c.bench)
    }

    #[test]
    fn bench_defaults_and_options() {
        let Ok(Bench::Sessions {
            servers,
            targets,
            gen,
        }) = parse("sessions")
        else {
            panic!("sessions parses");
        };
        assert_eq!(targets.0, vec!["rust", "js-ref"]);
        assert_eq!(servers.rounds, 1);
        assert_eq!(gen, loadgen::Options::default());
        assert_eq!((gen.sessions, gen.participants, gen.window), (4, 5, 8));
        assert_eq!((gen.seconds, gen.rate), (10.0, 0.0));
        let Ok(Bench::Sessions { targets, gen, .. }) = parse(
            "sessions --sessions 1 --participants=10 --seconds 3 --window 2 --rate 50 --targets rust,js-ref,party-ref",
        ) else {
            panic!("options parse");
        };
        assert_eq!((gen.sessions, gen.participants, gen.window), (1, 10, 2));
        assert_eq!((gen.seconds, gen.rate), (3.0, 50.0));
        assert_eq!(targets.0, vec!["rust", "js-ref", "party-ref"]);
        let Ok(Bench::Loadgen { alone, gen, .. }) =
            parse("loadgen --url http://127.0.0.1:9000/ --create-sessions --watch-pids 1,22")
        else {
            panic!("loadgen parses");
        };
        assert_eq!(alone.url, "http://127.0.0.1:9000");
        assert_eq!(alone.watch_pids, vec![1, 22]);
        assert!(gen.create_sessions);
    }

    #[test]
    fn quota_and_presence_defaults_follow_the_mode() {
        let Ok(Bench::Quota { targets, gen, .. }) = parse("quota") else {
            panic!("quota parses");
        };
        assert_eq!(targets.0, vec!["rust", "quota-ref"]);
        assert_eq!(
            (gen.subjects, gen.concurrency, gen.seconds),
            (100, 16, 10.0)
        );
        assert_eq!(
            (gen.plan(), gen.resource()),
            ("enterprise", quota::Resource::Api)
        );
        assert_eq!((gen.cost, gen.callers, gen.exact()), (1, 1, 0));
        let Ok(Bench::Quota { gen, .. }) = parse("quota --exact 50") else {
            panic!("exact parses");
        };
        assert_eq!(
            (gen.plan(), gen.resource()),
            ("free", quota::Resource::Points)
        );
        let Ok(Bench::Quota { gen, .. }) = parse("quota --exact 5 --resource api") else {
            panic!("parses, refused by validate");
        };
        assert!(gen.validate().is_err());
        let Ok(Bench::Presence { gen, .. }) = parse("presence --users 150 --batch 50") else {
            panic!("presence parses");
        };
        assert_eq!((gen.users, gen.batch, gen.callers()), (150, 50, 150));
        for bad in ["presence --batch 101", "presence --users 50"] {
            let Ok(Bench::Presence { gen, .. }) = parse(bad) else {
                panic!("{bad} parses");
            };
            assert!(gen.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "sessions --sessions 0",
            "sessions --participants x",
            "sessions --window 1.5",
            "sessions --seconds 0",
            "sessions --seconds nan",
            "sessions --rate -1",
            "sessions --rounds 0",
            "sessions --sessions",
            "sessions --bogus 1",
            "sessions --url http://127.0.0.1:1",
            "sessions --tokens",
            "sessions --create-sessions=yes",
            "loadgen --sessions 2",
            "loadgen --url ws://x:1",
            "loadgen --url http://x:1/v1",
            "loadgen --url http://x:1 --watch-pids 1,a",
            "loadgen --url http://x:1 --rounds 2",
            "quota --subjects 0",
            "quota --exact 0",
            "quota --resource cpu",
            "quota --cost 0",
            "quota --plan",
            "presence --targets rust",
            "presence --tokens",
            "presence --seconds -2",
            "presencegen",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
