//! Cold sessions in R2 (CONTRACT.md section 9): the archive format, the
//! archive and prune steps of the scheduled run, and the read of an ended
//! session's points from D1 or, once pruned, from its archive.
//!
//! **Format.** One object per session at
//! `archive/sessions/{YYYY}/{sessionId}.ndjson.gz` (YYYY: the start year):
//! gzip of NDJSON whose first line is the session as `GET /v1/sessions`
//! lists it (`{"id","ownerId",…,"pointCount","lastSeq","stats"}`), then one line
//! per point in seq order, each exactly as `GET …/points` shows it. The
//! object's SHA-256 (hex, of the gzip bytes) and point count are recorded
//! in D1 (`archives`) and in the manifest of the start quarter,
//! `archive/manifests/{YYYY}-Q{n}.json`:
//! `{"quarter","sessions","points","rows","bytes","objects":[{"key","sessionId","points","rows","bytes","sha256"}]}`
//! (`rows` = lines = points + 1), objects by session id.
//!
//! **Archive step** (cold: ended, start month [`ARCHIVE_AFTER_MONTHS`] or
//! more before now's month): read the session and every point from D1;
//! only when D1 holds `pointCount` points (no flush pending) write the
//! object, record it (`verified` 0), read it back, check count and
//! checksum, mark it `verified`. Then rewrite the manifest of each quarter
//! with newly verified objects. A run killed anywhere writes the same
//! object again (same rows, same bytes) and ends in the same state.
//!
//! **Prune step** (verified archives whose start month is
//! [`DETAIL_RETENTION_MONTHS`] or more back): read the object back from R2
//! and check count and checksum again; then set `pruned` 1 (reads now go to
//! the archive), delete the session's points from every points table in
//! chunks, and set `pruned` 2. Sessions rows and metrics stay.
//!
//! [`ARCHIVE_AFTER_MONTHS`]: crate::lifecycle::LifecycleConfig::archive_after_months
//! [`DETAIL_RETENTION_MONTHS`]: crate::lifecycle::LifecycleConfig::detail_retention_months

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use serde_json::Value;
use sesh_protocol::limits::MAX_READ_LIMIT;
use sesh_protocol::{KindStats, PointsPage, SessionSummary, StoredPoint};
use sha2::{Digest, Sha256};

use crate::data::history::{
    find_session, merge_points, merge_stats, parse_found_session, parse_point_months, point_months,
    points_page, read_points, stats_statements, v7_time,
};
use crate::data::partition::{
    col_int, col_str, Existing, Month, Span, Statement, TableKind, LIST_PARTITIONS,
};
use crate::lifecycle::store::{query, Backend, Budget, LifecycleError};
use crate::lifecycle::{cutoff_ms, existing, LifecycleConfig, Report};
use crate::time::{rfc3339, Millis};

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

fn count(row: &Value, column: &'static str) -> Result<u64, LifecycleError> {
    Ok(u64::try_from(col_int(row, column)?).unwrap_or(0))
}

/// The archive state of a session: `(key, pruned)` when it has a verified
/// archive.
pub fn archive_state(session_id: &str) -> Statement {
    Statement::new(
        "SELECT key, points, sha256, pruned FROM archives WHERE session_id = ?1 AND verified = 1",
        vec![Value::from(session_id)],
    )
}

/// Where a session's points are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// D1, from the partitions of these months.
    D1(Vec<Month>),
    /// The archive object at this key (its D1 points are pruned).
    Archive(String),
}

/// The source from the rows of [`point_months`] and [`archive_state`].
pub fn source(months: &[Value], archive: &[Value]) -> Result<Source, LifecycleError> {
    if let Some(a) = archive.first() {
        if col_int(a, "pruned")? >= 1 {
            return Ok(Source::Archive(col_str(a, "key")?));
        }
    }
    Ok(Source::D1(parse_point_months(months)?))
}

/// The partitions that exist and where an ended session's points are now:
/// one D1 round trip.
async fn locate<B: Backend>(b: &B, session_id: &str) -> Result<(Existing, Source), LifecycleError> {
    let first = b
        .batch(&[
            Statement::new(LIST_PARTITIONS, vec![]),
            point_months(session_id),
            archive_state(session_id),
        ])
        .await?;
    let ex = Existing::from_rows(&first[0])?;
    Ok((ex, source(&first[1], &first[2])?))
}

