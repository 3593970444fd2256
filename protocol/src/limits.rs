//! Size and count limits of the contract.
//!
//! Lengths "in characters" are Unicode scalar values (`str::chars().count()`);
//! byte sizes of JSON objects are the length of their compact JSON
//! serialization (see [`json_size`]).

use std::io;

use serde::Serialize;

/// Largest HTTP request body, in bytes (1 MiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest WebSocket text frame, in bytes (64 KiB); larger ones get close 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest session title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most distinct user ids in a session's `members` and `viewers` together
/// (the owner apart).
pub const MAX_MEMBERS: usize = 100;
/// Largest `signal` frame `data` object, in bytes of compact JSON (4 KiB).
pub const MAX_SIGNAL_BYTES: usize = 4 * 1024;
/// Largest `state` frame `data` object, in bytes of compact JSON (2 KiB).
pub const MAX_STATE_BYTES: usize = 2 * 1024;
/// Largest session `metadata` object, in bytes of compact JSON (16 KiB).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest point `data` object, in bytes of compact JSON (16 KiB).
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Most points in one `POST /v1/sessions/{id}/points`.
pub const MAX_POINTS_PER_BATCH: usize = 100;
/// Longest client point `id` (idempotency key), in characters.
pub const MAX_POINT_ID_CHARS: usize = 64;
/// Longest point `kind`, in characters.
pub const MAX_KIND_CHARS: usize = 64;
/// Points per page of `GET .../points` when `limit` is not given.
pub const DEFAULT_READ_LIMIT: usize = 100;
/// Largest `limit` of `GET .../points`.
pub const MAX_READ_LIMIT: usize = 1000;
/// Most user ids in one `GET /v1/presence?users=...`.
pub const MAX_PRESENCE_BATCH: usize = 100;
/// Longest presence `activity`, in characters.
pub const MAX_ACTIVITY_CHARS: usize = 128;
/// Longest quota `plan` name in a check, in characters.
pub const MAX_PLAN_CHARS: usize = 64;

/// Length of the compact JSON serialization of `value`, in bytes, counted
/// without building the string.
pub fn json_size<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Serializing maps with string keys, strings and numbers into a writer
    // that never fails cannot fail; a failure would be counted as "too big"
    // by callers comparing against a limit.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Number of characters of `s`, the unit of every length limit.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// An `io::Write` that only counts bytes.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Earliest point `ts` accepted: 2000-01-01T00:00:00Z. Points land in
/// monthly partitions by `ts`; a bound keeps a stray value (seconds instead
/// of milliseconds, a zero) from creating partitions decades away.
pub const MIN_POINT_TS: i64 = 946_684_800_000;
/// First point `ts` refused: 2100-01-01T00:00:00Z.
pub const MAX_POINT_TS: i64 = 4_102_444_800_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_size_is_compact_serialization_length() {
        let v = serde_json::json!({"a": [1, 2, {"b": "é"}], "c": null});
        assert_eq!(
            json_size(&v),
            serde_json::to_string(&v).expect("serialize").len()
        );
        assert_eq!(json_size(&serde_json::json!({})), 2);
        assert_eq!(json_size(&serde_json::json!({"k": "é"})), 10);
    }

    #[test]
    fn char_len_counts_characters_not_bytes() {
        assert_eq!(char_len("héllo"), 5);
        assert_eq!(char_len("日本"), 2);
        assert_eq!(char_len(""), 0);
    }

    #[test]
    fn limits_match_the_contract() {
        assert_eq!(MAX_BODY_BYTES, 1_048_576);
        assert_eq!(MAX_FRAME_BYTES, 65_536);
        assert_eq!(MAX_METADATA_BYTES, 16_384);
        assert_eq!(MAX_DATA_BYTES, 16_384);
        assert_eq!(
            (DEFAULT_READ_LIMIT, MAX_READ_LIMIT, MAX_POINTS_PER_BATCH),
            (100, 1000, 100)
        );
    }
}
