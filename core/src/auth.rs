//! Bearer-token verification: JWT with HS256 only (CONTRACT.md section 3).
//!
//! Hand-written on `hmac` + `sha2` rather than a JWT crate: a general JWT
//! library brings RSA and EC code into the wasm bundle that HS256 never uses,
//! and accepting exactly one algorithm is simpler to audit.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use sesh_protocol::is_valid_user_id;

/// The longest token accepted; real tokens are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Who is calling, as established by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The caller's user id (`sub`), already checked against the id grammar.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Plan name (`plan` claim, `free` when absent).
    pub plan: String,
    /// Whether the token is a trusted back-end (`role: "service"`) token.
    pub service: bool,
}

/// Why a token was refused. Every variant is a 401 at the edge; the text is
/// safe to show to the caller (it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were presented.
    #[error("missing bearer token")]
    Missing,
    /// A WebSocket upgrade without credentials: it may carry the token as
    /// `?token=` (browsers cannot set headers on a WebSocket), and says so.
    #[error(
        "missing token; a WebSocket upgrade takes `Authorization: Bearer <JWT>` or `?token=<JWT>`"
    )]
    MissingOnSocket,
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256 (this includes `none`), or a `crit` header is set.
    #[error("unsupported token algorithm; only HS256 is accepted")]
    UnsupportedAlgorithm,
    /// The signature does not match the shared secret.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past (or `nbf` in the future).
    #[error("token expired or not yet valid")]
    Expired,
    /// A claim is missing or has a bad value.
    #[error("invalid token claim: {0}")]
    InvalidClaim(&'static str),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

// Only the claims we act on; registered claims such as `iat` or `iss` are
// allowed and ignored, as any JWT library may add them.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    plan: Option<serde_json::Value>,
    role: Option<serde_json::Value>,
}

/// Verifies `token` against `secret` at time `now_secs` (Unix seconds).
///
/// The order of checks matters for safety: the algorithm is checked before
/// the signature, and the signature before any claim is trusted.
pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Claims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = decode_json(h64)?;
    if header.alg != "HS256" || header.crit.is_some() {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| AuthError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::BadSignature)?;
    mac.update(h64.as_bytes());
    mac.update(b".");
    mac.update(p64.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;

    let raw: RawClaims = decode_json(p64)?;
    let sub = match raw.sub {
        Some(serde_json::Value::String(s)) if is_valid_user_id(&s) => s,
        _ => return Err(AuthError::InvalidClaim("sub")),
    };
    let exp = match raw.exp.as_ref().and_then(numeric_date) {
        Some(exp) => exp,
        None => return Err(AuthError::InvalidClaim("exp")),
    };
    if now_secs >= exp {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = raw.nbf {
        match numeric_date(&nbf) {
            Some(nbf) if nbf > now_secs => return Err(AuthError::Expired),
            Some(_) => {}
            None => return Err(AuthError::InvalidClaim("nbf")),
        }
    }
    let plan = match raw.plan {
        None => "free".to_owned(),
        Some(serde_json::Value::String(p)) if is_plan_name(&p) => p,
        Some(_) => return Err(AuthError::InvalidClaim("plan")),
    };
    let service = match raw.role {
        None => false,
        Some(serde_json::Value::String(r)) if r == "service" => true,
        Some(_) => return Err(AuthError::InvalidClaim("role")),
    };
    Ok(Claims {
        sub,
        exp,
        plan,
        service,
    })
}

/// Plan names are short identifiers; the gateway looks them up in `PLANS`.
fn is_plan_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A JWT NumericDate: integer seconds (a float with no fraction is tolerated,
/// since some libraries emit `1.7e9`).
fn numeric_date(v: &serde_json::Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        Some(f as i64)
    } else {
        None
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Extracts the token from an `Authorization` header value (`Bearer <t>`,
/// scheme case-insensitive per RFC 7235).
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, rest) = header_value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let t = rest.trim();
        (!t.is_empty()).then_some(t)
    } else {
        None
    }
}

/// Mints an HS256 token. Used by tests on both targets to build inputs; the
/// xtask and the integration tests mint with a standard JWT library instead.
pub fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
    sign_with_header(
        &serde_json::json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        secret,
    )
}

