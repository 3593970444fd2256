//! The Worker's side of the data lifecycle (CONTRACT.md section 9): D1 and
//! the `ARCHIVE` R2 bucket as the [`Carrier`] of the lifecycle drivers'
//! requests, the scheduled run, and the read of an ended session's points
//! from D1 or its archive. Everything it does is decided by the drivers of
//! `sesh_core::lifecycle`; [`drive`] only carries their requests out.

use serde_json::Value;
use sesh_protocol::PointsPage;
use worker::{Bucket, D1Database, Env};

use crate::db;
use crate::edge::http;
use crate::error::ApiError;
use sesh_core::data::partition::Statement;
use sesh_core::lifecycle::export::Expire;
use sesh_core::lifecycle::reads::{EndedPoints, EndedStats};
use sesh_core::lifecycle::store::{Answer, Budget, Driver, Io, LifecycleError, Poll};
use sesh_core::lifecycle::{LifecycleConfig, Report, Run};
use sesh_core::time::Millis;

/// D1 and the archive bucket.
pub struct Cloud {
    d1: D1Database,
    r2: Bucket,
}

impl Cloud {
    /// The bindings `DB` and `ARCHIVE`.
    pub fn new(env: &Env) -> Result<Cloud, ApiError> {
        Ok(Cloud {
            d1: db::database(env)?,
            r2: env.bucket("ARCHIVE").map_err(http::internal)?,
        })
    }

    /// The bucket, for streaming an export.
    pub fn bucket(&self) -> &Bucket {
        &self.r2
    }
}

fn store(e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Store(e.to_string())
}

/// What carries a driver's requests out: one round trip per request.
// The Worker is single-threaded and never sends these futures elsewhere,
// so the missing `Send` bound the lint warns about is what is wanted.
#[allow(async_fn_in_trait)]
pub trait Carrier {
    /// Carries out one request; its answer.
    async fn carry(&self, io: Io) -> Result<Answer, LifecycleError>;
}

/// Runs a driver to its end: each request it emits is carried out and the
/// answer handed back (the native tests' loop, with an `await`).
pub async fn drive<C: Carrier, D: Driver>(
    c: &C,
    mut driver: D,
) -> Result<D::Output, LifecycleError> {
    loop {
        match driver.poll()? {
            Poll::Done(out) => return Ok(out),
            Poll::Io(io) => {
                let answer = c.carry(io).await?;
                driver.handle(answer);
            }
        }
    }
}

impl Cloud {
    /// Runs the statements as one D1 batch; the rows of each.
    pub async fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Value>>, LifecycleError> {
        db::batch(&self.d1, statements).await.map_err(|e| {
            LifecycleError::Store(e.log_detail().map_or_else(|| e.to_string(), str::to_owned))
        })
    }

    /// Runs one statement; its rows.
    pub async fn query(&self, st: Statement) -> Result<Vec<Value>, LifecycleError> {
        Ok(self
            .batch(std::slice::from_ref(&st))
            .await?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// The R2 object at `key`, `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LifecycleError> {
        let Some(obj) = self.r2.get(key).execute().await.map_err(store)? else {
            return Ok(None);
        };
        match obj.body() {
            Some(body) => Ok(Some(body.bytes().await.map_err(store)?)),
            None => Ok(Some(Vec::new())),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LifecycleError> {
        self.r2.put(key, bytes).execute().await.map_err(store)?;
        Ok(())
    }

    async fn delete(&self, keys: Vec<String>) -> Result<(), LifecycleError> {
        if !keys.is_empty() {
            self.r2.delete_multiple(keys).await.map_err(store)?;
        }
        Ok(())
    }
}

impl Carrier for Cloud {
    async fn carry(&self, io: Io) -> Result<Answer, LifecycleError> {
        match io {
            Io::Batch(statements) => self.batch(&statements).await.map(Answer::Rows),
            Io::Get(key) => self.get(&key).await.map(Answer::Object),
            Io::Put { key, bytes } => self.put(&key, bytes).await.map(|()| Answer::Stored),
            Io::Delete(keys) => self.delete(keys).await.map(|()| Answer::Deleted),
        }
    }
}

/// The lifecycle settings from the vars; a malformed var is logged and the
/// defaults used (the scheduled run must go on).
pub fn config(env: &Env) -> LifecycleConfig {
    LifecycleConfig::from_vars(|k| http::var(env, k)).unwrap_or_else(|e| {
        worker::console_error!("{}", serde_json::json!({"level": "error", "error": e}));
        LifecycleConfig::default()
    })
}

/// Runs the lifecycle work due at `now` (the scheduled event's time):
/// partition moves, archives, pruning. Stops early at its budget of round
/// trips (`complete: false` in the report); runs repeated at the same time
/// finish the work.
pub async fn run_lifecycle(env: &Env, now: Millis) -> Result<Report, ApiError> {
    let cloud = Cloud::new(env)?;
    #[cfg(feature = "test-faults")]
    let cloud = crate::faults::Hanging(cloud);
    let cfg = config(env);
    let mut report = drive(&cloud, Run::new(now, &cfg)).await?;
    // The exports' expiry has a budget of its own: it is small, and a
    // backlog of moves or archives must not keep files past their time.
    report.expired = drive(
        &cloud,
        Expire::new(now, cfg.export_retention_days, Budget::new(cfg.max_calls)),
    )
    .await?;
    Ok(report)
}

/// A page of an ended session's points from D1 or, once its points are
/// pruned, from its archive. `None`: D1 has no such session.
pub async fn ended_points(
    env: &Env,
    session_id: &str,
    after_seq: u64,
    limit: u64,
) -> Result<Option<PointsPage>, ApiError> {
    let cloud = Cloud::new(env)?;
    Ok(drive(&cloud, EndedPoints::new(session_id, after_seq, limit)).await?)
}

/// The `stats` of an ended session from D1 or, once its points are
/// pruned, from its archive (its live object, which kept them, is gone).
pub async fn ended_stats(
    env: &Env,
    session_id: &str,
) -> Result<std::collections::BTreeMap<String, sesh_protocol::KindStats>, ApiError> {
    let cloud = Cloud::new(env)?;
    Ok(drive(&cloud, EndedStats::new(session_id)).await?)
}

/// Test builds only (`GET /__test/r2?prefix=`): every object of the
/// archive bucket under `prefix`, by key, as `{"key","bytes","sha256"}`,
/// so integration tests can compare two runtimes' buckets.
#[cfg(feature = "test-faults")]
pub async fn test_listing(env: &Env, prefix: &str) -> Result<Vec<Value>, ApiError> {
    let cloud = Cloud::new(env)?;
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut list = cloud.r2.list().prefix(prefix);
        if let Some(c) = cursor.take() {
            list = list.cursor(c);
        }
        let page = list.execute().await.map_err(http::internal)?;
        keys.extend(page.objects().iter().map(worker::Object::key));
        match page.cursor().filter(|_| page.truncated()) {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let bytes = cloud.get(&key).await?.unwrap_or_default();
        out.push(serde_json::json!({
            "key": key,
            "bytes": bytes.len(),
            "sha256": sesh_core::lifecycle::format::sha256_hex(&bytes),
        }));
    }
    Ok(out)
}
