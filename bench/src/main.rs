//! `cargo xtask bench`: the benchmarks of `../shared/bench` with their
//! generators in Rust (see README.md), each target served the same way
//! (`serve.mjs`, inspector off) on a free port with a throw-away state
//! folder, or (`loadgen`, `quotagen`, `presencegen`) a generator alone
//! against a server already running. Each run prints `<target> {json}`,
//! then a summary table on stderr and one JSON summary line; the command
//! fails when any run had correctness errors or did not run.
//!
//! `cargo xtask bench ...` builds this crate optimised and runs it (see
//! the xtask); `cargo run -p sesh-bench -- ...` runs a debug build.

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

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use summary::Summary;

/// Benchmarks of the service, beside the JS references where there is one.
#[derive(clap::Parser)]
#[command(name = "cargo xtask bench", bin_name = "cargo xtask bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

fn main() -> std::process::ExitCode {
    let cli: Cli = clap::Parser::parse();
    match run(cli.bench) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The bench commands.
#[derive(Subcommand)]
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
    let t = v.split([' ', '\t', '\n', ',']).filter(|t| !t.is_empty());
    let t: Vec<String> = t.map(str::to_owned).collect();
    checked(&t, |t| !t.is_empty(), "name a target").map(Targets)
}

/// `v` parsed, if `ok` accepts it; else what it `must` be.
fn checked<T: Clone>(v: &T, ok: fn(&T) -> bool, must: &str) -> Result<T, String> {
    Some(v.clone())
        .filter(ok)
        .ok_or_else(|| format!("must {must}"))
}

fn parsed<T: Clone + std::str::FromStr>(
    v: &str,
    ok: fn(&T) -> bool,
    must: &str,
) -> Result<T, String> {
    checked(&v.parse().map_err(|_| format!("must {must}"))?, ok, must)
}

fn positive(v: &str) -> Result<usize, String> {
    parsed(v, |n| *n > 0, "be a positive integer")
}

fn seconds(v: &str) -> Result<f64, String> {
    parsed(v, |x: &f64| x.is_finite() && *x > 0.0, "be a number > 0")
}

fn non_negative(v: &str) -> Result<f64, String> {
    parsed(v, |x: &f64| x.is_finite() && *x >= 0.0, "be a number >= 0")
}

fn non_empty(v: &str) -> Result<String, String> {
    parsed(v, |s: &String| !s.is_empty(), "not be empty")
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
    let port = reqwest::Url::parse(url)?.port_or_known_default();
    port.ok_or_else(|| anyhow!("no port in {url}"))
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
    /// The server, when the bench started it (it can be restarted).
    server: Option<&'a mut sesh_launcher::Server>,
}

impl Served<'_> {
    /// Kills the runtime and starts it again on the same state (a new
    /// port): every object loads from storage when next called.
    pub fn restart(&mut self) -> Result<()> {
        let s = self.server.as_mut().context("no server to restart")?;
        s.crash_and_restart()?;
        (self.url, self.pids) = (s.base.clone(), s.pids());
        Ok(())
    }

    /// The secret, for generators that need tokens.
    pub fn secret(&self) -> Result<&str> {
        self.secret
            .as_deref()
            .context("this bench needs the rust target")
    }
}

/// A run's lines, as JSON, and what is wrong with them (see [`check`]).
pub type Run = (Vec<String>, Vec<Value>, Option<String>);

/// A generator as the benches drive it.
trait Gen: Clone {
    /// The summary's title, e.g. `bench quota`.
    const TITLE: &'static str;
    /// The Worker's features when the bench serves the rust target.
    const FEATURES: Option<&'static str> = None;
    /// The run's shape (its options that matter).
    fn shape(&self) -> Value;
    /// The figures summarised.
    fn metrics(&self) -> &'static str;
    /// The options and the token secret for one target.
    fn for_target(&self, rust: bool, secret: Option<&str>) -> (Self, Option<String>) {
        (self.clone(), secret.filter(|_| rust).map(str::to_owned))
    }
    /// One run: its JSON lines.
    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>>;
    /// The shape for people: `quota plan=free resource=points ...`.
    fn heading(&self) -> String {
        let pairs = self.shape().as_object().cloned().unwrap_or_default();
        let show = |v: Value| match v {
            Value::String(s) => s,
            v => v.as_f64().map_or(v.to_string(), |x| x.to_string()),
        };
        let pairs = pairs.into_iter().map(|(k, v)| format!(" {k}={}", show(v)));
        Self::TITLE.trim_start_matches("bench ").to_owned() + &pairs.collect::<String>()
    }
    /// The summary: targets side by side unless a bench has its own.
    fn summarize(&self, names: &[String], runs: &[(String, Value)], ok: bool) -> Summary {
        let metrics: Vec<&str> = self.metrics().split_whitespace().collect();
        let (title, shape, heading) = (Self::TITLE, self.shape(), self.heading());
        summary::compare(title, shape, &heading, names, runs, &metrics, ok)
    }
}

/// Runs `cargo xtask bench ...`.
pub fn run(b: Bench) -> Result<()> {
    match &b {
        Bench::Quota { gen, .. } | Bench::Quotagen { gen, .. } => gen.validate()?,
        Bench::Presence { gen, .. } | Bench::Presencegen { gen, .. } => gen.validate()?,
        _ => {}
    }
    let rust = &["rust".to_owned()];
    match b {
        Bench::Sessions {
            servers,
            targets: t,
            gen,
        } => with_servers(&servers, &t.0, &gen),
        Bench::Quota {
            servers,
            targets: t,
            gen,
        } => with_servers(&servers, &t.0, &gen),
        Bench::Presence { servers, gen } => with_servers(&servers, rust, &gen),
        Bench::Wake { servers, gen } => with_servers(&servers, rust, &gen),
        Bench::History { servers, gen } => with_servers(&servers, rust, &gen),
        Bench::Lifecycle { servers, gen } => with_servers(&servers, rust, &gen),
        Bench::Loadgen { alone, tokens, gen } => {
            let tokens = tokens || gen.create_sessions;
            alone_run(alone, &gen, tokens)
        }
        Bench::Quotagen { alone, tokens, gen } => alone_run(alone, &gen, tokens),
        Bench::Presencegen { alone, gen } => alone_run(alone, &gen, true),
    }
}

