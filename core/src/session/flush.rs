//! When points go to D1: a full batch at once, the rest an interval after
//! the first pending one, failed writes retried with backoff, at most one
//! batch in flight, and a durable watermark below which everything landed.

use crate::time::Millis;

/// A contiguous range of points to write to D1, with the session row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushBatch {
    /// First seq (inclusive); `from > to` means "session row only".
    pub from: u64,
    /// Last seq (inclusive).
    pub to: u64,
    /// The session record's version this batch writes.
    pub meta_version: u64,
}

/// Exponential backoff for D1 retries: 1 s, 2 s, 4 s ... at most 60 s.
pub fn retry_backoff_ms(failures: u32) -> u64 {
    1_000u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(6))
        .min(60_000)
}

/// What is pending for D1, for [`FlushState::next_at`].
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The latest stored seq.
    pub last_seq: u64,
    /// The session record's version.
    pub meta_version: u64,
    /// Points that make a full batch.
    pub batch: u32,
    /// The interval after the first pending point.
    pub interval_ms: u64,
    /// Now.
    pub now: Millis,
}

/// Flush progress, rebuilt from storage on wake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushState {
    /// Every point up to here is in D1 (durable watermark).
    pub flushed_seq: u64,
    /// Version of the session record already in D1.
    pub flushed_meta_version: u64,
    /// A batch is being written.
    pub in_flight: Option<FlushBatch>,
    /// When the oldest unflushed point (or row change) was noted.
    pub pending_since: Option<Millis>,
    /// Consecutive failures, for backoff.
    pub failures: u32,
    /// No attempt before this after a failure.
    pub retry_at: Option<Millis>,
    /// A change that goes out at once, not an interval later.
    pub urgent: bool,
}

impl FlushState {
    /// Whether anything is not in D1 yet.
    pub fn has_pending(&self, last_seq: u64, meta_version: u64) -> bool {
        self.flushed_seq < last_seq || self.flushed_meta_version < meta_version
    }

    /// Notes a change D1 must see.
    pub fn note(&mut self, now: Millis) {
        if self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// Notes a change D1 must see at once: a new session's row, so that
    /// it is listed well within `FLUSH_INTERVAL_MS` of its creation
    /// (CONTRACT.md section 5).
    pub fn note_urgent(&mut self, now: Millis) {
        self.note(now);
        self.urgent = true;
    }

    /// When the next flush is due, if anything is pending.
    pub fn next_at(&self, p: Pending) -> Option<Millis> {
        if self.in_flight.is_some() || !self.has_pending(p.last_seq, p.meta_version) {
            return None;
        }
        if let Some(r) = self.retry_at {
            return Some(r);
        }
        let since = self.pending_since?;
        if self.urgent || p.last_seq - self.flushed_seq >= u64::from(p.batch) {
            Some(since.min(p.now))
        } else {
            Some(since + p.interval_ms as Millis)
        }
    }

    /// Starts a batch of at most `max_points`.
    pub fn start(&mut self, last_seq: u64, meta_version: u64, max_points: u64) -> FlushBatch {
        let batch = FlushBatch {
            from: self.flushed_seq + 1,
            to: last_seq.min(self.flushed_seq + max_points),
            meta_version,
        };
        self.in_flight = Some(batch);
        self.urgent = false;
        batch
    }

    /// The outcome of the batch in flight; `false` if `batch` is not it.
    pub fn done(&mut self, batch: FlushBatch, ok: bool, p: Pending) -> bool {
        if self.in_flight != Some(batch) {
            return false;
        }
        self.in_flight = None;
        if ok {
            self.flushed_seq = self.flushed_seq.max(batch.to);
            self.flushed_meta_version = self.flushed_meta_version.max(batch.meta_version);
            self.failures = 0;
            self.retry_at = None;
            // What arrived during the write waits at most one interval; a
            // full batch goes at once (next_at).
            self.pending_since = self
                .has_pending(p.last_seq, p.meta_version)
                .then_some(p.now);
        } else {
            self.failures += 1;
            self.retry_at = Some(p.now + retry_backoff_ms(self.failures) as Millis);
        }
        true
    }
}
