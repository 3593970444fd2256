//! The test servers: `wrangler dev` started by the shared launcher (free
//! port, throw-away state folder, process group, watchdog, stopped when
//! dropped) with the tests' secret and origin, and the tests' tokens.

use std::path::PathBuf;

use jsonwebtoken::{encode, EncodingKey, Header};

/// The secret the test servers are started with (passed as a `--var`).
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Browser origin allowed by the test servers.
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// A running local runtime; `base` is `http://127.0.0.1:PORT`.
pub struct Server(sesh_launcher::Server);

impl std::ops::Deref for Server {
    type Target = sesh_launcher::Server;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn wrangler() -> PathBuf {
    std::env::var_os("SESH_WRANGLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/wrangler")
        })
}

impl Server {
    /// Starts a server with a fresh state folder and the given extra vars.
    pub fn start(vars: &[(&str, &str)]) -> Server {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut vars: Vec<String> = vars.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        vars.push(format!("AUTH_SECRET:{SECRET}"));
        vars.push(format!("ALLOWED_ORIGINS:{ALLOWED_ORIGIN}"));
        let dir = root.clone();
        let launch = sesh_launcher::Launch {
            name: "sesh-it".into(),
            wrangler: wrangler(),
            migrations: Some((root, Vec::new())),
            state_root: std::env::temp_dir(),
            serve: Box::new(move |port, state| {
                let mut cmd = std::process::Command::new(wrangler());
                cmd.current_dir(&dir)
                    .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()])
                    // Its own inspector port: two runtimes starting at once
                    // both found the default 9229 free, and one failed.
                    .arg("--inspector-port")
                    .arg(sesh_launcher::free_port().unwrap_or(9229).to_string())
                    .arg("--persist-to")
                    .arg(state)
                    .args([
                        "--show-interactive-dev-session=false",
                        "--log-level",
                        "warn",
                    ])
                    .env("CI", "true");
                for v in &vars {
                    cmd.args(["--var", v]);
                }
                cmd
            }),
        };
        Server(sesh_launcher::Server::start(launch).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Kills the runtime at once (SIGKILL to the whole group), as a crash,
    /// and starts it again on the same state folder (on a new port).
    pub fn crash_and_restart(&mut self) {
        self.0
            .crash_and_restart()
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        self.0.log_tail(40)
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
