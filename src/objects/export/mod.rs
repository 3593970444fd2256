//! `ExportDO`: one object per user export. Carries out
//! `sesh_core::lifecycle::export`: it creates the export's row, runs one
//! step per alarm until the file is done (the alarm survives restarts of
//! the runtime, the progress is in D1), and answers the status and the
//! download (the parts streamed in order). When to step again, retry or
//! give up is the core's [`after_step`]; the object keeps only the count of
//! failed steps it is handed back.

use futures_util::StreamExt;
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::edge::http::{self, internal};
use crate::error::ApiError;
use crate::lifecycle::{config, drive, Cloud};
use crate::time::now_ms;
use sesh_core::calls::ExportCall;
use sesh_core::lifecycle::export::{
    self, after_step, part_key, AfterStep, ExportRow, ExportStep, Status,
};

// Storage keys: the export id, and consecutive failed steps.
const K_ID: &str = "id";
const K_FAILURES: &str = "failures";

/// One user export (CONTRACT.md section 9).
#[durable_object]
pub struct ExportDO {
    state: State,
    env: Env,
}

impl DurableObject for ExportDO {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(http::respond(self.handle(req).await))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.on_alarm().await {
            http::log_error("ExportDO", &e);
        }
        Response::ok("")
    }
}

impl ExportDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let call: ExportCall = http::read_call(&mut req).await?;
        let cloud = Cloud::new(&self.env)?;
        match call {
            ExportCall::Start { export_id, user_id } => {
                let now = now_ms();
                let answers = cloud
                    .batch(&export::start(&export_id, &user_id, now))
                    .await?;
                let row = ExportRow::from_rows(answers.get(1).map_or(&[], Vec::as_slice))?
                    .ok_or_else(|| ApiError::Internal("the started export is not in D1".into()))?;
                // Only the export answered is stepped; when it is another
                // one of the user's, that one's own object steps it.
                if row.id == export_id {
                    self.state
                        .storage()
                        .put(K_ID, &export_id)
                        .await
                        .map_err(internal)?;
                    http::set_alarm(&self.state, now).await?;
                }
                http::json(202, &row.status())
            }
            ExportCall::Status { export_id, user_id } => {
                let row = self.row(&cloud, &export_id, &user_id).await?;
                http::json(200, &row.status())
            }
            ExportCall::Download { export_id, user_id } => {
                let row = self.row(&cloud, &export_id, &user_id).await?;
                if row.status == Status::Expired {
                    return Err(ApiError::NotFound(format!(
                        "export {export_id} expired; its file is deleted"
                    )));
                }
                if row.status != Status::Done {
                    return Err(ApiError::ExportNotReady(format!(
                        "export {export_id} is {}; download it once its status is done",
                        row.status.as_str()
                    )));
                }
                download(cloud, &row)
            }
        }
    }

    // The export's row, which must belong to `user` (else: not found).
    async fn row(&self, cloud: &Cloud, id: &str, user: &str) -> Result<ExportRow, ApiError> {
        ExportRow::from_rows(&cloud.query(export::load(id)).await?)?
            .filter(|r| r.user_id == user)
            .ok_or_else(|| ApiError::NotFound("no such export".into()))
    }

    async fn on_alarm(&self) -> Result<(), ApiError> {
        let storage = self.state.storage();
        let Some(id) = storage.get::<String>(K_ID).await.map_err(internal)? else {
            return Ok(());
        };
        let cloud = Cloud::new(&self.env)?;
        let step_points = config(&self.env).export_step_points;
        let outcome = drive(&cloud, ExportStep::new(&id, now_ms(), step_points)).await;
        let failures = storage
            .get::<u32>(K_FAILURES)
            .await
            .map_err(internal)?
            .unwrap_or(0);
        match after_step(&id, &outcome, failures, now_ms()) {
            AfterStep::Next { at } => {
                storage.put(K_FAILURES, 0u32).await.map_err(internal)?;
                http::set_alarm(&self.state, at).await?;
            }
            AfterStep::Stop => {}
            AfterStep::Retry { failures, at } => {
                storage.put(K_FAILURES, failures).await.map_err(internal)?;
                http::set_alarm(&self.state, at).await?;
            }
            AfterStep::GiveUp { failures, write } => {
                storage.put(K_FAILURES, failures).await.map_err(internal)?;
                cloud.query(write).await?;
            }
        }
        outcome.map(drop).map_err(ApiError::from)
    }
}

// The file: its parts in order, one R2 read in flight at a time.
fn download(cloud: Cloud, row: &ExportRow) -> Result<Response, ApiError> {
    let bucket = cloud.bucket().clone();
    let id = row.id.clone();
    let parts = futures_util::stream::iter(0..row.parts).then(move |n| {
        let bucket = bucket.clone();
        let key = part_key(&id, n);
        async move {
            let obj = bucket
                .get(key.clone())
                .execute()
                .await?
                .ok_or_else(|| worker::Error::RustError(format!("{key} is missing")))?;
            match obj.body() {
                Some(b) => b.bytes().await,
                None => Ok(Vec::new()),
            }
        }
    });
    let headers = worker::Headers::new();
    let _ = headers.set("content-type", "application/gzip");
    let _ = headers.set(
        "content-disposition",
        &format!("attachment; filename=\"sesh-export-{}.ndjson.gz\"", row.id),
    );
    if let Some(b) = row.bytes {
        let _ = headers.set("content-length", &b.to_string());
    }
    if let Some(s) = &row.sha256 {
        let _ = headers.set("x-checksum-sha256", s);
    }
    Ok(Response::from_stream(parts)
        .map_err(internal)?
        .with_headers(headers))
}
