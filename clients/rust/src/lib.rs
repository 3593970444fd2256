//! A client of the Sesh API for native programs (tokio) and the browser
//! (wasm32), on the wire types of `sesh-protocol`.
//!
//! - [`Client`]: every HTTP route with its typed answer, one [`Error`]
//!   type, and pagers that follow cursors ([`SessionPager`]) and `afterSeq`
//!   ([`PointsPager`]).
//! - [`Client::join`]: a [`Live`] session that sends points (resolved on
//!   their ack) and yields [`Event`]s; it reconnects by itself with
//!   exponential backoff and full jitter, asks the token provider for a
//!   fresh token on each connect, resumes from the last `seq` it saw and
//!   resends unacked points with their ids, so every point is stored once
//!   and every other participant's point arrives once, in `seq` order.
//! - [`Client::heartbeat_every`]: a presence [`Heartbeat`].
//!
//! The reconnect, resume and resend logic is the pure [`machine::Machine`];
//! the rest is transport.

#![warn(missing_docs)]

pub mod error;
pub mod http;
pub mod live;
pub mod machine;
pub mod presence;
mod rt;

pub use error::Error;
pub use http::{Client, ClientBuilder, Export, ListQuery, MetricsQuery, PointsPager, SessionPager};
pub use live::{Ack, Live, LiveSender};
pub use machine::{Backoff, Event, LiveConfig};
pub use presence::Heartbeat;
pub use sesh_protocol as protocol;
