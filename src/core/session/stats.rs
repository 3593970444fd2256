//! Live figures per point kind over the points that carry a `value`
//! (CONTRACT.md section 5, "stats"), kept in step with what was stored.

use std::collections::BTreeMap;

use sesh_protocol::{KindStats, StoredPoint};

/// The figures of every kind; [`Stats::add`] returns what it replaced so a
/// failed write can be undone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    by_kind: BTreeMap<String, KindStats>,
}

impl Stats {
    /// Figures as restored from storage.
    pub fn from_map(by_kind: BTreeMap<String, KindStats>) -> Stats {
        Stats { by_kind }
    }

    /// Counts a numbered point (points come in seq order, so the latest is
    /// `last`). Returns the kind's figures before, for an undo.
    pub fn add(&mut self, p: &StoredPoint) -> Option<(String, Option<KindStats>)> {
        let value = p.value?;
        let before = self.by_kind.get(&p.kind).copied();
        match self.by_kind.get_mut(&p.kind) {
            Some(s) => s.add(value),
            None => {
                self.by_kind.insert(p.kind.clone(), KindStats::of(value));
            }
        }
        Some((p.kind.clone(), before))
    }

    /// Puts a kind's figures back as they were.
    pub fn restore(&mut self, kind: String, before: Option<KindStats>) {
        match before {
            Some(s) => {
                self.by_kind.insert(kind, s);
            }
            None => {
                self.by_kind.remove(&kind);
            }
        }
    }

    /// Every kind's figures.
    pub fn all(&self) -> &BTreeMap<String, KindStats> {
        &self.by_kind
    }
}
