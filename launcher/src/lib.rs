//! Starts a local Workers runtime (`wrangler dev`, or the benchmarks'
//! `serve.mjs`) the same way for the integration tests and the benchmarks:
//! on a free port, with a throw-away `--persist-to` state folder (D1
//! migrations applied first), in a process group of its own, waited for on
//! `/health`, and stopped with everything under it when dropped, also when
//! the caller panics. A watchdog shell stops it too if the caller dies
//! without unwinding (killed, Ctrl-C), and then removes the state folder.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Builds the serve command for a port and a state folder.
pub type ServeCommand = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;

/// What to start.
pub struct Launch {
    /// Names the state folder and the log.
    pub name: String,
    /// The wrangler that applies the D1 migrations.
    pub wrangler: PathBuf,
    /// Where `wrangler d1 migrations apply` runs, with these extra
    /// arguments (e.g. `--config`); `None` when there are no migrations.
    pub migrations: Option<(PathBuf, Vec<OsString>)>,
    /// Where the state folder (and the log beside it) go.
    pub state_root: PathBuf,
    /// The server itself.
    pub serve: ServeCommand,
}

/// A running runtime.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    port: u16,
    child: Option<Child>,
    state: PathBuf,
    log: PathBuf,
    keep_log: bool,
    serve: ServeCommand,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port nobody listens on now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Creates a fresh state folder, applies the migrations, starts the
    /// server and waits until `/health` answers 200.
    pub fn start(launch: Launch) -> Result<Server> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let safe: String = launch
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let state = launch
            .state_root
            .join(format!("{safe}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let mut server = Server {
            base: String::new(),
            port: 0,
            child: None,
            log: state.with_extension("log"),
            state,
            keep_log: false,
            serve: launch.serve,
        };
        if let Some((dir, extra)) = &launch.migrations {
            let status = Command::new(&launch.wrangler)
                .current_dir(dir)
                .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
                .arg(&server.state)
                .args(extra)
                .env("CI", "true")
                .stdin(Stdio::null())
                .stdout(server.log_file()?)
                .stderr(server.log_file()?)
                .status()
                .context("running wrangler d1 migrations apply")?;
            if !status.success() {
                bail!("D1 migrations failed ({status}):\n{}", server.log_tail(30));
            }
        }
        server.spawn()?;
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state folder.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The server's log (its stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Keeps the log when the server is dropped.
    pub fn keep_log(&mut self) {
        self.keep_log = true;
    }

    /// The server process and every process under it.
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map_or_else(Vec::new, |c| process_tree(c.id()))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the runtime at once (SIGKILL to everything), as a crash, and
    /// starts it again on the same state folder, on a new port.
    pub fn crash_and_restart(&mut self) -> Result<()> {
        self.signal_all(libc::SIGKILL, Duration::ZERO);
        self.spawn()
    }

    /// Stops the runtime: TERM to its group and every process under it,
    /// KILL to what is left once they are gone or after 10 s.
    pub fn stop(&mut self) {
        self.signal_all(libc::SIGTERM, Duration::from_secs(10));
    }

    fn log_file(&self) -> Result<fs::File> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))
    }

    // Starts the server; when the runtime exits before it is healthy (two
    // runtimes starting at once on one machine may race for a port), once
    // or twice more on a new port. A server that cannot start fails all
    // three times, with its log.
    fn spawn(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.spawn_once() {
                Err(e) if attempt < 3 && self.exited() => {
                    eprintln!(
                        "launcher: the server exited while starting (attempt {attempt}): {e:#}"
                    );
                    self.child = None;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    // Whether the server process has exited.
    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
    }

    fn spawn_once(&mut self) -> Result<()> {
        self.port = free_port()?;
        self.base = format!("http://127.0.0.1:{}", self.port);
        let mut cmd = (self.serve)(self.port, &self.state);
        cmd.stdin(Stdio::null())
            .stdout(self.log_file()?)
            .stderr(self.log_file()?)
            // Its own process group, so that stopping it stops workerd too,
            // and a Ctrl-C meant for the caller does not reach it halfway.
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        self.watchdog(child.id());
        self.child = Some(child);
        self.wait_healthy()
    }

    /// If the caller vanishes without unwinding, the server group goes
    /// with it, and so does the state folder (not on a crash test's
    /// restart: the caller is still there then).
    fn watchdog(&self, pgid: u32) {
        let script = format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {pgid} 2>/dev/null; do sleep 1; done; \
             kill -0 {me} 2>/dev/null && exit 0; \
             kill -TERM -{pgid} 2>/dev/null; sleep 3; kill -KILL -{pgid} 2>/dev/null; rm -rf '{state}'",
            me = std::process::id(),
            state = self.state.display()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if health(self.port) == Some(200) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("the server exited ({status}):\n{}", self.log_tail(40));
            }
            if Instant::now() > deadline {
                bail!(
                    "the server was not healthy on port {} in time:\n{}",
                    self.port,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `sig` to the group and every process under the server; after
    /// `grace` (or once they are gone), KILL to the group and those still
    /// there.
    fn signal_all(&mut self, sig: i32, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let pids = process_tree(pid);
        let kill = |sig: i32, pids: &[u32]| {
            // SAFETY: kill(2) signals our own child's group and the
            // processes under it; no memory is involved.
            unsafe {
                libc::kill(-(pid as i32), sig);
                for &p in pids {
                    libc::kill(p as i32, sig);
                }
            }
        };
        kill(sig, &pids);
        let deadline = Instant::now() + grace;
        let mut alive = pids;
        while !alive.is_empty() && Instant::now() < deadline {
            let _ = child.try_wait();
            alive.retain(|&p| is_alive(p));
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of the group (a workerd that outlived its
        // parent) goes too, before the state folder is removed.
        kill(libc::SIGKILL, &alive);
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.state);
        if !self.keep_log {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// The status of `GET /health` on `port`, if it answers within 2 s. A
/// readiness probe only: one short read of the status line.
fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `(parent pid, state)` of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.get(s.rfind(')')? + 2..)?.split(' ');
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
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
