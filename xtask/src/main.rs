//! Developer commands for Sesh: `cargo xtask dev | test | token | build |
//! setup | bench`.
//!
//! Every command first makes sure the tools it needs are present at the
//! right version, installing what is missing and saying so, so that a
//! machine with only rustup, cargo, node and npm can run the project.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use xtask::{build, cargo, mint, root, run, setup};

/// Developer commands for Sesh.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, apply D1 migrations locally, build, and
    /// serve on http://127.0.0.1:PORT
    Dev {
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// The folder of the local D1, Durable Object and R2 state (default:
        /// .wrangler/state in the checkout; delete it to start afresh)
        #[arg(long)]
        state: Option<std::path::PathBuf>,
    },
    /// The whole suite: fmt, clippy (host and wasm32), native tests,
    /// wasm-bindgen tests in Node and (the browser client) in headless
    /// Chromium, integration tests against a throw-away `wrangler dev`,
    /// the TypeScript client's tests
    Test,
    /// Print a token signed with AUTH_SECRET from .dev.vars
    Token {
        #[arg(long)]
        user: String,
        /// free, pro or enterprise
        #[arg(long, default_value = "free")]
        plan: String,
        #[arg(long)]
        role: Option<Role>,
        /// Seconds until it expires (at least 1)
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
    },
    /// Build the Worker bundle into build/ (wrangler runs this)
    Build {
        #[arg(long)]
        features: Option<String>,
    },
    /// Only install what is missing
    Setup,
    /// Benchmarks against the JS references, and the generators alone:
    /// `cargo xtask bench --help` (the `sesh-bench` crate, built optimised)
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// The only role a token can carry.
#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Service,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Dev { port, state } => dev(port, state),
        Cmd::Test => test(),
        Cmd::Token {
            user,
            plan,
            role,
            ttl,
        } => token(&user, &plan, role.map(|_| "service"), ttl),
        Cmd::Build { features } => build_cmd(features),
        Cmd::Setup => setup::all(&root()).map(|_| ()),
        Cmd::Bench { args } => bench(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dev(port: u16, state: Option<std::path::PathBuf>) -> Result<()> {
    let root = root();
    let persist = match state {
        Some(dir) => std::env::current_dir()?.join(dir),
        None => root.join(".wrangler/state"),
    };
    let _lock = xtask::lock_state(&persist)?;
    let tools = setup::all(&root)?;
    setup::migrate(&root, &persist)?;
    build(&root, &tools, None)?;
    println!("\nSesh is starting on http://127.0.0.1:{port}");
    println!(
        "  state:   {} (delete it to start afresh)",
        persist.display()
    );
    println!("  health:  curl http://127.0.0.1:{port}/health");
    println!("  token:   cargo xtask token --user alice");
    println!("  call:    curl -H \"Authorization: Bearer $(cargo -q xtask token --user alice)\" http://127.0.0.1:{port}/v1/quota\n");
    run(&mut wrangler_dev(&root, port, &persist))
}

/// `wrangler dev` of the prebuilt bundle on `port` with its state under
/// `persist`.
fn wrangler_dev(root: &Path, port: u16, persist: &Path) -> Command {
    let mut cmd = Command::new(setup::wrangler_bin(root));
    cmd.current_dir(root)
        .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()]);
    cmd.arg("--persist-to")
        .arg(persist)
        .arg("--show-interactive-dev-session=false");
    cmd.env("SESH_PREBUILT", "1");
    cmd
}

