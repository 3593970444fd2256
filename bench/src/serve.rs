//! Serving the benchmarked Workers: `../shared/bench` copied to
//! `target/bench` (with its npm packages), targets resolved to a wrangler
//! config, and one server per run, started with `node serve.mjs` by the
//! launcher the integration tests use too (free port, throw-away state
//! folder, stopped with its descendants afterwards, on error, panic, or
//! Ctrl-C).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// Copies `../shared/bench` to `target/bench` (files that differ only) and
/// runs `npm ci` there when its packages are missing or changed.
pub fn prepare_bench(root: &Path) -> Result<PathBuf> {
    let src = root.join("../shared/bench");
    let src = src
        .canonicalize()
        .with_context(|| src.display().to_string())?;
    let dest = root.join("target/bench");
    let mut changed = Vec::new();
    sync_tree(&src, &dest, Path::new(""), &mut changed)?;
    if !changed.is_empty() {
        let (n, from, to) = (changed.len(), src.display(), dest.display());
        eprintln!("bench: copied {n} file(s) from {from} to {to}");
    }
    let npm_changed = changed
        .iter()
        .any(|p| p.ends_with("package.json") || p.ends_with("package-lock.json"));
    if npm_changed
        || !dest.join("node_modules/.bin/wrangler").exists()
        || !dest.join("node_modules/.package-lock.json").exists()
    {
        eprintln!("bench: npm ci in {}", dest.display());
        let mut npm = Command::new("npm");
        xtask::run(
            npm.current_dir(&dest)
                .args(["ci", "--no-audit", "--no-fund"]),
        )?;
    }
    Ok(dest)
}

/// Makes `dest` hold `src`'s files under `rel` (except `node_modules`),
/// writing only those that are missing or differ; their relative paths go
/// to `out`.
fn sync_tree(src: &Path, dest: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    fs::create_dir_all(dest.join(rel)).with_context(|| dest.join(rel).display().to_string())?;
    for e in fs::read_dir(src.join(rel))?.flatten() {
        let (r, meta) = (rel.join(e.file_name()), fs::metadata(e.path())?);
        if e.file_name() == "node_modules" {
            continue;
        } else if meta.is_dir() {
            sync_tree(src, dest, &r, out)?;
            continue;
        }
        let (bytes, to) = (fs::read(e.path())?, dest.join(&r));
        if fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            let _ = fs::remove_file(&to); // a read-only copy cannot be overwritten
            fs::write(&to, &bytes).with_context(|| to.display().to_string())?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
            out.push(r);
        }
    }
    Ok(())
}

/// A server to benchmark.
pub struct Target {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// This workspace's worker: tokens, created sessions, prebuilt bundle.
    pub rust: bool,
}

impl Target {
    /// `rust`, a reference of `bench`, or a directory with a wrangler config.
    pub fn resolve(name: &str, root: &Path, bench: &Path) -> Result<Target> {
        let dir = match name {
            "rust" => root.to_path_buf(),
            "js-ref" | "party-ref" | "quota-ref" => bench.join(name),
            path => Path::new(path)
                .canonicalize()
                .with_context(|| format!("target {path}"))?,
        };
        let label = match dir.file_name() {
            Some(n) if name != "rust" => n.to_string_lossy().into_owned(),
            _ => name.to_owned(),
        };
        let config = ["wrangler.toml", "wrangler.jsonc", "wrangler.json"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .with_context(|| format!("target {name}: no wrangler config in {}", dir.display()))?;
        let rust = name == "rust";
        Ok(Target {
            name: label,
            dir,
            config,
            rust,
        })
    }
}

/// Where the throw-away state folders go: the folder given, else the
/// first writable of `/dev/shm` and the temp folder.
pub fn state_root(given: Option<&Path>) -> PathBuf {
    let tmp = std::env::temp_dir();
    let candidates = given.map_or_else(|| vec!["/dev/shm".into(), tmp.clone()], |p| vec![p.into()]);
    let writable = |c: &PathBuf| {
        let probe = c.join(format!(".sesh-bench-probe-{}", std::process::id()));
        fs::create_dir(&probe).is_ok() && fs::remove_dir(&probe).is_ok()
    };
    candidates.into_iter().find(writable).unwrap_or(tmp)
}

/// Builds the Worker bundle (installing what is missing; with `features`)
/// and returns the `AUTH_SECRET` of `.dev.vars`, for the `rust` target.
pub fn prepare_rust(root: &Path, features: Option<&str>) -> Result<String> {
    let tools = xtask::setup::all(root)?;
    eprintln!("bench: building the Worker bundle");
    xtask::build(root, &tools, features)?;
    xtask::setup::dev_vars(root)?;
    xtask::setup::auth_secret(root)
}

/// One run on a server started by the shared launcher: fresh port and
/// state, D1 migrations when the target has them, `node serve.mjs`, wait
/// for `/health`, then `gen(server)`, then stop. The server log is removed
/// when the run is clean, kept (and named) otherwise.
pub fn with_server(
    t: &Target,
    bench: &Path,
    state_root: &Path,
    gen: impl FnOnce(&mut sesh_launcher::Server) -> Result<super::Run>,
) -> Result<super::Run> {
    let (dir, config, rust) = (t.dir.clone(), t.config.clone(), t.rust);
    let serve_mjs = bench.join("serve.mjs");
    let migrations = t.dir.join("migrations").is_dir();
    let launch = sesh_launcher::Launch {
        name: format!("sesh-bench-{}", t.name),
        wrangler: bench.join("node_modules/.bin/wrangler"),
        migrations: migrations.then(|| {
            (
                t.dir.clone(),
                vec!["--config".into(), t.config.clone().into()],
            )
        }),
        state_root: state_root.to_path_buf(),
        serve: Box::new(move |port, state| {
            let mut cmd = Command::new("node");
            cmd.current_dir(&dir)
                .arg(&serve_mjs)
                .arg("--config")
                .arg(&config);
            cmd.args(["--port", &port.to_string(), "--persist-to"])
                .arg(state);
            if rust {
                // The xtask has just built the bundle: wrangler's [build] step skips.
                cmd.env("SESH_PREBUILT", "1");
            }
            cmd
        }),
    };
    let mut server = sesh_launcher::Server::start(launch)
        .with_context(|| format!("{} did not start", t.name))?;
    let (state, log) = (server.state().display(), server.log().display());
    eprintln!(
        "bench: {} on {} (state {state}, log {log})",
        t.name, server.base
    );
    let result = gen(&mut server);
    server.stop();
    if !matches!(&result, Ok((_, _, None))) {
        server.keep_log();
        eprintln!("bench: server log kept: {}", server.log().display());
    }
    result
}
