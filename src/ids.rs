//! Server-side id generation: session ids (UUIDv7, so the creation month is
//! derivable from the id), connection ids and request ids.

use uuid::{NoContext, Timestamp, Uuid};

use sesh_core::time::Millis;

/// A new session id: a UUIDv7 carrying `now_ms`.
pub fn new_session_id(now_ms: Millis) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ts = Timestamp::from_unix(NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    Uuid::new_v7(ts).hyphenated().to_string()
}

/// A new random id (UUIDv4, simple form) for connections and requests.
pub fn new_random_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// Accepts a client-supplied `X-Request-Id` when it is short and printable,
/// so it can be echoed and logged safely.
pub fn is_acceptable_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_v7_and_carry_the_time() {
        let id = new_session_id(1_764_272_772_345);
        assert_eq!(
            sesh_protocol::parse_session_id(&id).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            sesh_protocol::session_id_unix_ms(&id),
            Some(1_764_272_772_345)
        );
        assert_ne!(id, new_session_id(1_764_272_772_345), "random part differs");
    }

    #[test]
    fn random_ids_are_unique_hex() {
        let a = new_random_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_random_id());
    }

    #[test]
    fn request_ids() {
        assert!(is_acceptable_request_id("abc-123"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("a b"));
        assert!(!is_acceptable_request_id("x\r\nSet-Cookie: y"));
        assert!(!is_acceptable_request_id(&"a".repeat(129)));
    }
}