/// Prints a token for `user` signed with `.dev.vars`' `AUTH_SECRET`.
fn token(user: &str, plan: &str, role: Option<&str>, ttl: u64) -> Result<()> {
    let root = root();
    // The server's own rules, so a token printed here is one it accepts.
    if !sesh_protocol::is_valid_user_id(user) {
        anyhow::bail!("--user {user:?}: a user id is 1-128 characters of [A-Za-z0-9_.:@-]");
    }
    let plans = sesh_core::config::Plans::parse(setup::plans_var(&root)?.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if plans.get(plan).is_none() {
        anyhow::bail!(
            "--plan {plan:?}: the server knows the plans {}",
            plans.names().join(", ")
        );
    }
    setup::dev_vars(&root)?;
    let token = mint(&setup::auth_secret(&root)?, user, plan, role, ttl)?;
    println!("{token}");
    Ok(())
}

fn build_cmd(features: Option<String>) -> Result<()> {
    // wrangler runs `cargo xtask build` before serving; when the xtask has
    // just built the bundle itself it says so, and building again would only
    // cost time.
    if std::env::var_os("SESH_PREBUILT").is_some() {
        return Ok(());
    }
    let root = root();
    let tools = setup::all(&root)?;
    build(&root, &tools, features.as_deref())
}

/// Runs the benchmarks (`bench/`) with `args`. The generator shares two
/// cores with the server it measures, and a debug build of it takes about
/// twice the CPU of an optimised one, so they are built optimised, in a
/// target folder of their own (no other build is disturbed or rebuilt).
fn bench(args: &[OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let root = root();
    let target_dir = root.join("target/xtask-bench");
    let dir = target_dir.display();
    eprintln!("bench: building the benchmarks optimised into {dir} (a few minutes the first time)");
    run(Command::new(cargo())
        .current_dir(&root)
        .args(["build", "--quiet", "--release", "-p", "sesh-bench"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"))?;
    let bin = target_dir.join("release/sesh-bench");
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("could not run {}", bin.display()))
}

fn test() -> Result<()> {
    let root = root();
    let tools = setup::all(&root)?;
    let cargo_with = |args: &str| {
        let mut c = Command::new(cargo());
        c.current_dir(&root).args(args.split_whitespace());
        c
    };
    let step = |name: &str| println!("\n==> {name}");

    for (name, args) in [
        ("cargo fmt --check", "fmt --all -- --check"),
        (
            "cargo clippy (host)",
            "clippy --workspace --all-targets -- -D warnings",
        ),
        (
            "cargo clippy (wasm32)",
            "clippy -p sesh -p sesh-core -p sesh-protocol -p sesh-client --target wasm32-unknown-unknown \
             --lib --tests --features test-faults -- -D warnings",
        ),
        (
            "cargo clippy (wasm32, the deployed build)",
            "clippy -p sesh --target wasm32-unknown-unknown --lib -- -D warnings",
        ),
        ("native unit tests", "test --workspace --lib --bins"),
    ] {
        step(name);
        run(&mut cargo_with(args))?;
    }

    step("API documents: OpenAPI validator and @asyncapi/parser (tests/api-docs)");
    api_document_checks(&root)?;

    step("wasm-bindgen tests (wasm32 in Node)");
    run(
        cargo_with("test -p sesh --target wasm32-unknown-unknown --test wasm")
            .env("PATH", setup::path_with(&tools.wasm_bindgen_dir())),
    )?;

    step("build the Worker (with test fault switches)");
    build(&root, &tools, Some("test-faults"))?;

    step("wasm-bindgen tests (browser client in headless Chromium)");
    let chromium = setup::chromium()?;
    browser_client_tests(&root, &tools, &chromium)?;

    step("integration tests against wrangler dev (with the console in headless Chromium)");
    run(cargo_with("test -p sesh --test integration")
        .env("SESH_WRANGLER", setup::wrangler_bin(&root))
        .env("SESH_PREBUILT", "1")
        .env("SESH_BROWSER_TESTS", "1")
        .env("CHROMIUM", &chromium))?;

    step("TypeScript client (clients/typescript): build, unit tests, Node and Chromium tests against wrangler dev");
    typescript_client_tests(&root, &chromium)?;

    println!("\nall test stages passed");
    Ok(())
}

/// `npm ci` in `dir` when its node_modules is missing or older than its
/// package-lock.json (npm writes node_modules/.package-lock.json on every
/// install).
fn npm_ci_if_stale(dir: &Path) -> Result<()> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let lock = modified(&dir.join("package-lock.json"));
    let installed = modified(&dir.join("node_modules/.package-lock.json"))
        .or_else(|| modified(&dir.join("node_modules")));
    if installed.is_none() || installed < lock {
        run(Command::new("npm")
            .current_dir(dir)
            .args(["ci", "--no-audit", "--no-fund"]))?;
    }
    Ok(())
}

/// The checked-in API documents read by the tools their readers use: an
/// OpenAPI 3.1 validator and `@asyncapi/parser` (tests/api-docs/check.mjs).
fn api_document_checks(root: &Path) -> Result<()> {
    let dir = root.join("tests/api-docs");
    npm_ci_if_stale(&dir)?;
    run(Command::new("npm")
        .current_dir(&dir)
        .args(["run", "--silent", "check"]))
}

/// The TypeScript client `@sesh/client`: `npm ci` when its node_modules is
/// missing or older than its package-lock.json, the build (tsc), the state
/// machine's unit tests, then its Node and Chromium tests, which start
/// their own throw-away `wrangler dev` of the bundle just built (each
/// kills and restarts it on the same port and state).
fn typescript_client_tests(root: &Path, chromium: &Path) -> Result<()> {
    let dir = root.join("clients/typescript");
    npm_ci_if_stale(&dir)?;
    let npm_run = |script: &str| {
        let mut c = Command::new("npm");
        c.current_dir(&dir)
            .args(["run", script])
            .env("SESH_ROOT", root)
            .env("SESH_WRANGLER", setup::wrangler_bin(root))
            .env("CHROMIUM", chromium);
        c
    };
    for script in ["build", "test:unit", "test:node", "test:browser"] {
        run(&mut npm_run(script))?;
    }
    Ok(())
}

/// sesh-client compiled to wasm32 (clients/rust/tests/browser.rs) in headless
/// Chromium through chromedriver, against a throw-away `wrangler dev` of
/// the bundle just built that allows any origin (the runner's page is on
/// another port). The base URL and two users' tokens reach the test at
/// compile time.
fn browser_client_tests(root: &Path, tools: &setup::Tools, chromium: &Path) -> Result<()> {
    const SECRET: &str = "browser-test-secret-0123456789abcdef";
    let dir = root.to_path_buf();
    let server = sesh_launcher::Server::start(sesh_launcher::Launch {
        name: "sesh-browser".into(),
        wrangler: setup::wrangler_bin(root),
        migrations: Some((root.to_path_buf(), Vec::new())),
        state_root: std::env::temp_dir(),
        serve: Box::new(move |port, state| {
            let mut cmd = wrangler_dev(&dir, port, state);
            cmd.args([
                "--log-level",
                "warn",
                "--var",
                &format!("AUTH_SECRET:{SECRET}"),
            ]);
            cmd.args(["--var", "ALLOWED_ORIGINS:*"]).env("CI", "true");
            cmd
        }),
    })?;
    let (a, b) = ("browser-a", "browser-b");
    let result = run(Command::new(cargo())
        .current_dir(root)
        .args("test -p sesh-client --target wasm32-unknown-unknown --test browser".split(' '))
        .env("PATH", setup::path_with(&tools.wasm_bindgen_dir()))
        .env("CHROMEDRIVER", chromium.with_file_name("chromedriver"))
        .env("WASM_BINDGEN_TEST_TIMEOUT", "180")
        .env("SESH_BROWSER_BASE", &server.base)
        .env("SESH_BROWSER_USER_A", a)
        .env("SESH_BROWSER_TOKEN_A", mint(SECRET, a, "pro", None, 3600)?)
        .env("SESH_BROWSER_USER_B", b)
        .env("SESH_BROWSER_TOKEN_B", mint(SECRET, b, "pro", None, 3600)?));
    if result.is_err() {
        eprintln!("the server's log ends:\n{}", server.log_tail(40));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_args(line: &str) -> Vec<String> {
        let cli = Cli::try_parse_from(line.split_whitespace()).expect("parses");
        let Cmd::Bench { args } = cli.command else {
            panic!("{line} is a bench command");
        };
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn bench_hands_the_rest_of_the_line_to_the_benchmarks_help_included() {
        assert_eq!(
            bench_args("xtask bench sessions --rounds 3 --targets rust"),
            ["sessions", "--rounds", "3", "--targets", "rust"]
        );
        assert_eq!(bench_args("xtask bench --help"), ["--help"]);
        assert_eq!(bench_args("xtask bench quota -h"), ["quota", "-h"]);
        assert!(bench_args("xtask bench").is_empty());
        assert!(Cli::try_parse_from(["xtask", "dev", "--port", "x"]).is_err());
    }
}
