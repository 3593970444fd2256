//! Typed calls to the Durable Objects: one enum per object, each with its
//! wire form (mini-redis's `Command` with `from_frame` / `into_frame` is the
//! model). The gateway turns a route into a call, an object turns the
//! request back into the same call and matches on it; neither side spells an
//! operation name or a query by hand.
//!
//! The wire form is plain data ([`Wire`]): an operation name, query pairs
//! (form-encoded, so any value survives the trip) and an optional body. It is
//! built and parsed natively here; `crate::http` turns it into a runtime
//! request and back. The caller travels beside it, in headers.

use sesh_protocol::Resource;

use thiserror::Error;

/// A call between the gateway and an object that does not parse: a bug on
/// one side, never the client's fault (the edge answers 500).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct CallError(pub String);

/// An internal request as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wire {
    /// The operation (`/points`, `/check`, ...).
    pub op: String,
    /// Query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The body, when the call carries one (a client's JSON, passed on as
    /// it came so it is parsed once, where it is used).
    pub body: Option<Vec<u8>>,
}

impl Wire {
    fn new(op: &str) -> Wire {
        Wire {
            op: op.to_owned(),
            ..Wire::default()
        }
    }

    fn with(mut self, key: &str, value: impl ToString) -> Wire {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    fn with_body(mut self, body: Vec<u8>) -> Wire {
        self.body = Some(body);
        self
    }

    /// The path and query of the internal URL (`/op?k=v`), form-encoded.
    pub fn path(&self) -> String {
        if self.query.is_empty() {
            return self.op.clone();
        }
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.query.iter())
            .finish();
        format!("{}?{q}", self.op)
    }

    /// Parses the path and query of an internal URL (the inverse of
    /// [`Wire::path`]); the body is added by the caller.
    pub fn parse(path: &str, query: Option<&str>) -> Wire {
        Wire {
            op: path.to_owned(),
            query: query
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            body: None,
        }
    }

    fn get(&self, key: &str) -> Result<&str, CallError> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| bad_wire(&self.op, key))
    }

    fn num(&self, key: &str) -> Result<u64, CallError> {
        self.get(key)?.parse().map_err(|_| bad_wire(&self.op, key))
    }

    fn take_body(&mut self) -> Result<Vec<u8>, CallError> {
        self.body.take().ok_or_else(|| bad_wire(&self.op, "body"))
    }
}

// Internal requests are built by this module only, so a malformed one is a
// bug: `Internal`, logged, never shown.
fn bad_wire(op: &str, what: &str) -> CallError {
    CallError(format!("internal call {op}: missing or bad {what}"))
}

fn resource(s: &str) -> Result<Resource, CallError> {
    match s {
        "api" => Ok(Resource::Api),
        "sessions" => Ok(Resource::Sessions),
        "points" => Ok(Resource::Points),
        other => Err(CallError(format!("bad resource {other:?}"))),
    }
}

/// What an `ActiveSessionDO` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCall {
    /// Create the session `session_id` from a validated `CreateSession` body.
    Create {
        /// The new session's id (the object cannot read its own name).
        session_id: String,
        /// The client's body, already validated by the gateway.
        body: Vec<u8>,
    },
    /// The session object with its live participants.
    Get,
    /// A WebSocket upgrade (the upgrade headers travel with the request).
    Socket,
    /// Record a batch of points (the client's `PointsBatch` body).
    Append {
        /// The client's body.
        body: Vec<u8>,
    },
    /// Stored points with `seq > after_seq`, at most `limit`.
    Read {
        /// Exclusive lower bound.
        after_seq: u64,
        /// Page size, already bounded by the gateway.
        limit: u64,
    },
    /// End the session.
    End,
    /// Whether connection `conn_id` is still live (asked by presence).
    HasConn {
        /// The connection asked about.
        conn_id: String,
    },
}

impl SessionCall {
    /// The wire form.
    pub fn into_wire(self) -> Wire {
        match self {
            Self::Create { session_id, body } => Wire::new("/create")
                .with("sessionId", session_id)
                .with_body(body),
            Self::Get => Wire::new("/get"),
            Self::Socket => Wire::new("/ws"),
            Self::Append { body } => Wire::new("/append").with_body(body),
            Self::Read { after_seq, limit } => Wire::new("/read")
                .with("afterSeq", after_seq)
                .with("limit", limit),
            Self::End => Wire::new("/end"),
            Self::HasConn { conn_id } => Wire::new("/has-conn").with("connId", conn_id),
        }
    }

