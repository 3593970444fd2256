//! Time as plain values: cores take `now` in milliseconds since the Unix
//! epoch; this module turns such values into wire and storage forms.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// RFC 3339 UTC with millisecond precision, e.g. `2026-11-27T19:46:12.345Z`.
pub fn rfc3339(ms: Millis) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The monthly partition suffix for a moment: `YYYY_MM` (UTC).
pub fn month_suffix(ms: Millis) -> String {
    let d = datetime(ms);
    format!("{:04}_{:02}", d.year(), d.month())
}

// Out-of-range values clamp to the epoch rather than panic: callers validate
// client timestamps, so this only guards against bugs.
fn datetime(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_272_772_345), "2025-11-27T19:46:12.345Z");
    }

    #[test]
    fn month_suffix_uses_utc_boundaries() {
        // 2026-01-31T23:59:59.999Z and one millisecond later.
        assert_eq!(month_suffix(1_769_903_999_999), "2026_01");
        assert_eq!(month_suffix(1_769_904_000_000), "2026_02");
    }
}
