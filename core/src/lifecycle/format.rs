//! The archive format (CONTRACT.md section 9), shared by the archive and
//! prune steps, the retired-session reads and the exports.
//!
//! One object per session at
//! `archive/sessions/{YYYY}/{sessionId}.ndjson.gz` (YYYY: the start year):
//! gzip of NDJSON whose first line is the session as `GET /v1/sessions`
//! lists it (`{"id","ownerId",…,"pointCount","lastSeq","stats"}`), then one line
//! per point in seq order, each exactly as `GET …/points` shows it. The
//! object's SHA-256 (hex, of the gzip bytes) and point count are recorded
//! in D1 (`archives`) and in the manifest of the start quarter,
//! `archive/manifests/{YYYY}-Q{n}.json`:
//! `{"quarter","sessions","points","rows","bytes","objects":[{"key","sessionId","points","rows","bytes","sha256"}]}`
//! (`rows` = lines = points + 1), objects by session id.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use serde_json::Value;
use sesh_protocol::{KindStats, PointsPage, SessionSummary, StoredPoint};
use sha2::{Digest, Sha256};

use crate::data::partition::{col_int, Month};
use crate::lifecycle::store::LifecycleError;
use crate::time::Millis;

/// The R2 key of a session's archive.
pub fn archive_key(session_id: &str, started_ms: Millis) -> String {
    format!(
        "archive/sessions/{:04}/{session_id}.ndjson.gz",
        Month::of(started_ms).year()
    )
}

/// The quarter of a moment, `YYYY-Qn`.
pub fn quarter(ms: Millis) -> String {
    let m = Month::of(ms);
    format!("{:04}-Q{}", m.year(), (m.month() - 1) / 3 + 1)
}

/// The R2 key of a quarter's manifest.
pub fn manifest_key(quarter: &str) -> String {
    format!("archive/manifests/{quarter}.json")
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes gzip'd NDJSON, one line at a time; only the compressed bytes are
/// held.
pub struct NdjsonGz {
    enc: GzEncoder<Vec<u8>>,
    lines: u64,
}

impl Default for NdjsonGz {
    fn default() -> Self {
        NdjsonGz::new()
    }
}

impl NdjsonGz {
    /// An empty member.
    pub fn new() -> NdjsonGz {
        NdjsonGz {
            enc: GzEncoder::new(Vec::new(), Compression::default()),
            lines: 0,
        }
    }

    /// Appends one value as a line.
    pub fn line<T: Serialize>(&mut self, v: &T) {
        // Writing to a Vec cannot fail, nor can serializing these types.
        let _ = serde_json::to_writer(&mut self.enc, v);
        let _ = self.enc.write_all(b"\n");
        self.lines += 1;
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The complete gzip member.
    pub fn finish(self) -> Vec<u8> {
        self.enc.finish().unwrap_or_default()
    }
}

/// The lines of gzip'd NDJSON (one or more gzip members).
pub fn gunzip_lines(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut text = String::new();
    MultiGzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| format!("not gzip'd UTF-8: {e}"))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// A session's archive object with what is recorded about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveObject {
    /// The gzip bytes.
    pub bytes: Vec<u8>,
    /// Points in it.
    pub points: u64,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// Builds a session's archive from its row and its points in seq order.
pub fn encode(session: &SessionSummary, points: &[StoredPoint]) -> ArchiveObject {
    let mut w = NdjsonGz::new();
    w.line(session);
    for p in points {
        w.line(p);
    }
    let bytes = w.finish();
    ArchiveObject {
        sha256: sha256_hex(&bytes),
        points: points.len() as u64,
        bytes,
    }
}

/// An archive read back: the session line and the points.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The first line.
    pub session: Value,
    /// The points, in seq order.
    pub points: Vec<StoredPoint>,
}

impl Decoded {
    /// The session's `lastSeq`.
    pub fn last_seq(&self) -> u64 {
        self.session
            .get("lastSeq")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| self.points.last().map_or(0, |p| p.seq))
    }

    /// The page of points with `seq > after_seq`, at most `limit`.
    pub fn page(&self, after_seq: u64, limit: u64) -> PointsPage {
        let start = self.points.partition_point(|p| p.seq <= after_seq);
        let points = self
            .points
            .iter()
            .skip(start)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        PointsPage {
            points,
            last_seq: self.last_seq(),
        }
    }
}

/// Parses an archive object.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let lines = gunzip_lines(bytes)?;
    let mut it = lines.iter();
    let first = it.next().ok_or("empty archive")?;
    let session: Value = serde_json::from_str(first).map_err(|e| format!("session line: {e}"))?;
    let points = it
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 2)))
        .collect::<Result<Vec<StoredPoint>, String>>()?;
    if points.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err("points are not in seq order".into());
    }
    Ok(Decoded { session, points })
}

/// Checks an object read back against what was recorded: checksum, then
/// that it parses and holds `points` points.
pub fn verify(bytes: &[u8], points: u64, sha256: &str) -> Result<Decoded, String> {
    let got = sha256_hex(bytes);
    if got != sha256 {
        return Err(format!("sha256 {got}, recorded {sha256}"));
    }
    let d = decode(bytes)?;
    if d.points.len() as u64 != points {
        return Err(format!("{} points, recorded {points}", d.points.len()));
    }
    Ok(d)
}

/// One object in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    /// R2 key.
    pub key: String,
    /// Session id.
    pub session_id: String,
    /// Points.
    pub points: u64,
    /// NDJSON lines (points + the session line).
    pub rows: u64,
    /// Object size.
    pub bytes: u64,
    /// Hex SHA-256 of the object.
    pub sha256: String,
}

/// A quarter's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// `YYYY-Qn`.
    pub quarter: String,
    /// Objects.
    pub sessions: u64,
    /// Points in all objects.
    pub points: u64,
    /// Lines in all objects.
    pub rows: u64,
    /// Bytes of all objects.
    pub bytes: u64,
    /// The objects, by session id.
    pub objects: Vec<ManifestEntry>,
}

impl Manifest {
    /// The manifest of these objects.
    pub fn new(quarter: &str, mut objects: Vec<ManifestEntry>) -> Manifest {
        objects.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Manifest {
            quarter: quarter.to_owned(),
            sessions: objects.len() as u64,
            points: objects.iter().map(|o| o.points).sum(),
            rows: objects.iter().map(|o| o.rows).sum(),
            bytes: objects.iter().map(|o| o.bytes).sum(),
            objects,
        }
    }
}

/// The `stats` of points in seq order, as the session object keeps them.
pub fn stats_of(points: &[StoredPoint]) -> BTreeMap<String, KindStats> {
    let mut out: BTreeMap<String, KindStats> = BTreeMap::new();
    for p in points {
        if let Some(v) = p.value {
            out.entry(p.kind.clone())
                .and_modify(|s| s.add(v))
                .or_insert_with(|| KindStats::of(v));
        }
    }
    out
}

/// A non-negative count column (negative reads as 0).
pub fn count(row: &Value, column: &'static str) -> Result<u64, LifecycleError> {
    Ok(u64::try_from(col_int(row, column)?).unwrap_or(0))
}

// The tests borrow the native test helpers (ids, dates).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
