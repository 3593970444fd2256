//! Runs the pure cores' [`Statement`]s on D1: binds their parameters and
//! hands the rows back as JSON objects keyed by column name, which is what
//! the cores parse. The only module that prepares D1 statements.

use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Env};

use crate::edge::http::internal;
use crate::error::ApiError;
use sesh_core::data::partition::{Existing, Statement, LIST_PARTITIONS};

/// The D1 database.
pub fn database(env: &Env) -> Result<D1Database, ApiError> {
    env.d1("DB").map_err(internal)
}

fn js(v: &Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        Value::Number(n) => n.as_f64().map_or(JsValue::NULL, JsValue::from_f64),
        Value::String(s) => JsValue::from_str(s),
        // Arrays and objects travel as JSON text (SQLite's json functions
        // read them from there).
        other => JsValue::from_str(&other.to_string()),
    }
}

/// Prepares and binds one statement.
pub fn prepare(db: &D1Database, st: &Statement) -> Result<D1PreparedStatement, ApiError> {
    let params: Vec<JsValue> = st.params.iter().map(js).collect();
    db.prepare(st.sql.clone()).bind(&params).map_err(internal)
}

/// Runs statements as one D1 batch (one transaction) and answers each
/// one's rows. A failure is `Unavailable` (D1 may be down for a while).
pub async fn batch(db: &D1Database, stmts: &[Statement]) -> Result<Vec<Vec<Value>>, ApiError> {
    if stmts.is_empty() {
        return Ok(Vec::new());
    }
    let prepared = stmts
        .iter()
        .map(|s| prepare(db, s))
        .collect::<Result<Vec<_>, _>>()?;
    let results = db
        .batch(prepared)
        .await
        .map_err(|e| ApiError::Unavailable(format!("D1 batch failed: {e}")))?;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        if !r.success() {
            return Err(ApiError::Unavailable(format!(
                "D1 statement failed: {}",
                r.error().unwrap_or_default()
            )));
        }
        out.push(r.results::<Value>().map_err(internal)?);
    }
    Ok(out)
}

/// Runs one statement and answers its rows.
pub async fn query(db: &D1Database, st: &Statement) -> Result<Vec<Value>, ApiError> {
    Ok(batch(db, std::slice::from_ref(st))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// The partition tables that exist now (from the `partitions` registry).
pub async fn existing(db: &D1Database) -> Result<Existing, ApiError> {
    let rows = query(db, &Statement::new(LIST_PARTITIONS, Vec::new())).await?;
    Ok(Existing::from_rows(&rows)?)
}
