//! `cargo xtask bench`: the benchmarks of `../shared/bench` with their
//! generators in Rust, each target served the same way (`serve.mjs`,
//! inspector off) on a free port with a throw-away state folder:
//!
//! - `sessions`: session WebSockets (compare.sh + run.sh + loadgen.mjs),
//!   the Rust worker beside the JS references, alternately;
//! - `quota`: `POST /v1/quota/check` (quotagen.mjs), the Rust worker beside
//!   `quota-ref`, alternately;
//! - `presence`: presence reads and heartbeats, the Rust worker alone;
//! - `wake`: a session with many stored points woken from cold beside one
//!   with few, the Rust worker alone;
//! - `history`: roll-ups and session lists over local D1, the Rust worker
//!   alone (built with `test-faults` for its D1 route);
//! - `lifecycle`: partition moves, archives and an export over local D1
//!   and R2, likewise.
//!
//! `loadgen`, `quotagen` and `presencegen` run a generator alone against a
//! server already running (`--url`). Each run prints `<target> {json}` (one
//! line per phase for presence), then a summary table on stderr and one
//! JSON summary line (medians, min, max, ratios of rust to each other
//! target); the command fails when any run had correctness errors or did
//! not run.

mod drive;
mod history;
mod lifecycle;
mod loadgen;
mod presence;
mod quota;
mod serve;
mod summary;
mod wake;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

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
    /// Waking a session with many stored points (the runtime restarted on
    /// the same state) beside one with 100: time to the first ack; rust
    /// alone (goal: big/small <= 2)
    Wake {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        gen: wake::Options,
    },
    /// Roll-up throughput over local D1 (points/s) and GET /v1/sessions
    /// over 1 month vs 24 months; rust alone, built with test-faults
    History {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        gen: history::Options,
    },
    /// Move, archive and export throughput (rows/s) over local D1 and R2;
    /// rust alone, built with test-faults
    Lifecycle {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        gen: lifecycle::Options,
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
#[cfg(test)]
fn defaults<T: Args + clap::FromArgMatches>() -> T {
    let matches = T::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// A server as a generator gets it.
pub struct Served<'a> {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its processes, for the CPU report.
    pub pids: Vec<u32>,
    /// `.dev.vars`' `AUTH_SECRET` when the generator is to mint tokens.
    pub secret: Option<String>,
    server: Option<&'a mut sesh_launcher::Server>,
}

impl Served<'_> {
    /// A server the generator did not start: it cannot be restarted.
    fn running(url: String, pids: Vec<u32>, secret: Option<String>) -> Served<'static> {
        Served {
            url,
            pids,
            secret,
            server: None,
        }
    }

    /// Kills the runtime and starts it again on the same state (a new
    /// port): every object loads from storage when next called.
    pub fn restart(&mut self) -> Result<()> {
        let s = self
            .server
            .as_mut()
            .ok_or_else(|| anyhow!("no server to restart"))?;
        s.crash_and_restart()?;
        (self.url, self.pids) = (s.base.clone(), s.pids());
        Ok(())
    }

    /// The secret, for generators that need tokens.
    pub fn secret(&self) -> Result<&str> {
        self.secret
            .as_deref()
            .ok_or_else(|| anyhow!("this bench needs the rust target"))
    }
}

/// A generator as the benches drive it.
trait Gen: Clone {
    /// The summary's title, e.g. `bench quota`.
    const TITLE: &'static str;
    /// The Worker's features when the bench serves the rust target.
    const FEATURES: Option<&'static str> = None;
    /// The run's shape for people and as JSON.
    fn shape(&self) -> (String, Value);
    /// The figures summarised.
    fn metrics(&self) -> &'static str;
    /// The options and the token secret for one target.
    fn for_target(&self, rust: bool, secret: Option<&str>) -> (Self, Option<String>) {
        (self.clone(), secret.filter(|_| rust).map(str::to_owned))
    }
    /// One run: its JSON lines.
    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>>;
    /// The summary: targets side by side unless a bench has its own.
    fn summarize(
        &self,
        names: &[String],
        runs: &[(String, Value)],
        problems: &[String],
    ) -> Summary {
        let (heading, shape) = self.shape();
        let title = Self::TITLE;
        let metrics: Vec<&str> = self.metrics().split_whitespace().collect();
        summary::compare(title, shape, &heading, names, runs, &metrics, problems)
    }
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
    let rust = || vec!["rust".to_owned()];
    match b {
        Bench::Sessions {
            servers,
            targets,
            gen,
        } => with_servers(&servers, &targets.0, &gen),
        Bench::Quota {
            servers,
            targets,
            gen,
        } => with_servers(&servers, &targets.0, &gen),
        Bench::Presence { servers, gen } => with_servers(&servers, &rust(), &gen),
        Bench::Wake { servers, gen } => with_servers(&servers, &rust(), &gen),
        Bench::History { servers, gen } => with_servers(&servers, &rust(), &gen),
        Bench::Lifecycle { servers, gen } => with_servers(&servers, &rust(), &gen),
        Bench::Loadgen { alone, tokens, gen } => {
            let tokens = tokens || gen.create_sessions;
            alone_run(alone, &gen, tokens)
        }
        Bench::Quotagen { alone, tokens, gen } => alone_run(alone, &gen, tokens),
        Bench::Presencegen { alone, gen } => alone_run(alone, &gen, true),
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

fn parse_lines(lines: &[String]) -> Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).context("a report line is not JSON"))
        .collect()
}

