//! User ids and session ids.

/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 128;

/// True when `s` is a valid user id: 1-128 characters, each one of
/// `A-Z a-z 0-9 _ . : @ -` (the rule for the JWT `sub` claim).
pub fn is_valid_user_id(s: &str) -> bool {
    // Every allowed character is ASCII, so byte length equals char count.
    (1..=MAX_USER_ID_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// The canonical form of a session id: `s` must be UUID text in the
/// 8-4-4-4-12 hex layout (any case, any version); the answer is lowercased.
/// Braces, URNs, missing hyphens or surrounding whitespace give `None`.
pub fn parse_session_id(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let well_formed = bytes.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    well_formed.then(|| s.to_ascii_lowercase())
}

/// The creation time, in milliseconds since the Unix epoch, of a UUIDv7
/// session id (its first 48 bits); `None` for any other id or version.
pub fn session_id_unix_ms(id: &str) -> Option<i64> {
    let id = parse_session_id(id)?;
    if id.as_bytes()[14] != b'7' {
        return None;
    }
    let hex = format!("{}{}", &id[0..8], &id[9..13]);
    i64::from_str_radix(&hex, 16).ok()
}

/// Formats a UUIDv7 (RFC 9562) from a millisecond timestamp and 10 random
/// bytes, for minting session ids. Only the low 48 bits of `unix_ms` are
/// used; the version and variant bits overwrite parts of `random`.
pub fn new_session_id_v7(unix_ms: u64, random: [u8; 10]) -> String {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&(unix_ms & 0xFFFF_FFFF_FFFF).to_be_bytes()[2..]);
    b[6..].copy_from_slice(&random);
    b[6] = 0x70 | (b[6] & 0x0F);
    b[8] = 0x80 | (b[8] & 0x3F);
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_accepted() {
        for ok in [
            "a",
            "alice",
            "Bob_1",
            "svc:billing",
            "a.b@example.com",
            "x-y",
            &"u".repeat(128),
        ] {
            assert!(is_valid_user_id(ok), "{ok}");
        }
    }

    #[test]
    fn user_ids_rejected() {
        for bad in [
            "",
            &"u".repeat(129),
            "a b",
            "a/b",
            "é",
            "bob\u{0}",
            "ali\u{441}e",
            "a+b",
            "a\nb",
            "日本",
        ] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn session_ids_are_canonicalized() {
        assert_eq!(
            parse_session_id("0192F0B8-3C4D-7E5F-8A6B-7C8D9E0F1A2B").as_deref(),
            Some("0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2b")
        );
        assert_eq!(
            parse_session_id("00000000-0000-4000-8000-000000000000").as_deref(),
            Some("00000000-0000-4000-8000-000000000000")
        );
    }

    #[test]
    fn malformed_session_ids_rejected() {
        for bad in [
            "",
            "0192f0b83c4d7e5f8a6b7c8d9e0f1a2b",
            "{0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2b}",
            "urn:uuid:0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2b",
            " 0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2b",
            "0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2",
            "0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2bc",
            "0192f0b8-3c4d-7e5f-8a6b7-c8d9e0f1a2b",
            "0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1a2g",
            "0192f0b8_3c4d_7e5f_8a6b_7c8d9e0f1a2b",
            "0192f0b8-3c4d-7e5f-8a6b-7c8d9e0f1aé",
        ] {
            assert_eq!(parse_session_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn v7_timestamp_extraction() {
        // 0x0192cc091400 ms = 2024-10-27T03:33:20Z.
        assert_eq!(
            session_id_unix_ms("0192CC09-1400-7E5F-8A6B-7C8D9E0F1A2B"),
            Some(1_730_000_000_000)
        );
        // Version 4: no timestamp.
        assert_eq!(
            session_id_unix_ms("0192f0b8-3c4d-4e5f-8a6b-7c8d9e0f1a2b"),
            None
        );
        assert_eq!(session_id_unix_ms("not-a-uuid"), None);
        assert_eq!(
            session_id_unix_ms("ffffffff-ffff-7fff-bfff-ffffffffffff"),
            Some(0xFFFF_FFFF_FFFF)
        );
    }

    #[test]
    fn minted_v7_ids_round_trip() {
        let id = new_session_id_v7(1_730_000_000_000, [0xFF; 10]);
        assert_eq!(id, "0192cc09-1400-7fff-bfff-ffffffffffff");
        assert_eq!(parse_session_id(&id).as_deref(), Some(id.as_str()));
        assert_eq!(session_id_unix_ms(&id), Some(1_730_000_000_000));
        let id = new_session_id_v7(0, [0; 10]);
        assert_eq!(id, "00000000-0000-7000-8000-000000000000");
        assert_eq!(session_id_unix_ms(&id), Some(0));
    }
}