    /// The call a wire form carries.
    pub fn from_wire(mut w: Wire) -> Result<SessionCall, CallError> {
        Ok(match w.op.as_str() {
            "/create" => Self::Create {
                session_id: w.get("sessionId")?.to_owned(),
                body: w.take_body()?,
            },
            "/get" => Self::Get,
            "/ws" => Self::Socket,
            "/append" => Self::Append {
                body: w.take_body()?,
            },
            "/read" => Self::Read {
                after_seq: w.num("afterSeq")?,
                limit: w.num("limit")?,
            },
            "/end" => Self::End,
            "/has-conn" => Self::HasConn {
                conn_id: w.get("connId")?.to_owned(),
            },
            other => return Err(bad_wire(other, "operation")),
        })
    }
}

/// What a `PresenceDO` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceCall {
    /// The presence of `user_id` (the object's own user).
    Get {
        /// The user, for the answer (an object never written has no name).
        user_id: String,
    },
    /// The caller's heartbeat (the client's `Heartbeat` body).
    Heartbeat {
        /// The client's body.
        body: Vec<u8>,
    },
    /// A session tells of a socket that came or went.
    Conn {
        /// The user whose socket it is.
        user_id: String,
        /// The connection.
        conn_id: String,
        /// The session holding it.
        session_id: String,
        /// Joined (`true`) or gone.
        online: bool,
    },
    /// To a read shard: the newest stored state of one of its users.
    Publish {
        /// The user.
        user_id: String,
        /// The user's presence state as stored (JSON).
        state: Vec<u8>,
    },
    /// To a read shard: the presence of these users, in this order.
    Batch {
        /// User ids, already validated.
        users: Vec<String>,
    },
}

impl PresenceCall {
    /// The wire form.
    pub fn into_wire(self) -> Wire {
        match self {
            Self::Get { user_id } => Wire::new("/get").with("userId", user_id),
            Self::Heartbeat { body } => Wire::new("/heartbeat").with_body(body),
            Self::Conn {
                user_id,
                conn_id,
                session_id,
                online,
            } => Wire::new("/conn")
                .with("userId", user_id)
                .with("connId", conn_id)
                .with("sessionId", session_id)
                .with("online", u8::from(online)),
            Self::Publish { user_id, state } => Wire::new("/publish")
                .with("userId", user_id)
                .with_body(state),
            // Ids never contain a comma (the id grammar), and a body keeps
            // 100 ids out of the URL.
            Self::Batch { users } => Wire::new("/batch").with_body(users.join(",").into_bytes()),
        }
    }

    /// The call a wire form carries.
    pub fn from_wire(mut w: Wire) -> Result<PresenceCall, CallError> {
        Ok(match w.op.as_str() {
            "/get" => Self::Get {
                user_id: w.get("userId")?.to_owned(),
            },
            "/heartbeat" => Self::Heartbeat {
                body: w.take_body()?,
            },
            "/conn" => Self::Conn {
                user_id: w.get("userId")?.to_owned(),
                conn_id: w.get("connId")?.to_owned(),
                session_id: w.get("sessionId")?.to_owned(),
                online: w.num("online")? == 1,
            },
            "/publish" => Self::Publish {
                user_id: w.get("userId")?.to_owned(),
                state: w.take_body()?,
            },
            "/batch" => {
                let body = w.take_body()?;
                let text = String::from_utf8(body).map_err(|_| bad_wire("/batch", "body"))?;
                Self::Batch {
                    users: text.split(',').map(str::to_owned).collect(),
                }
            }
            other => return Err(bad_wire(other, "operation")),
        })
    }
}