/// A run's lines as JSON, and what is wrong with them, if anything.
fn check(lines: &[String]) -> Result<(Vec<Value>, Option<String>)> {
    let values = lines
        .iter()
        .map(|l| serde_json::from_str(l).context("a report line is not JSON"));
    let values: Vec<Value> = values.collect::<Result<_>>()?;
    let exact = values.iter().any(|v| v["exact_ok"] == false);
    let problem = (!summary::ok(&values)).then(|| {
        let n: u64 = values.iter().map(summary::errors).sum();
        let exact = if exact { ", exact_ok false" } else { "" };
        format!(
            "{n} correctness errors{exact} {}",
            json!(summary::error_detail(&values, true))
        )
    });
    Ok((values, problem))
}

/// A generator alone against `--url`: its lines, and for several lines
/// (presence's phases) their summary; an error says what was wrong.
fn alone_run<G: Gen>(alone: Alone, gen: &G, tokens: bool) -> Result<()> {
    let (root, mut secret) = (xtask::root(), None);
    if tokens {
        xtask::setup::dev_vars(&root)?;
        secret = Some(xtask::setup::auth_secret(&root)?);
    }
    let (url, pids) = (alone.url, alone.watch_pids);
    let lines = gen.run(&mut Served {
        url,
        pids,
        secret,
        server: None,
    })?;
    lines.iter().for_each(|l| println!("{l}"));
    let (values, problem) = check(&lines)?;
    let problems: Vec<String> = problem.into_iter().collect();
    if lines.len() > 1 {
        let runs: Vec<(String, Value)> = values.into_iter().map(|v| ("run".into(), v)).collect();
        let summary = gen.summarize(&["run".to_owned()], &runs, problems.is_empty());
        return conclude(&summary, &problems);
    }
    problems.first().map_or(Ok(()), |p| bail!("{p}"))
}

/// `rounds` rounds, each target served once per round in the order given:
/// the generator's lines printed as `<target> <json>`, then the summary;
/// an error lists the runs with correctness errors or that did not run.
fn with_servers<G: Gen>(servers: &Servers, targets: &[String], gen: &G) -> Result<()> {
    let root = xtask::root();
    let bench = serve::prepare_bench(&root)?;
    let targets: Vec<serve::Target> = targets
        .iter()
        .map(|t| serve::Target::resolve(t, &root, &bench))
        .collect::<Result<_>>()?;
    let mut secret = None;
    if targets.iter().any(|t| t.rust) {
        secret = Some(serve::prepare_rust(&root, G::FEATURES)?);
    }
    let state_root = serve::state_root(servers.state_root.as_deref());
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let (title, rounds, state) = (G::TITLE, servers.rounds, state_root.display());
    let shape = format!(
        "targets={} rounds={rounds} {}",
        names.join(","),
        gen.heading()
    );
    eprintln!("# {title}: {shape}; state under {state}");
    let (mut runs, mut problems) = (Vec::new(), Vec::new());
    for round in 1..=servers.rounds {
        for t in &targets {
            let (g, secret) = gen.for_target(t.rust, secret.as_deref());
            let result = serve::with_server(t, &bench, &state_root, |server| {
                let (url, pids) = (server.base.clone(), server.pids());
                let lines = g.run(&mut Served {
                    url,
                    pids,
                    secret,
                    server: Some(server),
                })?;
                let (values, problem) = check(&lines)?;
                Ok((lines, values, problem))
            });
            let name = &t.name;
            match result {
                Ok((lines, values, problem)) => {
                    lines.iter().for_each(|l| println!("{name} {l}"));
                    problems.extend(problem.map(|p| format!("{name} round {round}: {p}")));
                    runs.extend(values.into_iter().map(|v| (name.clone(), v)));
                }
                Err(e) => {
                    eprintln!("bench: {name} round {round}: {e:#}");
                    problems.push(format!("{name} round {round}: did not run: {e:#}"));
                }
            }
        }
    }
    conclude(
        &gen.summarize(&names, &runs, problems.is_empty()),
        &problems,
    )
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

    fn parse(s: &str) -> Result<Bench, clap::Error> {
        Cli::try_parse_from(["bench"].into_iter().chain(s.split_whitespace())).map(|c| c.bench)
    }

    #[test]
    fn options_parse_with_the_reference_generators_defaults_and_bad_ones_are_refused() {
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
        let shape = (gen.sessions, gen.participants, gen.window, gen.seconds);
        assert_eq!(shape, (4, 5, 8, 10.0));
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
        let bad = "sessions --sessions 0; sessions --window 1.5; sessions --seconds nan; \
            sessions --rate -1; sessions --url http://127.0.0.1:1; loadgen --sessions 2; \
            loadgen --url ws://x:1; loadgen --url http://x:1/v1; loadgen --url http://x:1 --rounds 2; \
            quota --resource cpu; quota --cost 0; presence --targets rust; presencegen; \
            wake --points 0; history --points 0; history --months 13; lifecycle --points 0; \
            sessions --targets ,; quota --plan=";
        for b in bad.split(';') {
            assert!(parse(b).is_err(), "{b}");
        }
    }
}
