//! Serving the benchmarked Workers: `../shared/bench` copied to
//! `target/bench` (with its npm packages), targets resolved to a wrangler
//! config, and one server per run on a free port with a throw-away state
//! folder, started with `node serve.mjs` in a process group of its own,
//! waited for on `/health`, and stopped (group and descendants) afterwards,
//! on error, panic, or Ctrl-C.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{http, loadgen};

/// Copies `../shared/bench` to `target/bench` (files that differ only) and
/// runs `npm ci` there when its packages are missing or changed.
pub fn prepare_bench(root: &Path) -> Result<PathBuf, String> {
    let src = root.join("../shared/bench");
    let src = src
        .canonicalize()
        .map_err(|e| format!("{}: {e}", src.display()))?;
    let dest = root.join("target/bench");
    let changed = sync_tree(&src, &dest)?;
    if !changed.is_empty() {
        eprintln!(
            "bench: copied {} file(s) from {} to {}",
            changed.len(),
            src.display(),
            dest.display()
        );
    }
    let lock_changed = changed
        .iter()
        .any(|p| p == Path::new("package-lock.json") || p == Path::new("package.json"));
    if lock_changed
        || !dest.join("node_modules/.bin/wrangler").exists()
        || !dest.join("node_modules/.package-lock.json").exists()
    {
        eprintln!("bench: npm ci in {}", dest.display());
        crate::run(
            Command::new("npm")
                .current_dir(&dest)
                .args(["ci", "--no-audit", "--no-fund"]),
        )?;
    }
    Ok(dest)
}

/// Makes `dest` hold `src`'s files (except `node_modules`), writing only
/// those that are missing or differ; returns their relative paths.
pub fn sync_tree(src: &Path, dest: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(src: &Path, dest: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let here = src.join(rel);
        fs::create_dir_all(dest.join(rel)).map_err(|e| format!("{}: {e}", dest.display()))?;
        let mut entries: Vec<_> = fs::read_dir(&here)
            .map_err(|e| format!("{}: {e}", here.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == "node_modules" {
                continue;
            }
            let r = rel.join(&name);
            let meta = fs::metadata(e.path()).map_err(|err| format!("{}: {err}", r.display()))?;
            if meta.is_dir() {
                walk(src, dest, &r, out)?;
                continue;
            }
            let bytes = fs::read(e.path()).map_err(|err| format!("{}: {err}", r.display()))?;
            let to = dest.join(&r);
            if fs::read(&to).ok().as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            let _ = fs::remove_file(&to); // a read-only copy cannot be overwritten
            fs::write(&to, &bytes).map_err(|err| format!("{}: {err}", to.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(|err| format!("{}: {err}", to.display()))?;
            out.push(r);
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(src, dest, Path::new(""), &mut out)?;
    Ok(out)
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
    pub fn resolve(name: &str, root: &Path, bench: &Path) -> Result<Target, String> {
        let (label, dir, rust) = match name {
            "rust" => ("rust".to_owned(), root.to_path_buf(), true),
            "js-ref" | "party-ref" | "quota-ref" => (name.to_owned(), bench.join(name), false),
            path => {
                let dir = Path::new(path)
                    .canonicalize()
                    .map_err(|e| format!("target {path}: {e}"))?;
                let label = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.to_owned());
                (label, dir, false)
            }
        };
        let config = ["wrangler.toml", "wrangler.jsonc", "wrangler.json"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("target {name}: no wrangler config in {}", dir.display()))?;
        Ok(Target {
            name: label,
            dir,
            config,
            rust,
        })
    }
}

pub fn state_root(given: Option<&Path>) -> PathBuf {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => vec![PathBuf::from("/dev/shm"), std::env::temp_dir()],
    };
    for c in &candidates {
        let probe = c.join(format!(".sesh-bench-probe-{}", std::process::id()));
        if fs::create_dir(&probe).is_ok() {
            let _ = fs::remove_dir(&probe);
            return c.clone();
        }
    }
    std::env::temp_dir()
}

/// A throw-away state folder, removed on drop (or on a signal).
struct StateDir(PathBuf);

impl StateDir {
    fn new(root: &Path, name: &str) -> Result<StateDir, String> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for _ in 0..10 {
            let rand = loadgen::hex(&loadgen::random_bytes::<4>());
            let p = root.join(format!("sesh-bench-{safe}.{rand}"));
            if fs::create_dir(&p).is_ok() {
                *lock(&RUNNING_STATE) = Some(p.clone());
                return Ok(StateDir(p));
            }
        }
        Err(format!(
            "could not create a state folder in {}",
            root.display()
        ))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let mut running = lock(&RUNNING_STATE);
        if running.as_ref() == Some(&self.0) {
            *running = None;
        }
    }
}

/// The server running now and its state folder, for the signal thread.
static RUNNING_SERVER: Mutex<Option<u32>> = Mutex::new(None);
static RUNNING_STATE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signals a terminal or a supervisor stops the bench with.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Servers run in process groups of their own, so Ctrl-C (or TERM/HUP)
/// does not reach them: these signals are blocked in the xtask and a
/// thread waits for them, stops the running server, removes its state
/// folder and exits. Children get the signals unblocked again
/// ([`unblocked_signals`]).
pub fn install_signal_thread() {
    let set = stop_signals();
    // SAFETY: blocks the signals in this thread and the threads it starts.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits for one of the blocked signals.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        eprintln!("bench: signal {sig}: stopping the server");
        if let Some(pid) = lock(&RUNNING_SERVER).take() {
            stop_group(pid, || {
                // SAFETY: reaps our own child if it has exited.
                unsafe {
                    libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
                }
            });
        }
        if let Some(state) = lock(&RUNNING_STATE).take() {
            let _ = fs::remove_dir_all(state);
        }
        std::process::exit(128 + sig);
    });
}

