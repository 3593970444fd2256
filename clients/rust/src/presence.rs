//! The presence heartbeat helper: keeps the caller `online` (or `away`,
//! `busy`) with an activity while a [`Heartbeat`] handle lives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::FutureExt;
use futures::{select_biased, StreamExt};
use sesh_protocol::{Heartbeat as HeartbeatBody, HeartbeatStatus, Presence};

use crate::error::Error;
use crate::http::Client;
use crate::rt;

/// Sends `POST /v1/presence/heartbeat` every `interval` (and at once when
/// the status or activity changes) until dropped or stopped.
pub struct Heartbeat {
    state: Arc<Mutex<HeartbeatBody>>,
    nudge: mpsc::UnboundedSender<()>,
    last: Arc<Mutex<Option<Result<Presence, Error>>>>,
    _stop: oneshot::Sender<()>,
}

impl Heartbeat {
    /// Sets the status sent from now on (and sends it at once).
    pub fn set_status(&self, status: HeartbeatStatus) {
        if let Ok(mut s) = self.state.lock() {
            s.status = Some(status);
        }
        let _ = self.nudge.unbounded_send(());
    }

    /// Sets the activity sent from now on (at most 128 characters; `None`
    /// clears it) and sends it at once.
    pub fn set_activity(&self, activity: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.activity = activity;
        }
        let _ = self.nudge.unbounded_send(());
    }

    /// The answer to the latest heartbeat, if one was sent.
    pub fn last(&self) -> Option<Result<Presence, Error>> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

impl Client {
    /// Starts heartbeats every `interval` (keep it below the server's
    /// presence TTL, 60 s by default) with this status and activity; the
    /// first goes at once. Needs a tokio runtime on native.
    pub fn heartbeat_every(
        &self,
        interval: Duration,
        status: HeartbeatStatus,
        activity: Option<String>,
    ) -> Heartbeat {
        let state = Arc::new(Mutex::new(HeartbeatBody {
            status: Some(status),
            activity,
        }));
        let last = Arc::new(Mutex::new(None));
        let (nudge, mut nudges) = mpsc::unbounded();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let client = self.clone();
        let (st, la) = (state.clone(), last.clone());
        rt::spawn(async move {
            loop {
                let body = st.lock().map(|s| s.clone()).ok();
                if let Some(body) = body {
                    let answer = client.heartbeat(&body).await;
                    if let Ok(mut l) = la.lock() {
                        *l = Some(answer);
                    }
                }
                select_biased! {
                    _ = (&mut stopped).fuse() => return,
                    n = nudges.next() => if n.is_none() { return },
                    () = rt::sleep(interval).fuse() => {}
                }
            }
        });
        Heartbeat {
            state,
            nudge,
            last,
            _stop: stop,
        }
    }
}