/// Like [`sign`] with an arbitrary header (tests of algorithm confusion).
pub fn sign_with_header(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    secret: &[u8],
) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789";
    const NOW: i64 = 1_800_000_000;

    fn ok_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": NOW + 60})
    }

    #[test]
    fn valid_token_gives_claims_with_defaults() {
        let c = verify(&sign(&ok_claims(), SECRET), SECRET, NOW).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.plan, "free");
        assert!(!c.service);
        assert_eq!(c.exp, NOW + 60);
    }

    #[test]
    fn plan_role_and_extra_registered_claims() {
        let t = sign(
            &json!({"sub": "svc:gw@x", "exp": NOW + 1, "plan": "pro", "role": "service", "iat": NOW, "iss": "me"}),
            SECRET,
        );
        let c = verify(&t, SECRET, NOW).unwrap();
        assert_eq!(c.plan, "pro");
        assert!(c.service);
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let t = sign(&ok_claims(), b"another-secret");
        assert_eq!(verify(&t, SECRET, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let t = sign(&ok_claims(), SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"sub": "mallory", "exp": NOW + 60}).to_string());
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), SECRET, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn expired_at_and_after_exp() {
        let t = sign(&json!({"sub": "a", "exp": NOW}), SECRET);
        assert_eq!(verify(&t, SECRET, NOW), Err(AuthError::Expired));
        assert!(verify(&t, SECRET, NOW - 1).is_ok());
    }

    #[test]
    fn not_before_in_future_is_refused() {
        let t = sign(
            &json!({"sub": "a", "exp": NOW + 100, "nbf": NOW + 10}),
            SECRET,
        );
        assert_eq!(verify(&t, SECRET, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn alg_none_is_refused_even_without_signature() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(ok_claims().to_string());
        assert_eq!(
            verify(&format!("{h}.{p}."), SECRET, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn other_algorithms_are_refused_even_if_signed_with_the_secret() {
        for alg in ["HS384", "HS512", "RS256", "ES256", "hs256"] {
            let t = sign_with_header(&json!({"alg": alg}), &ok_claims(), SECRET);
            assert_eq!(
                verify(&t, SECRET, NOW),
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn crit_header_is_refused() {
        let t = sign_with_header(
            &json!({"alg": "HS256", "crit": ["b64"]}),
            &ok_claims(),
            SECRET,
        );
        assert_eq!(
            verify(&t, SECRET, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn malformed_tokens() {
        let good = sign(&ok_claims(), SECRET);
        let cases = [
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{good}.extra"),
            "!!!.???.***".to_owned(),
            format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("not json")),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ];
        for c in cases {
            assert_eq!(
                verify(&c, SECRET, NOW),
                Err(AuthError::Malformed),
                "{c:.40}"
            );
        }
        assert_eq!(verify("", SECRET, NOW), Err(AuthError::Missing));
    }

    #[test]
    fn padded_base64_is_malformed() {
        let t = sign(&ok_claims(), SECRET);
        assert_eq!(
            verify(&format!("{t}="), SECRET, NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn bad_sub_claims() {
        for sub in [
            json!(""),
            json!("has space"),
            json!("a/b"),
            json!("x".repeat(129)),
            json!(42),
            json!(null),
        ] {
            let t = sign(&json!({"sub": sub, "exp": NOW + 60}), SECRET);
            assert_eq!(
                verify(&t, SECRET, NOW),
                Err(AuthError::InvalidClaim("sub")),
                "{sub}"
            );
        }
        let t = sign(&json!({"exp": NOW + 60}), SECRET);
        assert_eq!(verify(&t, SECRET, NOW), Err(AuthError::InvalidClaim("sub")));
    }

    #[test]
    fn missing_or_bad_exp() {
        for claims in [
            json!({"sub": "a"}),
            json!({"sub": "a", "exp": "soon"}),
            json!({"sub": "a", "exp": 1.5}),
        ] {
            let t = sign(&claims, SECRET);
            assert_eq!(verify(&t, SECRET, NOW), Err(AuthError::InvalidClaim("exp")));
        }
    }

    #[test]
    fn bad_plan_and_role() {
        let t = sign(&json!({"sub": "a", "exp": NOW + 9, "plan": 3}), SECRET);
        assert_eq!(
            verify(&t, SECRET, NOW),
            Err(AuthError::InvalidClaim("plan"))
        );
        let t = sign(
            &json!({"sub": "a", "exp": NOW + 9, "role": "admin"}),
            SECRET,
        );
        assert_eq!(
            verify(&t, SECRET, NOW),
            Err(AuthError::InvalidClaim("role"))
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
