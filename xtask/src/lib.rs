//! What the developer commands and the benchmarks (`bench/`) share: the
//! workspace root, running a command, the idempotent toolchain setup, the
//! Worker build and tokens.

pub mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// The workspace root (the xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command to completion; an error names it.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    status
        .success()
        .then_some(())
        .with_context(|| format!("{cmd:?} failed ({status})"))
}

/// The cargo that runs this command (or the one on `PATH`).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// An HS256 token for `user` on `plan` (with `role` if given), valid for
/// `ttl` seconds, minted with a standard JWT library exactly as a
/// third-party client would.
pub fn mint(secret: &str, user: &str, plan: &str, role: Option<&str>, ttl: u64) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({"sub": user, "plan": plan, "iat": now, "exp": now + ttl});
    if let Some(r) = role {
        claims["role"] = r.into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).context("signing failed")
}

/// Builds the Worker bundle into `build/` with worker-build.
pub fn build(root: &Path, tools: &setup::Tools, features: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(&tools.worker_build);
    cmd.current_dir(root)
        .args(["--release", "--no-opt"])
        .env("WASM_BINDGEN_BIN", &tools.wasm_bindgen);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    run(&mut cmd)
}
