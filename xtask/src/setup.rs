//! Idempotent setup: each tool is checked at its required version and
//! installed only when missing or wrong, with a line saying so.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::run;

/// The worker-build release the project builds with.
const WORKER_BUILD_VERSION: &str = "0.8.7";
/// The wrangler release pinned in package.json (4.87+ needs Node 22).
const WRANGLER_VERSION: &str = "4.86.0";

/// Paths of the tools the other commands use.
pub struct Tools {
    /// The `worker-build` binary.
    pub worker_build: PathBuf,
    /// The `wasm-bindgen` binary matching Cargo.lock.
    pub wasm_bindgen: PathBuf,
}

impl Tools {
    /// The folder holding `wasm-bindgen` and `wasm-bindgen-test-runner`.
    pub fn wasm_bindgen_dir(&self) -> PathBuf {
        self.wasm_bindgen
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// The project's own wrangler, from node_modules.
pub fn wrangler_bin(root: &Path) -> PathBuf {
    root.join("node_modules/.bin/wrangler")
}

/// Checks and installs everything; returns where the tools are.
pub fn all(root: &Path) -> Result<Tools> {
    check_node()?;
    wasm_target()?;
    let bin = cargo_bin();
    let worker_build = bin.join("worker-build");
    if version_of(&worker_build, "--version").as_deref() != Some(WORKER_BUILD_VERSION) {
        install_crate("worker-build", WORKER_BUILD_VERSION)?;
    }
    let wb_version = wasm_bindgen_version(root)?;
    let wasm_bindgen = bin.join("wasm-bindgen");
    let have = version_of(&wasm_bindgen, "--version");
    let runner_present = bin.join("wasm-bindgen-test-runner").exists();
    if have.as_deref() != Some(&format!("wasm-bindgen {wb_version}")) || !runner_present {
        install_crate("wasm-bindgen-cli", &wb_version)?;
    }
    npm_packages(root)?;
    dev_vars(root)?;
    Ok(Tools {
        worker_build,
        wasm_bindgen,
    })
}

fn check_node() -> Result<()> {
    let v = version_of(Path::new("node"), "--version");
    let v = v.context("node is not installed; Sesh needs Node.js >= 20 and npm")?;
    let major = v
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok());
    if major.unwrap_or(0) < 20 {
        bail!("Node.js {v} is too old; Sesh needs >= 20");
    }
    Ok(())
}

fn wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let out = String::from_utf8_lossy(&out.context("rustup is needed")?.stdout).into_owned();
    if !out.lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        println!("setup: installing the wasm32-unknown-unknown target");
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"));
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).or(home);
    home.unwrap_or_else(|| PathBuf::from(".cargo")).join("bin")
}

/// `PATH` with `dir` in front.
pub fn path_with(dir: &Path) -> OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// The trimmed first line a tool prints for `flag`, if it runs.
fn version_of(bin: &Path, flag: &str) -> Option<String> {
    let out = Command::new(bin)
        .arg(flag)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

fn install_crate(name: &str, version: &str) -> Result<()> {
    println!("setup: installing {name} {version} from crates.io (a few minutes, once)");
    let install = ["install", name, "--version", version, "--force"];
    if run(Command::new(crate::cargo()).args(install).arg("--locked")).is_ok() {
        return Ok(());
    }
    // A crate's lock file can name a dependency version the registry no
    // longer serves (yanked); resolving afresh is then the only way.
    println!("setup: locked install of {name} failed; retrying with fresh resolution");
    run(Command::new(crate::cargo()).args(install))
}

/// The `wasm-bindgen` version in Cargo.lock: the CLI must match it exactly.
fn wasm_bindgen_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines().map(str::trim);
    let name = lines.find(|l| *l == "name = \"wasm-bindgen\"");
    let version = name.and_then(|_| lines.next()?.strip_prefix("version = \""));
    let version = version.context("Cargo.lock has no wasm-bindgen entry")?;
    Ok(version.trim_end_matches('"').to_owned())
}

fn npm_packages(root: &Path) -> Result<()> {
    let installed = std::fs::read_to_string(root.join("node_modules/wrangler/package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    let playwright = root
        .join("node_modules/playwright-core/package.json")
        .exists();
    if installed.as_deref() != Some(WRANGLER_VERSION) || !playwright {
        println!("setup: installing npm packages (wrangler {WRANGLER_VERSION}) with npm ci");
        run(Command::new("npm")
            .current_dir(root)
            .args(["ci", "--no-audit", "--no-fund"]))?;
    }
    Ok(())
}

/// Creates `.dev.vars` with a random `AUTH_SECRET` unless it exists.
pub fn dev_vars(root: &Path) -> Result<()> {
    let path = root.join(".dev.vars");
    if path.exists() {
        return Ok(());
    }
    // 32 random bytes as 64 hex digits: two v4 UUIDs' random parts (122 bits each).
    let random = || uuid::Uuid::new_v4().simple();
    let secret = format!("{}{}", random(), random());
    std::fs::write(&path, format!("AUTH_SECRET=\"{secret}\"\n")).context("writing .dev.vars")?;
    println!("setup: created .dev.vars with a random AUTH_SECRET");
    Ok(())
}

/// Applies the D1 migrations to the local database under `persist`.
pub fn migrate(root: &Path, persist: &Path) -> Result<()> {
    println!("setup: applying D1 migrations locally");
    run(Command::new(wrangler_bin(root))
        .current_dir(root)
        .args(["d1", "migrations", "apply", "DB", "--local"])
        .arg("--persist-to")
        .arg(persist)
        .env("CI", "true"))
}

/// Reads `AUTH_SECRET` from `.dev.vars`.
pub fn auth_secret(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join(".dev.vars"))
        .context("no .dev.vars; run `cargo xtask dev` or `cargo xtask setup` first")?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("AUTH_SECRET="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("AUTH_SECRET is missing from .dev.vars"))
}

/// The `PLANS` the local server runs with: `.dev.vars` overrides
/// `wrangler.toml`'s `[vars]`, as `wrangler dev` does. A TOML basic string
/// is read with JSON's string rules, which it shares for every escape a
/// plan table needs.
pub fn plans_var(root: &Path) -> Result<Option<String>> {
    let dev = std::fs::read_to_string(root.join(".dev.vars")).unwrap_or_default();
    if let Some(v) = dev.lines().find_map(|l| l.trim().strip_prefix("PLANS=")) {
        let v = v.trim();
        let v = serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_owned());
        return Ok(Some(v));
    }
    let toml =
        std::fs::read_to_string(root.join("wrangler.toml")).context("reading wrangler.toml")?;
    Ok(toml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PLANS"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .find_map(|v| serde_json::from_str::<String>(v.trim()).ok()))
}

/// Debian's Chromium and its driver for the browser tests, installed with
/// apt when missing (the tests run as root; nothing is downloaded from
/// outside the package registries). Answers the browser's path.
pub fn chromium() -> Result<PathBuf> {
    let browser = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if !browser.exists() || !driver.exists() {
        println!("setup: installing chromium and chromium-driver with apt-get");
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(browser)
}
