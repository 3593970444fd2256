//! The session object's sockets: accepting one (hibernatable, with its
//! attachment), finding them again after hibernation, telling a socket's
//! connection id cheaply on every frame, and the sends the core decides.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{WebSocket, WebSocketPair};

use super::{log_error, ActiveSessionDO};
use crate::edge::http::internal;
use crate::error::ApiError;
use crate::time::Millis;
use sesh_core::session::{ConnId, RestoredConn};

/// What a socket carries across hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    conn_id: ConnId,
    user_id: String,
    joined_at: Millis,
    // The connection's live state, so that it survives hibernation.
    #[serde(default)]
    state: Option<Map<String, Value>>,
}

fn attachment_conn(ws: &WebSocket) -> Option<ConnId> {
    ws.deserialize_attachment::<Attachment>()
        .ok()
        .flatten()
        .map(|a| a.conn_id)
}

impl ActiveSessionDO {
    /// The sockets that survived hibernation, as the core's restored
    /// connections (with their live states). A socket whose attachment is
    /// lost is closed.
    pub(super) fn restore_sockets(&self) -> Vec<RestoredConn> {
        let mut sockets = HashMap::new();
        let mut conns = Vec::new();
        for ws in self.state.get_websockets() {
            match ws.deserialize_attachment::<Attachment>() {
                Ok(Some(a)) => {
                    conns.push((a.conn_id.clone(), a.user_id, a.joined_at, a.state));
                    sockets.insert(a.conn_id, ws);
                }
                _ => {
                    let _ = ws.close(Some(1011), Some("lost connection state"));
                }
            }
        }
        *self.sockets.borrow_mut() = sockets;
        conns
    }

    /// Accepts a new hibernatable socket for `user` as connection `conn`;
    /// returns the client end.
    pub(super) fn accept(
        &self,
        conn: &str,
        user: &str,
        now: Millis,
    ) -> Result<WebSocket, ApiError> {
        let pair = WebSocketPair::new().map_err(internal)?;
        self.state.accept_web_socket(&pair.server);
        pair.server
            .serialize_attachment(Attachment {
                conn_id: conn.to_owned(),
                user_id: user.to_owned(),
                joined_at: now,
                state: None,
            })
            .map_err(internal)?;
        let key: &js_sys::Object = pair.server.as_ref().as_ref();
        self.conn_ids.set(key, &JsValue::from_str(conn));
        self.sockets
            .borrow_mut()
            .insert(conn.to_owned(), pair.server);
        Ok(pair.client)
    }

    /// The connection id of a socket. Read from the attachment once per
    /// socket and object lifetime, then from a weak map keyed by the socket
    /// (the attachment is a structured clone: costly on every frame).
    pub(super) fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        let key: &js_sys::Object = ws.as_ref().as_ref();
        if let Some(id) = self.conn_ids.get(key).as_string() {
            return Some(id);
        }
        let id = attachment_conn(ws)?;
        self.conn_ids.set(key, &JsValue::from_str(&id));
        Some(id)
    }

    /// Keeps connection `conn`'s live state in its socket's attachment.
    pub(super) fn save_state(&self, conn: &str, state: Map<String, Value>) {
        if let Some(ws) = self.sockets.borrow().get(conn) {
            let attachment = ws.deserialize_attachment::<Attachment>().ok().flatten();
            if let Some(mut a) = attachment {
                a.state = Some(state);
                if let Err(e) = ws.serialize_attachment(a) {
                    log_error(&internal(e));
                }
            }
        }
    }

    /// Sends a frame to one connection; a socket that closed meanwhile is
    /// skipped.
    pub(super) fn send_to(&self, to: &str, text: &str) {
        if let Some(ws) = self.sockets.borrow().get(to) {
            let _ = ws.send_with_str(text);
        }
    }

    /// Sends a frame to every connection but `except`.
    pub(super) fn broadcast(&self, except: Option<&str>, text: &str) {
        // One JS string for every recipient, not one each.
        let js = JsValue::from_str(text);
        for (id, ws) in self.sockets.borrow().iter() {
            if except != Some(id.as_str()) {
                self.send_js(ws, &js);
            }
        }
    }

    /// Closes a connection's socket (it has already left the core).
    pub(super) fn close(&self, conn: &str, code: u16, reason: &str) {
        if let Some(ws) = self.sockets.borrow_mut().remove(conn) {
            let _ = ws.close(Some(code), Some(reason));
        }
    }

    /// Replays one page to `conn`: stored points after `after` through
    /// `through`, then `then`.
    pub(super) fn replay(&self, conn: &str, after: u64, through: u64, then: &str) {
        let sockets = self.sockets.borrow();
        let Some(ws) = sockets.get(conn) else {
            return;
        };
        let sent = self.replay_frames(after, through, |frame| {
            let _ = ws.send_with_str(frame);
        });
        if let Err(e) = sent {
            log_error(&e);
            return;
        }
        let _ = ws.send_with_str(then);
    }

    /// Sends an already converted JS string (`WebSocket.prototype.send`,
    /// looked up once). A socket that closed meanwhile is skipped.
    fn send_js(&self, ws: &WebSocket, text: &JsValue) {
        let target: &JsValue = ws.as_ref().as_ref();
        let mut cached = self.send_fn.borrow_mut();
        if cached.is_none() {
            *cached = js_sys::Reflect::get(target, &JsValue::from_str("send"))
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        }
        if let Some(send) = cached.as_ref() {
            let _ = send.call1(target, text);
        }
    }
}