/// Reads an archive object; a missing one is an error (it was verified).
pub async fn fetch_archive<B: Backend>(b: &B, key: &str) -> Result<Decoded, LifecycleError> {
    let bytes = b.get(key).await?.ok_or_else(|| LifecycleError::Object {
        key: key.to_owned(),
        detail: "missing".into(),
    })?;
    decode(&bytes).map_err(|detail| LifecycleError::Object {
        key: key.to_owned(),
        detail,
    })
}

/// A page of an ended session's points from D1 or, once pruned, from its
/// archive: the answer of `GET /v1/sessions/{id}/points` for a session
/// whose live object has no storage. `None`: no such session in D1 (404).
/// Two D1 round trips, or one and an R2 read.
pub async fn ended_points<B: Backend>(
    b: &B,
    session_id: &str,
    after_seq: u64,
    limit: u64,
) -> Result<Option<PointsPage>, LifecycleError> {
    let limit = limit.clamp(1, MAX_READ_LIMIT as u64);
    let (ex, from) = locate(b, session_id).await?;
    match from {
        Source::Archive(key) => Ok(Some(fetch_archive(b, &key).await?.page(after_seq, limit))),
        Source::D1(months) => {
            let Some(find) = find_session(session_id, &ex) else {
                return Ok(None);
            };
            let mut batch = vec![find];
            batch.extend(read_points(
                session_id,
                after_seq,
                limit as u32,
                &months,
                &ex,
            ));
            let rows = b.batch(&batch).await?;
            let Some(session) = parse_found_session(&rows[0])? else {
                return Ok(None);
            };
            let points = merge_points(rows.get(1..).unwrap_or(&[]), limit);
            Ok(Some(points_page(&points, session.last_seq)?))
        }
    }
}

