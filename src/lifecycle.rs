//! The Worker's side of the data lifecycle (CONTRACT.md section 9): D1 and
//! the `ARCHIVE` R2 bucket behind the cores' [`Backend`], the scheduled
//! run, and the read of an ended session's points from D1 or its archive.
//! Everything it does is decided in `core::lifecycle`, `core::archive` and
//! `core::export`.

use serde_json::Value;
use sesh_protocol::PointsPage;
use worker::{Bucket, D1Database, Env};

use crate::db;
use crate::edge::http;
use crate::error::ApiError;
use sesh_core::data::partition::Statement;
use sesh_core::lifecycle::store::{Backend, LifecycleError};
use sesh_core::lifecycle::{self, LifecycleConfig, Report};
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

impl Backend for Cloud {
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Value>>, LifecycleError> {
        db::batch(&self.d1, statements).await.map_err(|e| {
            LifecycleError::Store(e.log_detail().map_or_else(|| e.to_string(), str::to_owned))
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LifecycleError> {
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
    Ok(lifecycle::run(&cloud, now, &config(env)).await?)
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
    Ok(sesh_core::lifecycle::archive::ended_points(&cloud, session_id, after_seq, limit).await?)
}

/// The `stats` of an ended session from D1 or, once its points are
/// pruned, from its archive (its live object, which kept them, is gone).
pub async fn ended_stats(
    env: &Env,
    session_id: &str,
) -> Result<std::collections::BTreeMap<String, sesh_protocol::KindStats>, ApiError> {
    let cloud = Cloud::new(env)?;
    Ok(sesh_core::lifecycle::archive::ended_stats(&cloud, session_id).await?)
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
            "sha256": sesh_core::lifecycle::archive::sha256_hex(&bytes),
        }));
    }
    Ok(out)
}
