//! What the developer commands and the benchmarks (`bench/`) share: the
//! workspace root, running a command, the idempotent toolchain setup, the
//! Worker build and tokens.

pub mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// The checkout this command runs in, found at run time. `cargo xtask` is
/// `cargo run`, which tells the process its package's folder in
/// `CARGO_MANIFEST_DIR`; the compile-time value would name the checkout the
/// binary was built in, and cargo does not rebuild a workspace that was only
/// copied, so a copy would serve the original's files and state.
pub fn root() -> PathBuf {
    find_root(
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
    )
    .unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    })
}

/// The checkout holding the xtask at `manifest_dir` (the xtask's own
/// folder, one level below the root), or else the nearest folder at or
/// above `cwd` that is a Sesh checkout.
fn find_root(manifest_dir: Option<PathBuf>, cwd: Option<PathBuf>) -> Option<PathBuf> {
    let is_checkout = |d: &Path| d.join("wrangler.toml").is_file() && d.join("xtask").is_dir();
    manifest_dir
        .and_then(|m| m.parent().map(Path::to_path_buf))
        .filter(|d| is_checkout(d))
        .or_else(|| {
            cwd?.ancestors()
                .find(|d| is_checkout(d))
                .map(Path::to_path_buf)
        })
}

/// Holds the state folder `dir` for this process until the answer is
/// dropped: two runtimes on one folder share its SQLite files and break
/// each other (`SQLITE_BUSY`, wrong lists), so a second server on the same
/// state is refused with a clear message instead.
pub fn lock_state(dir: &Path) -> Result<std::fs::File> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sesh-dev.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            write!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another server (pid {}) is using the state in {}; stop it first, \
                 or give this one a state folder of its own: cargo xtask dev --state <folder>",
                pid.trim(),
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("locking the state folder"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(dir: &Path) {
        std::fs::create_dir_all(dir.join("xtask/src")).unwrap();
        std::fs::write(dir.join("wrangler.toml"), "name = \"sesh\"\n").unwrap();
    }

    #[test]
    fn the_root_is_the_checkout_the_command_runs_in() {
        let tmp = std::env::temp_dir().join(format!("sesh-root-{}", std::process::id()));
        let (orig, copy) = (tmp.join("orig"), tmp.join("copy"));
        checkout(&orig);
        checkout(&copy);
        // cargo names the copy's xtask folder at run time.
        assert_eq!(
            find_root(Some(copy.join("xtask")), Some(orig.clone())),
            Some(copy.clone())
        );
        // Without it, the folder the command was started in decides.
        assert_eq!(
            find_root(None, Some(copy.join("xtask/src"))),
            Some(copy.clone())
        );
        assert_eq!(
            find_root(Some(tmp.join("nowhere")), Some(tmp.clone())),
            None
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_second_server_on_the_same_state_is_refused_until_the_first_stops() {
        let dir = std::env::temp_dir().join(format!("sesh-lock-{}", std::process::id()));
        let first = lock_state(&dir).unwrap();
        let e = lock_state(&dir).unwrap_err().to_string();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        assert!(e.contains("--state"), "{e}");
        assert!(
            lock_state(&dir.join("other")).is_ok(),
            "another folder is free"
        );
        drop(first);
        assert!(lock_state(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
