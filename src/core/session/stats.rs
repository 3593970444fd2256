//! Live figures per point kind over the points that carry a `value`
//! (CONTRACT.md section 5, "stats"), kept in step with what was stored,
//! and their checkpoints: storage holds the figures through a mark seq,
//! written every so many points, and a wake-up counts the points after it.

use std::collections::{BTreeMap, BTreeSet};

use sesh_protocol::{KindStats, StoredPoint};

/// The figures of every kind; [`Stats::add`] returns what it replaced so a
/// failed write can be undone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    by_kind: BTreeMap<String, KindStats>,
    // Storage's figures count the points through this seq.
    mark: u64,
    // Kinds whose figures changed since the stored ones.
    dirty: BTreeSet<String>,
    // A checkpoint out: its mark and kinds.
    saving: Option<(u64, BTreeSet<String>)>,
}

/// A checkpoint to store in one transaction: the figures of the kinds
/// that changed, and the seq they now count through.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Every stored point up to this seq is counted.
    pub through_seq: u64,
    /// The changed kinds' figures.
    pub kinds: Vec<(String, KindStats)>,
}

impl Stats {
    /// Figures as restored from storage: the checkpoint (`by_kind`, which
    /// counts through `mark`) and the valued points stored after it, in
    /// order.
    pub fn restore_from(
        by_kind: BTreeMap<String, KindStats>,
        mark: u64,
        tail: Vec<(String, f64)>,
    ) -> Stats {
        let mut s = Stats {
            by_kind,
            mark,
            ..Stats::default()
        };
        for (kind, value) in &tail {
            s.count(kind, *value);
        }
        s
    }

    // Per stored point: allocates only for a kind new to the figures or
    // to the checkpoint.
    fn count(&mut self, kind: &str, value: f64) {
        match self.by_kind.get_mut(kind) {
            Some(s) => s.add(value),
            None => {
                self.by_kind.insert(kind.to_owned(), KindStats::of(value));
            }
        }
        if !self.dirty.contains(kind) {
            self.dirty.insert(kind.to_owned());
        }
    }

    /// Counts a numbered point (points come in seq order, so the latest is
    /// `last`). Returns the kind's figures before, for an undo.
    pub fn add(&mut self, p: &StoredPoint) -> Option<(String, Option<KindStats>)> {
        let value = p.value?;
        let before = self.by_kind.get(&p.kind).copied();
        self.count(&p.kind, value);
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

    /// A checkpoint through `last_seq` once `every` points were stored
    /// after the mark and none is out. Only between writes: the figures
    /// must count exactly the stored points.
    pub fn checkpoint(&mut self, last_seq: u64, every: u64) -> Option<Checkpoint> {
        if self.saving.is_some() || last_seq < self.mark.saturating_add(every) {
            return None;
        }
        let kinds = std::mem::take(&mut self.dirty);
        let figures = kinds
            .iter()
            .filter_map(|k| self.by_kind.get(k).map(|s| (k.clone(), *s)))
            .collect();
        self.saving = Some((last_seq, kinds));
        Some(Checkpoint {
            through_seq: last_seq,
            kinds: figures,
        })
    }

    /// The outcome of the checkpoint out: stored, the mark moves; not
    /// stored, its kinds are still to be written.
    pub fn saved(&mut self, ok: bool) {
        if let Some((through, kinds)) = self.saving.take() {
            if ok {
                self.mark = through;
            } else {
                self.dirty.extend(kinds);
            }
        }
    }

    /// Every kind's figures.
    pub fn all(&self) -> &BTreeMap<String, KindStats> {
        &self.by_kind
    }
}
