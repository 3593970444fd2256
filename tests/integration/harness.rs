//! Starts `wrangler dev` on a free port with a throw-away state folder, and
//! stops it (its whole process group) when dropped, also when a test panics.
//! A watchdog shell kills the group too if this test process dies without
//! unwinding.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, EncodingKey, Header};

/// The secret the test servers are started with (passed as a `--var`).
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Browser origin allowed by the test servers.
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// A running local runtime.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    port: u16,
    child: Option<Child>,
    state: PathBuf,
    log: PathBuf,
    vars: Vec<(String, String)>,
    owns_state: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wrangler() -> PathBuf {
    std::env::var_os("SESH_WRANGLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("node_modules/.bin/wrangler"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Server {
    /// Starts a server with a fresh state folder and the given extra vars.
    pub fn start(vars: &[(&str, &str)]) -> Server {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let state = std::env::temp_dir().join(format!("sesh-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).expect("create state folder");
        let status = Command::new(wrangler())
            .current_dir(root())
            .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
            .arg(&state)
            .env("CI", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run wrangler d1 migrations apply");
        assert!(status.success(), "D1 migrations failed");
        let mut s = Server {
            base: String::new(),
            port: 0,
            child: None,
            log: state.with_extension("log"),
            state,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            owns_state: true,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        self.port = free_port();
        self.base = format!("http://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut cmd = Command::new(wrangler());
        cmd.current_dir(root())
            .args(["dev", "--ip", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--persist-to")
            .arg(&self.state)
            .args([
                "--show-interactive-dev-session=false",
                "--log-level",
                "warn",
            ])
            .args(["--var", &format!("AUTH_SECRET:{SECRET}")])
            .args(["--var", &format!("ALLOWED_ORIGINS:{ALLOWED_ORIGIN}")]);
        for (k, v) in &self.vars {
            cmd.args(["--var", &format!("{k}:{v}")]);
        }
        cmd.env("CI", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            // Its own process group, so that stopping it stops workerd too.
            .process_group(0);
        let child = cmd.spawn().expect("spawn wrangler dev");
        let pgid = child.id();
        // Watchdog: if this test process vanishes without unwinding (killed,
        // aborted), the server group goes with it.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null && kill -0 {pgid} 2>/dev/null; do sleep 1; done; kill -TERM -{pgid} 2>/dev/null; sleep 3; kill -KILL -{pgid} 2>/dev/null",
                me = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let url = format!("{}/health", self.base);
        loop {
            if let Ok(r) = probe::blocking_get(&url) {
                if r == 200 {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("wrangler dev exited ({status}):\n{}", self.log_tail());
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy in time:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills the runtime at once (SIGKILL to the whole group), as a crash,
    /// and starts it again on the same state folder (on a new port).
    pub fn crash_and_restart(&mut self) {
        self.signal(libc::SIGKILL);
        self.spawn();
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            // SAFETY: kill(2) with a negative pid signals our own child's
            // process group; no memory is involved.
            unsafe {
                libc::kill(-pgid, sig);
            }
            if sig != libc::SIGKILL {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if self.owns_state {
            let _ = std::fs::remove_dir_all(&self.state);
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Mints an HS256 token with the standard `jsonwebtoken` crate, as a
/// third-party client would.
pub fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// A valid token for `user` on `plan`, valid for an hour.
pub fn user_token(user: &str, plan: &str) -> String {
    token(serde_json::json!({"sub": user, "plan": plan, "exp": now_secs() + 3600}))
}

/// A service token.
pub fn service_token(user: &str) -> String {
    token(
        serde_json::json!({"sub": user, "role": "service", "plan": "enterprise", "exp": now_secs() + 3600}),
    )
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

mod probe {
    //! A blocking GET without pulling in reqwest's blocking client.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// The status of a plain HTTP/1.1 GET, or an error.
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = TcpStream::connect(host)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        let head = String::from_utf8_lossy(&buf[..n]);
        head.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))
    }
}
