//! `cargo xtask bench`: the session WebSocket benchmark of
//! `../shared/bench` (compare.sh + run.sh + loadgen.mjs) with the load
//! generator in Rust, run against the Rust worker and the JS references
//! alternately, each served the same way (`serve.mjs`, inspector off).

mod http;
mod loadgen;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loadgen::{Auth, Options, Report};

const HELP: &str = "\
usage: cargo xtask bench sessions [options]   servers + generator, side by side
       cargo xtask bench loadgen --url URL [options]   generator only

Generator options (both):
  --sessions S         sessions (default 4)
  --participants P     participants per session (default 5)
  --seconds T          send window in seconds (default 10)
  --window K           points in flight per participant (default 8)
  --rate R             open loop: R points/s per participant (default 0 = closed loop)
  --connect-timeout S  seconds for each upgrade + welcome (default 20)
  --drain-seconds S    after the window, wait up to S for acks, then for deliveries (default 10)
  --user-prefix X      user ids are X-s<S>-p<P> (default bench-<random>)

bench sessions:
  --targets \"rust js-ref party-ref\"   what to serve, run alternately (default \"rust js-ref\");
                       rust = this workspace, js-ref/party-ref = the references,
                       or a directory with a wrangler config
  --rounds N           rounds (default 1)
  --state-root DIR     where the throw-away state folders go (default /dev/shm, else /tmp)
  The rust target gets enterprise tokens minted with .dev.vars' AUTH_SECRET and
  its sessions created with POST /v1/sessions; the references get ?user=.
  Prints `<target> {json}` per run, then one JSON summary line (medians,
  min, max, and ratios of rust to each other target). Exits non-zero when
  any run had correctness errors or did not run.

bench loadgen:
  --url http://127.0.0.1:8787   the server
  --tokens             ?token= minted with .dev.vars' AUTH_SECRET (plan enterprise)
                       instead of ?user=
  --create-sessions    POST /v1/sessions first (implies --tokens)
  --watch-pids 1,2     report these processes' CPU over the send window

Run through `cargo xtask` (a debug build), the bench first builds the xtask
optimised into target/xtask-bench and runs that, so that the generator takes
less of the CPU it shares with the server; SESH_BENCH_DEBUG=1 skips this.
";

/// Runs `cargo xtask bench ...`.
pub fn run(args: &[String]) -> Result<(), String> {
    let optimised = !cfg!(debug_assertions) || std::env::var_os("SESH_BENCH_DEBUG").is_some();
    match args.first().map(String::as_str) {
        Some("sessions") if optimised => sessions(&args[1..]),
        Some("loadgen") if optimised => loadgen_only(&args[1..]),
        Some(cmd @ ("sessions" | "loadgen")) => {
            let mode = if cmd == "sessions" {
                Mode::Sessions
            } else {
                Mode::Loadgen
            };
            parse_args(&args[1..], mode)?; // a typo fails before any build
            exec_optimised(args)
        }
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown bench command {other}\n\n{HELP}")),
    }
}

/// The generator shares two cores with the server it measures, and a
/// debug build of it (what `cargo xtask` runs) takes about twice the CPU of
/// an optimised one. So the bench builds the xtask optimised, in a target
/// folder of its own (no other build is disturbed or rebuilt), and runs
/// that instead. `SESH_BENCH_DEBUG=1` keeps the debug build.
fn exec_optimised(args: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let root = crate::root();
    let target_dir = root.join("target/xtask-bench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "bench: building an optimised xtask into {} (a few minutes the first time)",
        target_dir.display()
    );
    crate::run(
        Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "xtask",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
    )?;
    let bin = target_dir.join("release/xtask");
    let err = Command::new(&bin).arg("bench").args(args).exec();
    Err(format!("could not run {}: {err}", bin.display()))
}

// ---- arguments -----------------------------------------------------------

/// What `bench sessions` or `bench loadgen` was asked for.
#[derive(Debug, PartialEq)]
pub struct Args {
    pub gen: Options,
    pub targets: Vec<String>,
    pub rounds: usize,
    pub state_root: Option<PathBuf>,
    /// `bench loadgen`: mint tokens.
    pub tokens: bool,
    /// `bench loadgen`: processes to report CPU for.
    pub watch_pids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Sessions,
    Loadgen,
}

fn positive_int(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} must be a positive integer, not {v:?}")),
    }
}

