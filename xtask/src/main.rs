//! Developer commands for Sesh: `cargo xtask dev | test | token | build`.
//!
//! Every command first makes sure the tools it needs are present at the
//! right version, installing what is missing and saying so, so that a
//! machine with only rustup, cargo, node and npm can run the project.

mod bench;
mod setup;
mod token;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// What `cargo xtask` was asked to do.
const USAGE: &str = "\
usage: cargo xtask <command>

  dev [--port P]       install what is missing, apply D1 migrations locally,
                       build, and serve on http://127.0.0.1:P (default 8787)
  test                 the whole suite: fmt, clippy (host and wasm32), native
                       tests, wasm-bindgen tests in Node, integration tests
                       against a throw-away `wrangler dev`
  token --user U [--plan free|pro|enterprise] [--role service] [--ttl SECONDS]
                       print a token signed with AUTH_SECRET from .dev.vars
  build [--features F] build the Worker bundle into build/ (wrangler runs this)
  setup                only install what is missing
  bench sessions [--targets \"rust js-ref party-ref\"] [--rounds N] [generator options]
                       session WebSocket benchmark against the JS references
  bench quota [--targets \"rust quota-ref\"] [--rounds N] [--exact R] [generator options]
                       quota check benchmark beside quota-ref
  bench presence [--users N] [--seconds T] [--concurrency C] [--callers K]
                       presence reads (single, batch of 100) and heartbeats
                       (`cargo xtask bench --help` for the options)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dev") => dev(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("token") => token::run(&args[1..]),
        Some("build") => build_cmd(&args[1..]),
        Some("setup") => setup::all(&root()).map(|_| ()),
        Some("bench") => bench::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command to completion; an error names it.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// A flag's value from `args` (`--name value`).
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn dev(args: &[String]) -> Result<(), String> {
    let port: u16 = match flag(args, "--port") {
        Some(p) => p.parse().map_err(|_| format!("bad --port {p}"))?,
        None => 8787,
    };
    let root = root();
    let tools = setup::all(&root)?;
    let persist = root.join(".wrangler/state");
    setup::migrate(&root, &persist)?;
    build(&root, &tools, &[])?;
    println!("\nSesh is starting on http://127.0.0.1:{port}");
    println!("  health:  curl http://127.0.0.1:{port}/health");
    println!("  token:   cargo xtask token --user alice");
    println!("  call:    curl -H \"Authorization: Bearer $(cargo -q xtask token --user alice)\" http://127.0.0.1:{port}/v1/quota\n");
    let mut cmd = tools.wrangler(&root);
    cmd.args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()])
        .arg("--persist-to")
        .arg(&persist)
        .args(["--show-interactive-dev-session=false"])
        .env("SESH_PREBUILT", "1");
    run(&mut cmd)
}

fn build_cmd(args: &[String]) -> Result<(), String> {
    // wrangler runs `cargo xtask build` before serving; when the xtask has
    // just built the bundle itself it says so, and building again would only
    // cost time.
    if std::env::var_os("SESH_PREBUILT").is_some() {
        return Ok(());
    }
    let root = root();
    let tools = setup::all(&root)?;
    let features: Vec<&str> = flag(args, "--features").into_iter().collect();
    build(&root, &tools, &features)
}

/// Builds the Worker bundle into `build/` with worker-build.
pub fn build(root: &Path, tools: &setup::Tools, features: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(&tools.worker_build);
    cmd.current_dir(root)
        .args(["--release", "--no-opt"])
        .env("WASM_BINDGEN_BIN", &tools.wasm_bindgen);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    run(&mut cmd)
}

fn test(_args: &[String]) -> Result<(), String> {
    let root = root();
    let tools = setup::all(&root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let step = |name: &str| println!("\n==> {name}");

    step("cargo fmt --check");
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;

    step("cargo clippy (host)");
    run(Command::new(&cargo).current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("cargo clippy (wasm32)");
    run(Command::new(&cargo).current_dir(&root).args([
        "clippy",
        "-p",
        "sesh",
        "-p",
        "sesh-protocol",
        "-p",
        "sesh-client",
        "--target",
        "wasm32-unknown-unknown",
        "--lib",
        "--tests",
        "--features",
        "test-faults",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("native unit tests");
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["test", "--workspace", "--lib", "--bins"]))?;

    step("wasm-bindgen tests (wasm32 in Node)");
    let path = setup::path_with(&tools.wasm_bindgen_dir());
    run(Command::new(&cargo)
        .current_dir(&root)
        .env("PATH", &path)
        .args([
            "test",
            "-p",
            "sesh",
            "--target",
            "wasm32-unknown-unknown",
            "--test",
            "wasm",
        ]))?;

    step("build the Worker (with test fault switches)");
    build(&root, &tools, &["test-faults"])?;

    step("integration tests against wrangler dev (with the console in headless Chromium)");
    let chromium = setup::chromium()?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .env("SESH_WRANGLER", tools.wrangler_bin(&root))
        .env("SESH_PREBUILT", "1")
        .env("SESH_BROWSER_TESTS", "1")
        .env("CHROMIUM", chromium)
        .args(["test", "-p", "sesh", "--test", "integration"]))?;

    println!("\nall test stages passed");
    Ok(())
}
