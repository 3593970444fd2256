//! Live figures per point kind over the points that carry a `value`
//! (CONTRACT.md section 5, "stats"), kept in step with what was stored,
//! and their checkpoints: storage holds the figures through a mark seq,
//! written every so many points, and a wake-up counts the points after it.
//! Each kind also knows the last seq that changed it, so a flush to D1
//! carries the figures of the kinds its points changed ([`Stats::since`]).

use std::collections::{BTreeMap, BTreeSet};

use sesh_protocol::{KindStats, StoredPoint};

/// The figures of every kind; [`Stats::add`] returns what it replaced so a
/// failed write can be undone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    by_kind: BTreeMap<String, Figures>,
    // Storage's figures count the points through this seq.
    mark: u64,
    // Kinds whose figures changed since the stored ones.
    dirty: BTreeSet<String>,
    // A checkpoint out: its mark and kinds.
    saving: Option<(u64, BTreeSet<String>)>,
}

/// One kind's figures and the last seq that changed them ([`UNKNOWN`]
/// after a wake-up: some seq up to the last stored one).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    stats: KindStats,
    changed: u64,
}

/// The seq that changed a kind restored from storage: not known.
const UNKNOWN: u64 = u64::MAX;

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
    /// How many of `kinds` (the kinds of valued points) are distinct and
    /// not yet among the figures: what a batch would add to the session's
    /// kinds.
    pub fn new_kinds<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) -> usize {
        kinds
            .into_iter()
            .filter(|k| !self.by_kind.contains_key(*k))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The number of kinds with figures.
    pub fn kinds(&self) -> usize {
        self.by_kind.len()
    }

    /// Figures as restored from storage: the checkpoint (`by_kind`, which
    /// counts through `mark`) and the valued points stored after it, in
    /// order.
    pub fn restore_from(
        by_kind: BTreeMap<String, KindStats>,
        mark: u64,
        tail: Vec<(String, f64)>,
    ) -> Stats {
        let by_kind = by_kind
            .into_iter()
            .map(|(k, stats)| {
                (
                    k,
                    Figures {
                        stats,
                        changed: UNKNOWN,
                    },
                )
            })
            .collect();
        let mut s = Stats {
            by_kind,
            mark,
            ..Stats::default()
        };
        for (kind, value) in &tail {
            s.count(kind, *value, UNKNOWN);
        }
        s
    }

    // Per stored point: allocates only for a kind new to the figures or
    // to the checkpoint.
    fn count(&mut self, kind: &str, value: f64, seq: u64) {
        match self.by_kind.get_mut(kind) {
            Some(f) => {
                f.stats.add(value);
                f.changed = seq;
            }
            None => {
                let stats = KindStats::of(value);
                self.by_kind.insert(
                    kind.to_owned(),
                    Figures {
                        stats,
                        changed: seq,
                    },
                );
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
        let before = self.by_kind.get(&p.kind).map(|f| f.stats);
        self.count(&p.kind, value, p.seq);
        Some((p.kind.clone(), before))
    }

    /// Puts a kind's figures back as they were (its changed seq stays: at
    /// worst a flush writes figures that did not change).
    pub fn restore(&mut self, kind: String, before: Option<KindStats>) {
        match before {
            Some(s) => {
                if let Some(f) = self.by_kind.get_mut(&kind) {
                    f.stats = s;
                }
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
            .filter_map(|k| self.by_kind.get(k).map(|f| (k.clone(), f.stats)))
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
    pub fn all(&self) -> BTreeMap<String, KindStats> {
        self.by_kind
            .iter()
            .map(|(k, f)| (k.clone(), f.stats))
            .collect()
    }

    /// The figures of the kinds changed by a point after seq `after`, for
    /// a flush of the points `after+1 ..= to`. A kind restored from storage
    /// may have changed anywhere up to the last stored seq, so it goes with
    /// every flush (a row-only one too) until one past it went out.
    pub fn since(&mut self, after: u64, to: u64) -> Vec<(String, KindStats)> {
        let mut out = Vec::new();
        for (k, f) in &mut self.by_kind {
            if f.changed == UNKNOWN {
                f.changed = to.max(after + 1);
            }
            if f.changed > after {
                out.push((k.clone(), f.stats));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: u64, kind: &str, value: Option<f64>) -> StoredPoint {
        StoredPoint {
            seq,
            user_id: "u".into(),
            id: None,
            kind: kind.into(),
            value,
            data: None,
            ts: 0,
        }
    }

    fn kinds(v: &[(String, KindStats)]) -> Vec<&str> {
        v.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_flush_carries_the_kinds_its_points_changed_with_their_live_figures() {
        let mut s = Stats::default();
        s.add(&point(1, "a", Some(1.0)));
        s.add(&point(2, "b", Some(2.0)));
        s.add(&point(3, "c", None));
        s.add(&point(4, "a", Some(3.0)));
        assert_eq!(kinds(&s.since(0, 4)), ["a", "b"]);
        // Points 3..=4: only `a` changed; its figures are the live ones.
        let a = s.since(2, 4);
        assert_eq!(kinds(&a), ["a"]);
        assert_eq!((a[0].1.count, a[0].1.sum, a[0].1.last), (2, 4.0, 3.0));
        assert!(s.since(4, 4).is_empty(), "nothing after the last point");
    }

    #[test]
    fn after_a_wake_restored_kinds_go_out_until_a_flush_past_the_wake() {
        let stored = BTreeMap::from([("a".to_owned(), KindStats::of(1.0))]);
        let mut s = Stats::restore_from(stored, 10, vec![("b".into(), 2.0)]);
        // Seqs up to 12 are stored; the flush of 11..=12 carries both kinds
        // (either may have changed there), and so does its retry.
        assert_eq!(kinds(&s.since(10, 12)), ["a", "b"]);
        assert_eq!(kinds(&s.since(10, 12)), ["a", "b"]);
        s.add(&point(13, "b", Some(5.0)));
        // Once 11..=12 landed, only what changed after does.
        assert_eq!(kinds(&s.since(12, 13)), ["b"]);
        // A session-row-only flush right after a wake still carries them.
        let mut s = Stats::restore_from(
            BTreeMap::from([("a".to_owned(), KindStats::of(1.0))]),
            5,
            vec![],
        );
        assert_eq!(kinds(&s.since(5, 5)), ["a"]);
    }
}