fn number(flag: &str, v: &str, min_exclusive: bool) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (x > 0.0 || (!min_exclusive && x == 0.0)) => Ok(x),
        _ => Err(format!(
            "{flag} must be a number {} 0, not {v:?}",
            if min_exclusive { ">" } else { ">=" }
        )),
    }
}

/// Parses the options of `bench sessions` / `bench loadgen`.
pub fn parse_args(args: &[String], mode: Mode) -> Result<Args, String> {
    let mut a = Args {
        gen: Options::default(),
        targets: vec!["rust".into(), "js-ref".into()],
        rounds: 1,
        state_root: None,
        tokens: false,
        watch_pids: Vec::new(),
    };
    let mut url_given = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let takes_value = !matches!(name, "--create-sessions" | "--tokens");
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("missing value for {name}"))?
                }
            }
        } else {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            String::new()
        };
        let v = value.as_str();
        let g = &mut a.gen;
        match (name, mode) {
            ("--sessions", _) => g.sessions = positive_int(name, v)?,
            ("--participants", _) => g.participants = positive_int(name, v)?,
            ("--window", _) => g.window = positive_int(name, v)?,
            ("--seconds", _) => g.seconds = number(name, v, true)?,
            ("--rate", _) => g.rate = number(name, v, false)?,
            ("--connect-timeout", _) => g.connect_timeout = number(name, v, true)?,
            ("--drain-seconds", _) => g.drain_seconds = number(name, v, false)?,
            ("--user-prefix", _) => {
                if v.is_empty() {
                    return Err("--user-prefix must not be empty".into());
                }
                g.user_prefix = Some(v.to_owned());
            }
            // Per target in `bench sessions` (only the rust target needs it).
            ("--create-sessions", Mode::Sessions) => {}
            ("--create-sessions", Mode::Loadgen) => {
                g.create_sessions = true;
                a.tokens = true;
            }
            ("--targets", Mode::Sessions) => {
                a.targets = v
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                if a.targets.is_empty() {
                    return Err("--targets names no target".into());
                }
            }
            ("--rounds", Mode::Sessions) => a.rounds = positive_int(name, v)?,
            ("--state-root", Mode::Sessions) => a.state_root = Some(PathBuf::from(v)),
            ("--url", Mode::Loadgen) => {
                http::host_port(v)?;
                g.url = v.trim_end_matches('/').to_owned();
                url_given = true;
            }
            ("--tokens", Mode::Loadgen) => a.tokens = true,
            ("--watch-pids", Mode::Loadgen) => {
                a.watch_pids = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse()
                            .map_err(|_| format!("bad pid {p:?} in --watch-pids"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            ("--url", Mode::Sessions) => {
                return Err(
                    "bench sessions starts its own servers; --url is for bench loadgen".into(),
                )
            }
            _ => return Err(format!("unknown option {name}\n\n{HELP}")),
        }
        i += 1;
    }
    if mode == Mode::Loadgen && !url_given {
        return Err("bench loadgen needs --url http://host:port".into());
    }
    Ok(a)
}

// ---- bench loadgen -------------------------------------------------------

fn loadgen_only(args: &[String]) -> Result<(), String> {
    let a = parse_args(args, Mode::Loadgen)?;
    let auth = if a.tokens {
        let root = crate::root();
        crate::setup::dev_vars(&root)?;
        Auth::Secret(crate::setup::auth_secret(&root)?)
    } else {
        Auth::UserParam
    };
    let report = loadgen::run(&a.gen, &auth, &a.watch_pids)?;
    println!("{}", report.to_json());
    if report.errors > 0 {
        return Err(format!("{} correctness errors", report.errors));
    }
    Ok(())
}

// ---- bench sessions ------------------------------------------------------

fn sessions(args: &[String]) -> Result<(), String> {
    let a = parse_args(args, Mode::Sessions)?;
    let root = crate::root();
    let bench = prepare_bench(&root)?;
    let targets: Vec<Target> = a
        .targets
        .iter()
        .map(|t| Target::resolve(t, &root, &bench))
        .collect::<Result<_, _>>()?;
    let secret = if targets.iter().any(|t| t.rust) {
        let tools = crate::setup::all(&root)?;
        eprintln!("bench: building the Worker bundle");
        crate::build(&root, &tools, &[])?;
        Some(crate::setup::auth_secret(&root)?)
    } else {
        None
    };
    install_signal_thread();
    let state_root = state_root(a.state_root.as_deref());
    eprintln!(
        "# bench sessions: targets={} rounds={} sessions={} participants={} seconds={} window={} rate={} state under {}",
        a.targets.join(","),
        a.rounds,
        a.gen.sessions,
        a.gen.participants,
        a.gen.seconds,
        a.gen.window,
        a.gen.rate,
        state_root.display()
    );
    let mut runs: Vec<(String, Report)> = Vec::new();
    let mut problems = Vec::new();
    for round in 1..=a.rounds {
        for t in &targets {
            let auth = match (&secret, t.rust) {
                (Some(s), true) => Auth::Secret(s.clone()),
                _ => Auth::UserParam,
            };
            match run_target(t, &bench, &state_root, &a.gen, &auth) {
                Ok(r) => {
                    println!("{} {}", t.name, r.to_json());
                    if r.errors > 0 {
                        problems.push(format!(
                            "{} round {round}: {} correctness errors {}",
                            t.name,
                            r.errors,
                            serde_json::json!(r.error_detail)
                        ));
                    }
                    runs.push((t.name.clone(), r));
                }
                Err(e) => {
                    eprintln!("bench: {} round {round}: {e}", t.name);
                    problems.push(format!("{} round {round}: did not run: {e}", t.name));
                }
            }
        }
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let summary = summarize(&names, &runs, &a.gen, &problems);
    eprint!("{}", summary.table);
    println!("{}", summary.json);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "correctness errors or failed runs:\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// Copies `../shared/bench` to `target/bench` (files that differ only) and
/// runs `npm ci` there when its packages are missing or changed.
fn prepare_bench(root: &Path) -> Result<PathBuf, String> {
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
struct Target {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    /// This workspace's worker: tokens, created sessions, prebuilt bundle.
    rust: bool,
}

impl Target {
    fn resolve(name: &str, root: &Path, bench: &Path) -> Result<Target, String> {
        let (label, dir, rust) = match name {
            "rust" => ("rust".to_owned(), root.to_path_buf(), true),
            "js-ref" | "party-ref" => (name.to_owned(), bench.join(name), false),
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

fn state_root(given: Option<&Path>) -> PathBuf {
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
fn install_signal_thread() {
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

/// One run: fresh port and state, migrations, serve, /health, generator.
fn run_target(
    t: &Target,
    bench: &Path,
    state_root: &Path,
    gen: &Options,
    auth: &Auth,
) -> Result<Report, String> {
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
    let mut opts = gen.clone();
    opts.url = format!("http://127.0.0.1:{port}");
    opts.create_sessions = t.rust;
    let report = loadgen::run(&opts, auth, &pids);
    server.stop();
    match &report {
        Ok(r) if r.errors == 0 => {
            let _ = fs::remove_file(&log_path);
        }
        _ => eprintln!("bench: server log kept: {}", log_path.display()),
    }
    report
}

// ---- summary -------------------------------------------------------------

/// The per-run figures summarised (as summarize.mjs).
fn metric(name: &str, r: &Report) -> Option<f64> {
    let cpu = |k: &str| r.cpu_pct.get(k).copied();
    match name {
        "acks_per_s" => Some(r.acks_per_s as f64),
        "deliveries_per_s" => Some(r.deliveries_per_s as f64),
        "ack_p50_ms" => r.ack_p50_ms,
        "ack_p99_ms" => r.ack_p99_ms,
        "delivery_p50_ms" => r.delivery_p50_ms,
        "delivery_p99_ms" => r.delivery_p99_ms,
        "ack_max_ms" => r.ack_max_ms,
        "ack_share_min" => r.ack_share_min,
        "errors" => Some(r.errors as f64),
        "cpu_workerd_pct" => cpu("workerd"),
        "cpu_proxy_pct" => cpu("workerd_proxy"),
        "cpu_node_pct" => cpu("node"),
        "cpu_loadgen_pct" => cpu("loadgen"),
        "workerd_cpu_us_per_ack" => match (cpu("workerd"), r.acks_per_s) {
            (Some(w), a) if a > 0 && w > 0.0 => Some(w * 1e4 / a as f64),
            _ => None,
        },
        _ => None,
    }
}

const METRICS: [&str; 14] = [
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

/// The median of `xs` (mean of the middle two when even).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[m]),
        _ => Some((s[m - 1] + s[m]) / 2.0),
    }
}

struct Summary {
    table: String,
    json: String,
}

type Stats = BTreeMap<String, BTreeMap<String, f64>>;

fn summarize(
    names: &[String],
    runs: &[(String, Report)],
    gen: &Options,
    problems: &[String],
) -> Summary {
    let mut median_of: Stats = BTreeMap::new();
    let mut min_of: Stats = BTreeMap::new();
    let mut max_of: Stats = BTreeMap::new();
    let mut rounds: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_detail: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for n in names {
        let mine: Vec<&Report> = runs
            .iter()
            .filter(|(t, _)| t == n)
            .map(|(_, r)| r)
            .collect();
        rounds.insert(n.clone(), mine.len());
        errors.insert(n.clone(), mine.iter().map(|r| r.errors).sum());
        let detail = error_detail.entry(n.clone()).or_default();
        for r in &mine {
            for (k, v) in &r.error_detail {
                *detail.entry(k.clone()).or_default() += v;
            }
        }
        for m in METRICS {
            let xs: Vec<f64> = mine.iter().filter_map(|r| metric(m, r)).collect();
            if let Some(med) = median(&xs) {
                let round3 = |x: f64| loadgen::round_to(x, 3);
                median_of
                    .entry(n.clone())
                    .or_default()
                    .insert(m.into(), round3(med));
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                min_of
                    .entry(n.clone())
                    .or_default()
                    .insert(m.into(), round3(lo));
                max_of
                    .entry(n.clone())
                    .or_default()
                    .insert(m.into(), round3(hi));
            }
        }
    }
    // Ratios: rust to each other target (or the first target to the rest).
    let base = names
        .iter()
        .find(|n| *n == "rust")
        .or(names.first())
        .cloned()
        .unwrap_or_default();
    let mut ratios: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for other in names.iter().filter(|n| **n != base) {
        let mut r = BTreeMap::new();
        for m in METRICS {
            let a = median_of.get(&base).and_then(|x| x.get(m));
            let b = median_of.get(other).and_then(|x| x.get(m));
            if let (Some(a), Some(b)) = (a, b) {
                if *b != 0.0 {
                    r.insert(m.to_owned(), loadgen::round_to(a / b, 3));
                }
            }
        }
        ratios.insert(format!("{base}/{other}"), r);
    }
    use serde_json::json;
    let json = loadgen::ordered_object(&[
        ("summary", json!("bench sessions")),
        (
            "shape",
            json!({
                "sessions": gen.sessions, "participants": gen.participants,
                "seconds": gen.seconds, "window": gen.window, "rate": gen.rate,
            }),
        ),
        ("rounds", json!(rounds)),
        ("median", json!(median_of)),
        ("min", json!(min_of)),
        ("max", json!(max_of)),
        ("ratio", json!(ratios)),
        ("errors", json!(errors)),
        ("error_detail", json!(error_detail)),
        ("ok", json!(problems.is_empty())),
    ]);

    // The table, as summarize.mjs prints it.
    let fmt = |x: f64| {
        if x.fract() == 0.0 {
            format!("{x}")
        } else {
            format!("{x:.2}")
        }
    };
    let others: Vec<&String> = names.iter().filter(|n| **n != base).collect();
    let mut header = vec!["metric".to_owned()];
    header.extend(names.iter().cloned());
    header.extend(others.iter().map(|o| format!("{base}/{o}")));
    let mut rows = vec![header];
    for m in METRICS {
        let mut row = vec![m.to_owned()];
        for n in names {
            let cell = match (
                median_of.get(n).and_then(|x| x.get(m)),
                min_of.get(n).and_then(|x| x.get(m)),
                max_of.get(n).and_then(|x| x.get(m)),
            ) {
                (Some(a), Some(lo), Some(hi)) => {
                    format!("{} [{}..{}]", fmt(*a), fmt(*lo), fmt(*hi))
                }
                _ => "-".into(),
            };
            row.push(cell);
        }
        for o in &others {
            let key = format!("{base}/{o}");
            row.push(
                ratios
                    .get(&key)
                    .and_then(|r| r.get(m))
                    .map_or("-".into(), |x| fmt(*x)),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut table = format!(
        "\nsessions={} participants={} seconds={} window={} rate={}; median [min..max] over rounds {}\n",
        gen.sessions,
        gen.participants,
        gen.seconds,
        gen.window,
        gen.rate,
        json!(rounds)
    );
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    Summary { table, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn bench_defaults() {
        let a = parse_args(&[], Mode::Sessions).unwrap();
        assert_eq!(a.targets, vec!["rust", "js-ref"]);
        assert_eq!(a.rounds, 1);
        assert_eq!(a.gen.sessions, 4);
        assert_eq!(a.gen.participants, 5);
        assert_eq!(a.gen.seconds, 10.0);
        assert_eq!(a.gen.window, 8);
        assert_eq!(a.gen.rate, 0.0);
        assert!(!a.gen.create_sessions);
    }

    #[test]
    fn bench_options() {
        let mut v =
            args("--sessions 1 --participants=10 --seconds 3 --window 2 --rate 50 --rounds 3");
        v.push("--targets".into());
        v.push("rust  js-ref,party-ref".into());
        let a = parse_args(&v, Mode::Sessions).unwrap();
        assert_eq!(a.gen.sessions, 1);
        assert_eq!(a.gen.participants, 10);
        assert_eq!(a.gen.seconds, 3.0);
        assert_eq!(a.gen.window, 2);
        assert_eq!(a.gen.rate, 50.0);
        assert_eq!(a.rounds, 3);
        assert_eq!(a.targets, vec!["rust", "js-ref", "party-ref"]);
        // --create-sessions is decided per target in bench sessions
        let a = parse_args(&args("--create-sessions"), Mode::Sessions).unwrap();
        assert!(!a.gen.create_sessions);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "--sessions 0",
            "--sessions -1",
            "--participants x",
            "--window 1.5",
            "--seconds 0",
            "--seconds nan",
            "--rate -1",
            "--rounds 0",
            "--sessions",
            "--bogus 1",
            "--url http://127.0.0.1:1",
            "--tokens",
            "--create-sessions=yes",
        ] {
            assert!(parse_args(&args(bad), Mode::Sessions).is_err(), "{bad}");
        }
        assert!(parse_args(&["--targets".into(), " ".into()], Mode::Sessions).is_err());
        assert!(parse_args(&args("--rounds 2"), Mode::Loadgen).is_err());
        assert!(
            parse_args(&args("--sessions 2"), Mode::Loadgen).is_err(),
            "no --url"
        );
        assert!(parse_args(&args("--url ws://x:1"), Mode::Loadgen).is_err());
    }

    #[test]
    fn loadgen_options() {
        let a = parse_args(
            &args(
                "--url http://127.0.0.1:9000/ --create-sessions --watch-pids 1,22 --user-prefix u",
            ),
            Mode::Loadgen,
        )
        .unwrap();
        assert_eq!(a.gen.url, "http://127.0.0.1:9000");
        assert!(a.gen.create_sessions);
        assert!(a.tokens, "--create-sessions needs tokens");
        assert_eq!(a.watch_pids, vec![1, 22]);
        assert_eq!(a.gen.user_prefix.as_deref(), Some("u"));
        assert!(parse_args(&args("--url http://x:1 --watch-pids 1,a"), Mode::Loadgen).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn summary_ratios_are_rust_over_the_others() {
        let rep = |acks: u64, p99: f64| Report {
            acks_per_s: acks,
            delivery_p99_ms: Some(p99),
            ..Report::default()
        };
        let runs = vec![
            ("rust".to_owned(), rep(100, 20.0)),
            ("js-ref".to_owned(), rep(200, 10.0)),
            ("rust".to_owned(), rep(300, 40.0)),
            ("js-ref".to_owned(), rep(200, 10.0)),
        ];
        let names = vec!["rust".to_owned(), "js-ref".to_owned()];
        let s = summarize(&names, &runs, &Options::default(), &[]);
        let v: serde_json::Value = serde_json::from_str(&s.json).unwrap();
        assert_eq!(v["median"]["rust"]["acks_per_s"], 200.0);
        assert_eq!(v["min"]["rust"]["acks_per_s"], 100.0);
        assert_eq!(v["max"]["rust"]["delivery_p99_ms"], 40.0);
        assert_eq!(v["ratio"]["rust/js-ref"]["acks_per_s"], 1.0);
        assert_eq!(v["ratio"]["rust/js-ref"]["delivery_p99_ms"], 3.0);
        assert_eq!(v["rounds"]["rust"], 2);
        assert_eq!(v["ok"], true);
        assert!(s.table.contains("rust/js-ref"), "{}", s.table);
    }

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