/// Undoes [`install_signal_thread`]'s blocking in a child before it runs.
fn unblocked_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigprocmask is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let set = stop_signals();
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// TERM to the process group `pid` leads and to every process under `pid`;
/// KILL to those still there after 10 s. `reap` collects our own child.
fn stop_group(pid: u32, mut reap: impl FnMut()) {
    let group = pid as i32;
    let pids = process_tree(pid);
    // SAFETY: signals only our own child's group and its descendants.
    unsafe {
        libc::kill(-group, libc::SIGTERM);
        for &p in &pids {
            libc::kill(p as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut alive = pids;
    while !alive.is_empty() && Instant::now() < deadline {
        reap();
        alive.retain(|&p| is_alive(p));
        if !alive.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if !alive.is_empty() {
        // SAFETY: as above.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
            for &p in &alive {
                libc::kill(p as i32, libc::SIGKILL);
            }
        }
    }
}

/// A server in its own process group; the group and every process under
/// it are stopped when this is dropped (also on error or panic).
struct Server {
    child: Child,
    stopped: bool,
    /// Dropped after the processes are gone.
    _state: StateDir,
}

impl Server {
    fn start(mut cmd: Command, state: StateDir) -> Result<Server, String> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        unblocked_signals(&mut cmd);
        let shown = format!("{cmd:?}");
        let mut running = lock(&RUNNING_SERVER);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {shown}: {e}"))?;
        *running = Some(child.id());
        Ok(Server {
            child,
            stopped: false,
            _state: state,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        let child = &mut self.child;
        stop_group(pid, || {
            let _ = child.try_wait();
        });
        let _ = self.child.wait();
        let mut running = lock(&RUNNING_SERVER);
        if *running == Some(pid) {
            *running = None;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(parent pid, state)` of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.filter_map(Result::ok) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = proc_stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds the Worker bundle (installing what is missing) and returns the
/// `AUTH_SECRET` of `.dev.vars`, for the `rust` target.
pub fn prepare_rust(root: &Path) -> Result<String, String> {
    let tools = crate::setup::all(root)?;
    eprintln!("bench: building the Worker bundle");
    crate::build(root, &tools, &[])?;
    crate::setup::auth_secret(root)
}

/// One run: fresh port and state, D1 migrations when the target has them,
/// `node serve.mjs`, wait for `/health`, then `gen(port, server pids)`,
/// then stop. The server log is removed when `clean` says the result is
/// clean, kept (and named) otherwise.
pub fn with_server<R>(
    t: &Target,
    bench: &Path,
    state_root: &Path,
    gen: impl FnOnce(u16, &[u32]) -> Result<R, String>,
    clean: impl Fn(&R) -> bool,
) -> Result<R, String> {
    let port = free_port()?;
    let state = StateDir::new(state_root, &t.name)?;
    let log_path = std::env::temp_dir().join(format!("sesh-bench-{}-{port}.log", t.name));
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let wrangler = bench.join("node_modules/.bin/wrangler");
    if t.dir.join("migrations").is_dir() {
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&wrangler);
        unblocked_signals(&mut cmd);
        let status = cmd
            .current_dir(&t.dir)
            .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
            .arg(&state.0)
            .arg("--config")
            .arg(&t.config)
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| format!("wrangler d1 migrations apply: {e}"))?;
        if !status.success() {
            return Err(format!(
                "D1 migrations failed ({status}); log {}:\n{}",
                log_path.display(),
                tail(&log_path, 30)
            ));
        }
    }
    let mut cmd = Command::new("node");
    cmd.current_dir(&t.dir)
        .arg(bench.join("serve.mjs"))
        .arg("--config")
        .arg(&t.config)
        .args(["--port", &port.to_string(), "--persist-to"])
        .arg(&state.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if t.rust {
        // The xtask has just built the bundle: wrangler's [build] step skips.
        cmd.env("SESH_PREBUILT", "1");
    }
    eprintln!(
        "bench: {} on http://127.0.0.1:{port} (state {}, log {})",
        t.name,
        state.0.display(),
        log_path.display()
    );
    let mut server = Server::start(cmd, state)?;
    let started = Instant::now();
    loop {
        let health = http::request(
            "127.0.0.1",
            port,
            "GET",
            "/health",
            &[],
            b"",
            Duration::from_secs(2),
        );
        if matches!(health, Ok((200, _))) {
            break;
        }
        if server.exited() || started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{} did not become healthy on port {port}; last lines of {}:\n{}",
                t.name,
                log_path.display(),
                tail(&log_path, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let pids = process_tree(server.pid());
    let result = gen(port, &pids);
    server.stop();
    match &result {
        Ok(r) if clean(r) => {
            let _ = fs::remove_file(&log_path);
        }
        _ => eprintln!("bench: server log kept: {}", log_path.display()),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tree_copies_only_what_differs() {
        let base = std::env::temp_dir().join(format!("xtask-sync-{}", std::process::id()));
        let (src, dest) = (base.join("src"), base.join("dest"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::create_dir_all(src.join("node_modules")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        fs::write(src.join("sub/b.txt"), "b").unwrap();
        fs::write(src.join("node_modules/x"), "x").unwrap();
        let first = sync_tree(&src, &dest).unwrap();
        assert_eq!(
            first,
            vec![PathBuf::from("a.txt"), PathBuf::from("sub/b.txt")]
        );
        assert!(!dest.join("node_modules/x").exists());
        assert!(
            sync_tree(&src, &dest).unwrap().is_empty(),
            "same: nothing copied"
        );
        fs::write(src.join("sub/b.txt"), "b2").unwrap();
        assert_eq!(
            sync_tree(&src, &dest).unwrap(),
            vec![PathBuf::from("sub/b.txt")]
        );
        assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "b2");
        let _ = fs::remove_dir_all(&base);
    }
}