/// What a `QuotaDO` is asked to do. Every variant travels in the query: the
/// charge runs on every request, and an object that reads no body is
/// cheaper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaCall {
    /// One `api` unit for a request; the answer is headers only.
    Charge {
        /// The caller's plan.
        plan: String,
    },
    /// The subject's usage of every resource.
    Overview {
        /// The subject's plan.
        plan: String,
    },
    /// Take `cost` units of `resource` if they are all there.
    Check {
        /// What to take.
        resource: Resource,
        /// How many units.
        cost: u64,
        /// The subject's plan.
        plan: String,
    },
    /// Give `cost` units of `resource` back (under the last plan seen).
    Refund {
        /// What to give back.
        resource: Resource,
        /// How many units.
        cost: u64,
    },
    /// A session reserves up to `want` points units of its owner.
    Reserve {
        /// The owner's plan.
        plan: String,
        /// Units wanted.
        want: u64,
    },
    /// A session settles units it reserved: `used` recorded points,
    /// `returned` go back to the UTC day they came from.
    Settle {
        /// The owner's plan.
        plan: String,
        /// The UTC day of the reservation (ms at its start).
        day: i64,
        /// Units that recorded points.
        used: u64,
        /// Units given back.
        returned: u64,
    },
    /// The plan the subject was last seen under (`free` if never).
    CurrentPlan,
}

impl QuotaCall {
    /// The wire form.
    pub fn into_wire(self) -> Wire {
        match self {
            Self::Charge { plan } => Wire::new("/charge").with("plan", plan),
            Self::Overview { plan } => Wire::new("/overview").with("plan", plan),
            Self::Check {
                resource,
                cost,
                plan,
            } => Wire::new("/check")
                .with("resource", resource.as_str())
                .with("cost", cost)
                .with("plan", plan),
            Self::Refund { resource, cost } => Wire::new("/refund")
                .with("resource", resource.as_str())
                .with("cost", cost),
            Self::Reserve { plan, want } => {
                Wire::new("/reserve").with("plan", plan).with("want", want)
            }
            Self::Settle {
                plan,
                day,
                used,
                returned,
            } => Wire::new("/settle")
                .with("plan", plan)
                .with("day", day)
                .with("used", used)
                .with("returned", returned),
            Self::CurrentPlan => Wire::new("/current-plan"),
        }
    }

    /// The call a wire form carries.
    pub fn from_wire(w: Wire) -> Result<QuotaCall, CallError> {
        let plan = || w.get("plan").map(str::to_owned);
        Ok(match w.op.as_str() {
            "/charge" => Self::Charge { plan: plan()? },
            "/overview" => Self::Overview { plan: plan()? },
            "/check" => Self::Check {
                resource: resource(w.get("resource")?)?,
                cost: w.num("cost")?,
                plan: plan()?,
            },
            "/refund" => Self::Refund {
                resource: resource(w.get("resource")?)?,
                cost: w.num("cost")?,
            },
            "/reserve" => Self::Reserve {
                plan: plan()?,
                want: w.num("want")?,
            },
            "/settle" => Self::Settle {
                plan: plan()?,
                day: w
                    .get("day")?
                    .parse()
                    .map_err(|_| bad_wire("/settle", "day"))?,
                used: w.num("used")?,
                returned: w.num("returned")?,
            },
            "/current-plan" => Self::CurrentPlan,
            other => return Err(bad_wire(other, "operation")),
        })
    }
}

/// What an `ExportDO` (one per export id) is asked to do, always for the
/// export's user (checked against the export's row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportCall {
    /// Create the export and start its steps.
    Start {
        /// The export id (the object cannot read its own name).
        export_id: String,
        /// Whose data.
        user_id: String,
    },
    /// The export's status.
    Status {
        /// The export id.
        export_id: String,
        /// The user in the path.
        user_id: String,
    },
    /// The file, once done.
    Download {
        /// The export id.
        export_id: String,
        /// The user in the path.
        user_id: String,
    },
}

impl ExportCall {
    /// The wire form.
    pub fn into_wire(self) -> Wire {
        let (op, id, user) = match self {
            Self::Start { export_id, user_id } => ("/start", export_id, user_id),
            Self::Status { export_id, user_id } => ("/status", export_id, user_id),
            Self::Download { export_id, user_id } => ("/download", export_id, user_id),
        };
        Wire::new(op).with("id", id).with("user", user)
    }

