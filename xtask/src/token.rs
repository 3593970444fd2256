//! `cargo xtask token`: mints a development token with a standard JWT
//! library, exactly as a third-party client would.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};

use crate::{flag, root, setup};

/// Prints a token for `--user` signed with `.dev.vars`' `AUTH_SECRET`.
pub fn run(args: &[String]) -> Result<(), String> {
    let user = flag(args, "--user").ok_or("token needs --user U")?;
    let plan = flag(args, "--plan").unwrap_or("free");
    let role = flag(args, "--role");
    let ttl: u64 = match flag(args, "--ttl") {
        Some(t) => t.parse().map_err(|_| format!("bad --ttl {t}"))?,
        None => 3600,
    };
    if let Some(r) = role.filter(|r| *r != "service") {
        return Err(format!("--role takes only `service`, not {r}"));
    }
    let root = root();
    setup::dev_vars(&root)?;
    let secret = setup::auth_secret(&root)?;
    println!("{}", mint(&secret, user, plan, role, ttl)?);
    Ok(())
}

/// An HS256 token for `user` on `plan` (with `role` if given), valid for
/// `ttl` seconds.
pub fn mint(
    secret: &str,
    user: &str,
    plan: &str,
    role: Option<&str>,
    ttl: u64,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": user,
        "plan": plan,
        "iat": now,
        "exp": now + ttl,
    });
    if let Some(r) = role {
        claims["role"] = r.into();
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing failed: {e}"))
}