/// What is wrong with a run's lines, if anything.
fn problem(values: &[Value]) -> Option<String> {
    let exact = values.iter().any(|v| v["exact_ok"] == false);
    (!summary::ok(values)).then(|| {
        format!(
            "{} correctness errors{} {}",
            values.iter().map(summary::errors).sum::<u64>(),
            if exact { ", exact_ok false" } else { "" },
            json!(summary::error_detail(values))
        )
    })
}

/// A generator alone against `--url`: its lines, and for several lines
/// (presence's phases) their summary; an error says what was wrong.
fn alone_run<G: Gen>(alone: Alone, gen: &G, tokens: bool) -> Result<()> {
    let secret = if tokens {
        let root = crate::root();
        crate::setup::dev_vars(&root)?;
        Some(crate::setup::auth_secret(&root)?)
    } else {
        None
    };
    let lines = gen.run(&mut Served::running(alone.url, alone.watch_pids, secret))?;
    lines.iter().for_each(|l| println!("{l}"));
    let values = parse_lines(&lines)?;
    let problems: Vec<String> = problem(&values).into_iter().collect();
    if lines.len() > 1 {
        let runs: Vec<(String, Value)> =
            values.into_iter().map(|v| ("run".to_owned(), v)).collect();
        return conclude(
            &gen.summarize(&["run".to_owned()], &runs, &problems),
            &problems,
        );
    }
    match problems.first() {
        Some(p) => bail!("{p}"),
        None => Ok(()),
    }
}

/// `rounds` rounds, each target served once per round in the order given:
/// the generator's lines printed as `<target> <json>`, then the summary;
/// an error lists the runs with correctness errors or that did not run.
fn with_servers<G: Gen>(servers: &Servers, targets: &[String], gen: &G) -> Result<()> {
    let root = crate::root();
    let bench = serve::prepare_bench(&root)?;
    let targets: Vec<serve::Target> = targets
        .iter()
        .map(|t| serve::Target::resolve(t, &root, &bench))
        .collect::<Result<_>>()?;
    let secret = match targets.iter().any(|t| t.rust) {
        true => Some(serve::prepare_rust(&root, G::FEATURES)?),
        false => None,
    };
    let state_root = serve::state_root(servers.state_root.as_deref());
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    eprintln!(
        "# {}: targets={} rounds={} {}; state under {}",
        G::TITLE,
        names.join(","),
        servers.rounds,
        gen.shape().0,
        state_root.display()
    );
    let (mut runs, mut problems) = (Vec::new(), Vec::new());
    for round in 1..=servers.rounds {
        for t in &targets {
            let (g, secret) = gen.for_target(t.rust, secret.as_deref());
            let result = serve::with_server(
                t,
                &bench,
                &state_root,
                |server| {
                    let (url, pids) = (server.base.clone(), server.pids());
                    let mut s = Served {
                        url,
                        pids,
                        secret,
                        server: Some(server),
                    };
                    let lines = g.run(&mut s)?;
                    Ok((parse_lines(&lines)?, lines))
                },
                |(values, _)| summary::ok(values),
            );
            match result {
                Ok((values, lines)) => {
                    lines.iter().for_each(|l| println!("{} {l}", t.name));
                    if let Some(p) = problem(&values) {
                        problems.push(format!("{} round {round}: {p}", t.name));
                    }
                    runs.extend(values.into_iter().map(|v| (t.name.clone(), v)));
                }
                Err(e) => {
                    eprintln!("bench: {} round {round}: {e:#}", t.name);
                    problems.push(format!("{} round {round}: did not run: {e:#}", t.name));
                }
            }
        }
    }
    conclude(&gen.summarize(&names, &runs, &problems), &problems)
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
        Cli::try_parse_from(["bench"].into_iter().chain(s.split_whitespace())).map(|c| c.bench)
    }

    #[test]
    fn defaults_follow_the_reference_generators() {
        let Ok(Bench::Sessions {
            servers,
            targets,
            gen,
        }) = parse("sessions")
        else {
            panic!("sessions parses");
        };
        assert_eq!(
            (targets.0, servers.rounds),
            (vec!["rust".into(), "js-ref".into()], 1)
        );
        assert_eq!(
            (gen.sessions, gen.participants, gen.window, gen.seconds),
            (4, 5, 8, 10.0)
        );
        let Ok(Bench::Quota { gen, .. }) = parse("quota --exact 50") else {
            panic!("exact parses");
        };
        assert_eq!(
            (gen.plan(), gen.resource()),
            ("free", quota::Resource::Points)
        );
        let Ok(Bench::Loadgen { alone, .. }) =
            parse("loadgen --url http://127.0.0.1:9/ --watch-pids 1,22")
        else {
            panic!("loadgen parses");
        };
        assert_eq!(
            (alone.url.as_str(), alone.watch_pids),
            ("http://127.0.0.1:9", vec![1, 22])
        );
        for bad in [
            "quota --exact 5 --resource api",
            "presence --batch 101",
            "presence --users 50",
        ] {
            let valid = match parse(bad) {
                Ok(Bench::Quota { gen, .. }) => gen.validate(),
                Ok(Bench::Presence { gen, .. }) => gen.validate(),
                _ => panic!("{bad} parses"),
            };
            assert!(valid.is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = "sessions --sessions 0; sessions --window 1.5; sessions --seconds nan; \
            sessions --rate -1; sessions --url http://127.0.0.1:1; loadgen --sessions 2; \
            loadgen --url ws://x:1; loadgen --url http://x:1/v1; loadgen --url http://x:1 --rounds 2; \
            quota --resource cpu; quota --cost 0; presence --targets rust; presencegen; \
            wake --points 0; history --points 0; history --months 13; lifecycle --points 0";
        for b in bad.split(';') {
            assert!(parse(b).is_err(), "{b}");
        }
    }
}