    /// The call a wire form carries.
    pub fn from_wire(w: Wire) -> Result<ExportCall, CallError> {
        let export_id = w.get("id")?.to_owned();
        let user_id = w.get("user")?.to_owned();
        Ok(match w.op.as_str() {
            "/start" => Self::Start { export_id, user_id },
            "/status" => Self::Status { export_id, user_id },
            "/download" => Self::Download { export_id, user_id },
            other => return Err(bad_wire(other, "operation")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The trip through a URL, as the runtime makes it.
    fn through_url(w: Wire) -> Wire {
        let body = w.body.clone();
        let path = w.path();
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        let mut back = Wire::parse(p, q);
        back.body = body;
        back
    }

    #[test]
    fn session_calls_round_trip() {
        let calls = vec![
            SessionCall::Create {
                session_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
                body: b"{}".to_vec(),
            },
            SessionCall::Get,
            SessionCall::Socket,
            SessionCall::Append {
                body: br#"{"points":[]}"#.to_vec(),
            },
            SessionCall::Read {
                after_seq: u64::MAX,
                limit: 1000,
            },
            SessionCall::End,
            SessionCall::HasConn {
                conn_id: "a&b=c d%".into(),
            },
        ];
        for c in calls {
            assert_eq!(
                SessionCall::from_wire(through_url(c.clone().into_wire())),
                Ok(c)
            );
        }
    }

    #[test]
    fn presence_calls_round_trip_with_any_user_id() {
        let calls = vec![
            PresenceCall::Get {
                user_id: "ann@example.com".into(),
            },
            PresenceCall::Get {
                user_id: "a+b&c=d".into(),
            },
            PresenceCall::Heartbeat {
                body: br#"{"status":"away"}"#.to_vec(),
            },
            PresenceCall::Publish {
                user_id: "u".into(),
                state: b"{}".to_vec(),
            },
            PresenceCall::Batch {
                users: vec!["a".into(), "b@c".into()],
            },
            PresenceCall::Conn {
                user_id: "u:1".into(),
                conn_id: "c".into(),
                session_id: "s".into(),
                online: false,
            },
        ];
        for c in calls {
            assert_eq!(
                PresenceCall::from_wire(through_url(c.clone().into_wire())),
                Ok(c)
            );
        }
    }

    #[test]
    fn quota_calls_round_trip() {
        let calls = vec![
            QuotaCall::Charge { plan: "pro".into() },
            QuotaCall::Overview {
                plan: "my plan&x=1".into(),
            },
            QuotaCall::Check {
                resource: Resource::Points,
                cost: 7,
                plan: "free".into(),
            },
            QuotaCall::Refund {
                resource: Resource::Sessions,
                cost: 1,
            },
            QuotaCall::Reserve {
                plan: "pro".into(),
                want: 3200,
            },
            QuotaCall::Settle {
                plan: "pro".into(),
                day: 1_764_460_800_000,
                used: 3,
                returned: 10,
            },
            QuotaCall::CurrentPlan,
        ];
        for c in calls {
            assert_eq!(
                QuotaCall::from_wire(through_url(c.clone().into_wire())),
                Ok(c)
            );
        }
    }

    #[test]
    fn values_are_encoded_not_pasted() {
        let w = QuotaCall::Overview {
            plan: "a&resource=api".into(),
        }
        .into_wire();
        assert_eq!(w.path(), "/overview?plan=a%26resource%3Dapi");
    }

    #[test]
    fn malformed_calls_are_internal_errors() {
        for (p, q) in [
            ("/nope", None),
            ("/read", Some("afterSeq=x&limit=1")),
            ("/has-conn", None),
        ] {
            assert!(matches!(
                SessionCall::from_wire(Wire::parse(p, q)),
                Err(CallError(_))
            ));
        }
        assert!(matches!(
            QuotaCall::from_wire(Wire::parse(
                "/check",
                Some("resource=disk&cost=1&plan=free")
            )),
            Err(CallError(_))
        ));
        assert!(matches!(
            SessionCall::from_wire(Wire::parse("/append", None)),
            Err(CallError(_))
        ));
    }

    #[test]
    fn export_calls_round_trip() {
        for call in [
            ExportCall::Start {
                export_id: "e".into(),
                user_id: "u@x".into(),
            },
            ExportCall::Status {
                export_id: "e".into(),
                user_id: "u".into(),
            },
            ExportCall::Download {
                export_id: "e".into(),
                user_id: "a b".into(),
            },
        ] {
            let w = call.clone().into_wire();
            let path = w.path();
            let (p, q) = path.split_once('?').unwrap();
            assert_eq!(
                ExportCall::from_wire(Wire::parse(p, Some(q))).unwrap(),
                call
            );
        }
    }
}