/// The `stats` of an ended session whose live object has no storage (it
/// kept them): from a `GROUP BY` over its points in D1 or, once they are
/// pruned, from its archive. Two D1 round trips, or one and an R2 read.
pub async fn ended_stats<B: Backend>(
    b: &B,
    session_id: &str,
) -> Result<BTreeMap<String, KindStats>, LifecycleError> {
    let (ex, from) = locate(b, session_id).await?;
    match from {
        Source::Archive(key) => Ok(stats_of(&fetch_archive(b, &key).await?.points)),
        Source::D1(months) => {
            let stmts = stats_statements(session_id, &months, &ex);
            if stmts.is_empty() {
                return Ok(BTreeMap::new());
            }
            Ok(merge_stats(&b.batch(&stmts).await?)?)
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

/// Reads all of a session's points from D1, a page per round trip.
async fn all_points<B: Backend>(
    b: &B,
    session_id: &str,
    months: &[Month],
    ex: &Existing,
) -> Result<Vec<StoredPoint>, LifecycleError> {
    let mut out: Vec<StoredPoint> = Vec::new();
    loop {
        let after = out.last().map_or(0, |p| p.seq);
        let stmts = read_points(session_id, after, MAX_READ_LIMIT as u32, months, ex);
        if stmts.is_empty() {
            return Ok(out);
        }
        let rows = b.batch(&stmts).await?;
        let page = points_page(&merge_points(&rows, MAX_READ_LIMIT as u64), 0)?;
        let n = page.points.len();
        out.extend(page.points);
        if n < MAX_READ_LIMIT {
            return Ok(out);
        }
    }
}

/// Archives cold ended sessions and writes their quarters' manifests;
/// `false` when the budget ran out first.
pub async fn run_archive<B: Backend>(
    b: &B,
    now: Millis,
    cfg: &LifecycleConfig,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    if !budget.take(1) {
        return Ok(false);
    }
    let ex = existing(b).await?;
    let cutoff = cutoff_ms(now, cfg.archive_after_months);
    let tables: Vec<String> = ex
        .spans(TableKind::Sessions)
        .filter(|s| s.start_ms() < cutoff)
        .map(|s| TableKind::Sessions.table(s))
        .collect();
    let mut after = String::new();
    while !tables.is_empty() {
        // One statement per table (D1 allows only a few terms in a
        // compound SELECT), one batch; the first 20 ids of all.
        let list: Vec<Statement> = tables
            .iter()
            .map(|t| {
                Statement::new(
                    format!(
                        "SELECT id, point_count FROM {t} WHERE started_at < ?1 AND status = 'ended' \
                         AND id > ?2 AND id NOT IN (SELECT session_id FROM archives WHERE verified = 1) \
                         ORDER BY id LIMIT 20"
                    ),
                    vec![Value::from(rfc3339(cutoff)), Value::from(after.as_str())],
                )
            })
            .collect();
        if !budget.take(1) {
            return Ok(false);
        }
        let mut rows: Vec<Value> = b.batch(&list).await?.into_iter().flatten().collect();
        rows.sort_by(|a, b| {
            a.get("id")
                .and_then(Value::as_str)
                .cmp(&b.get("id").and_then(Value::as_str))
        });
        rows.dedup_by(|a, b| a.get("id") == b.get("id"));
        rows.truncate(20);
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let id = col_str(r, "id")?;
            let pages = count(r, "point_count")? / MAX_READ_LIMIT as u64 + 1;
            if !budget.take(5 + u32::try_from(pages).unwrap_or(u32::MAX)) {
                return Ok(false);
            }
            archive_one(b, &id, &ex, now, report).await?;
            after = id;
        }
    }
    write_manifests(b, budget, report).await
}

async fn archive_one<B: Backend>(
    b: &B,
    id: &str,
    ex: &Existing,
    now: Millis,
    report: &mut Report,
) -> Result<(), LifecycleError> {
    let Some(find) = find_session(id, ex) else {
        // Not a v7 id: its partition cannot be told, so it is never cold.
        return Ok(());
    };
    let rows = b.batch(&[point_months(id), find]).await?;
    let months = parse_point_months(&rows[0])?;
    let Some(session) = parse_found_session(&rows[1])? else {
        return Ok(());
    };
    let points = all_points(b, id, &months, ex).await?;
    if points.len() as u64 != session.point_count {
        report.deferred += 1;
        return Ok(());
    }
    let started = v7_time(id).unwrap_or(0);
    let key = archive_key(id, started);
    let obj = encode(&session, &points);
    b.put(&key, obj.bytes.clone()).await?;
    b.batch(&[Statement::new(
        "INSERT OR REPLACE INTO archives (session_id, key, quarter, started_ms, points, bytes, \
         sha256, verified, pruned, manifested, archived_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, 0, ?8)",
        vec![
            Value::from(id),
            Value::from(key.as_str()),
            Value::from(quarter(started)),
            Value::from(started),
            Value::from(obj.points),
            Value::from(obj.bytes.len() as u64),
            Value::from(obj.sha256.as_str()),
            Value::from(now),
        ],
    )])
    .await?;
    let back = b.get(&key).await?.unwrap_or_default();
    if let Err(detail) = verify(&back, obj.points, &obj.sha256) {
        return Err(LifecycleError::Object { key, detail });
    }
    b.batch(&[Statement::new(
        "UPDATE archives SET verified = 1 WHERE session_id = ?1 AND sha256 = ?2",
        vec![Value::from(id), Value::from(obj.sha256.as_str())],
    )])
    .await?;
    report.archived += 1;
    Ok(())
}

async fn write_manifests<B: Backend>(
    b: &B,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    loop {
        if !budget.take(1) {
            return Ok(false);
        }
        let quarters = query(
            b,
            Statement::new(
                "SELECT DISTINCT quarter FROM archives WHERE verified = 1 AND manifested = 0 \
                 ORDER BY quarter LIMIT 10",
                vec![],
            ),
        )
        .await?;
        if quarters.is_empty() {
            return Ok(true);
        }
        for q in &quarters {
            if !budget.take(3) {
                return Ok(false);
            }
            let q = col_str(q, "quarter")?;
            let rows = query(
                b,
                Statement::new(
                    "SELECT session_id, key, points, bytes, sha256 FROM archives \
                     WHERE quarter = ?1 AND verified = 1 ORDER BY session_id",
                    vec![Value::from(q.as_str())],
                ),
            )
            .await?;
            let objects = rows
                .iter()
                .map(|r| {
                    let points = count(r, "points")?;
                    Ok(ManifestEntry {
                        key: col_str(r, "key")?,
                        session_id: col_str(r, "session_id")?,
                        points,
                        rows: points + 1,
                        bytes: count(r, "bytes")?,
                        sha256: col_str(r, "sha256")?,
                    })
                })
                .collect::<Result<Vec<_>, LifecycleError>>()?;
            let ids: Vec<&str> = objects.iter().map(|o| o.session_id.as_str()).collect();
            let ids = Value::from(ids).to_string();
            let manifest = Manifest::new(&q, objects);
            let text = serde_json::to_vec(&manifest).unwrap_or_default();
            b.put(&manifest_key(&q), text).await?;
            b.batch(&[Statement::new(
                "UPDATE archives SET manifested = 1 WHERE quarter = ?1 \
                 AND session_id IN (SELECT value FROM json_each(?2))",
                vec![Value::from(q.as_str()), Value::from(ids)],
            )])
            .await?;
            report.manifests += 1;
        }
    }
}

/// Deletes the D1 points of archived sessions past the detail retention,
/// each only after its archive was read back and verified; `false` when
/// the budget ran out first.
pub async fn run_prune<B: Backend>(
    b: &B,
    now: Millis,
    cfg: &LifecycleConfig,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    let cutoff = cutoff_ms(now, cfg.detail_retention_months);
    loop {
        if !budget.take(2) {
            return Ok(false);
        }
        let rows = query(
            b,
            Statement::new(
                "SELECT session_id, key, points, sha256, pruned FROM archives \
                 WHERE verified = 1 AND pruned < 2 AND started_ms < ?1 ORDER BY session_id LIMIT 20",
                vec![Value::from(cutoff)],
            ),
        )
        .await?;
        if rows.is_empty() {
            return Ok(true);
        }
        let ex = existing(b).await?;
        for r in &rows {
            let id = col_str(r, "session_id")?;
            if col_int(r, "pruned")? == 0 {
                if !budget.take(2) {
                    return Ok(false);
                }
                let key = col_str(r, "key")?;
                let bytes = b.get(&key).await?.unwrap_or_default();
                if verify(&bytes, count(r, "points")?, &col_str(r, "sha256")?).is_err() {
                    // The object is not what was recorded: archive it again
                    // (next run) before anything is deleted.
                    b.batch(&[Statement::new(
                        "UPDATE archives SET verified = 0 WHERE session_id = ?1",
                        vec![Value::from(id.as_str())],
                    )])
                    .await?;
                    continue;
                }
                b.batch(&[Statement::new(
                    "UPDATE archives SET pruned = 1 WHERE session_id = ?1 AND pruned = 0",
                    vec![Value::from(id.as_str())],
                )])
                .await?;
            }
            if !prune_points(b, &id, &ex, cfg.prune_chunk, budget).await? {
                return Ok(false);
            }
            report.pruned += 1;
        }
    }
}

async fn prune_points<B: Backend>(
    b: &B,
    id: &str,
    ex: &Existing,
    chunk: u32,
    budget: &mut Budget,
) -> Result<bool, LifecycleError> {
    if !budget.take(1) {
        return Ok(false);
    }
    let months = parse_point_months(&query(b, point_months(id)).await?)?;
    let mut spans: Vec<Span> = months
        .iter()
        .flat_map(|m| [Span::Year(m.year()), Span::Month(*m)])
        .filter(|s| ex.contains(TableKind::Points, *s))
        .collect();
    spans.sort();
    spans.dedup();
    for s in spans {
        let t = TableKind::Points.table(s);
        loop {
            if !budget.take(1) {
                return Ok(false);
            }
            let rows = b
                .batch(&[
                    Statement::new(
                        format!(
                            "DELETE FROM {t} WHERE session_id = ?1 AND seq IN \
                             (SELECT seq FROM {t} WHERE session_id = ?1 ORDER BY seq LIMIT ?2)"
                        ),
                        vec![Value::from(id), Value::from(chunk)],
                    ),
                    Statement::new(
                        format!("SELECT count(*) AS n FROM {t} WHERE session_id = ?1"),
                        vec![Value::from(id)],
                    ),
                ])
                .await?;
            let left = rows
                .get(1)
                .and_then(|r| r.first())
                .map(|r| col_int(r, "n"))
                .transpose()?
                .unwrap_or(0);
            if left == 0 {
                break;
            }
        }
    }
    if !budget.take(1) {
        return Ok(false);
    }
    b.batch(&[
        Statement::new(
            "DELETE FROM session_point_months WHERE session_id = ?1",
            vec![Value::from(id)],
        ),
        Statement::new(
            "UPDATE archives SET pruned = 2 WHERE session_id = ?1",
            vec![Value::from(id)],
        ),
    ])
    .await?;
    Ok(true)
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
