use std::collections::BTreeMap;

use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::data::history::{write_points, PartitionWrite};
use crate::data::partition::testdb::{self, Rng};
use crate::data::partition::{days_from_civil, ensure_points, LIST_PARTITIONS};

fn ms(y: i64, m: u32, d: u32) -> Millis {
    days_from_civil(y, m, d) * DAY_MS
}

#[test]
fn buckets_start_on_utc_boundaries() {
    let t = ms(2026, 1, 1) + 13 * HOUR_MS + 5 * 60_000 + 7;
    assert_eq!(hour_start(t), ms(2026, 1, 1) + 13 * HOUR_MS);
    assert_eq!(day_start(t), ms(2026, 1, 1));
    assert_eq!(month_start(t), ms(2026, 1, 1));
    // 2026-01-01 is a Thursday: its ISO week began on Monday 2025-12-29.
    assert_eq!(week_start(t), ms(2025, 12, 29));
    assert_eq!(week_start(ms(2025, 12, 29)), ms(2025, 12, 29));
    assert_eq!(week_start(ms(2025, 12, 29) - 1), ms(2025, 12, 22));
    // 2021-01-03 is a Sunday, the last day of ISO week 53 of 2020.
    assert_eq!(week_start(ms(2021, 1, 3) + DAY_MS - 1), ms(2020, 12, 28));
    assert_eq!(week_start(ms(2021, 1, 4)), ms(2021, 1, 4));
    assert_eq!(week_start(0), -3 * DAY_MS);
    // Leap years and month lengths.
    let leap = ms(2024, 2, 29) + DAY_MS - 1;
    assert_eq!(day_start(leap), ms(2024, 2, 29));
    assert_eq!(month_start(leap), ms(2024, 2, 1));
    assert_eq!(month_start(leap + 1), ms(2024, 3, 1));
    assert_eq!(month_start(ms(2100, 3, 1) - 1), ms(2100, 2, 1));
    assert_eq!(ms(2100, 3, 1) - ms(2100, 2, 1), 28 * DAY_MS);
    assert_eq!(month_start(ms(2025, 5, 1) - 1), ms(2025, 4, 1));
    assert_eq!(month_start(ms(2026, 1, 1) - 1), ms(2025, 12, 1));
    for g in Granularity::ALL {
        assert_eq!(Granularity::parse(g.as_str()), Some(g));
        assert_eq!(g.start(g.start(t)), g.start(t));
        assert!(g.start(t) <= t);
    }
    // Every day of a few years lands in the right week.
    for d in days_from_civil(2023, 12, 1)..days_from_civil(2027, 2, 1) {
        let w = week_start(d * DAY_MS + 5);
        assert_eq!((w / DAY_MS + 3).rem_euclid(7), 0, "a Monday");
        assert!((0..7 * DAY_MS).contains(&(d * DAY_MS - w)));
    }
}

#[test]
fn metrics_params_are_validated() {
    let now = ms(2026, 3, 10) + 5 * HOUR_MS + 17;
    let parse = |p: MetricsParams<'_>| MetricsQuery::parse("u", &p, now);
    let q = parse(MetricsParams::default()).expect("defaults");
    assert_eq!(q.granularity, Granularity::Day);
    assert_eq!((q.from, q.to), (day_start(now - 30 * DAY_MS), now));
    let q = parse(MetricsParams {
        granularity: Some("hour"),
        ..Default::default()
    })
    .expect("hour");
    assert_eq!(q.from, hour_start(now - DAY_MS));
    let q = parse(MetricsParams {
        granularity: Some("week"),
        from: Some("2026-01-01T12:00:00Z"),
        kind: Some("hr"),
        ..Default::default()
    })
    .expect("week");
    assert_eq!(q.from, ms(2025, 12, 29));
    assert_eq!(q.statement().params.len(), 5);
    assert_eq!(
        parse(MetricsParams {
            granularity: Some("year"),
            ..Default::default()
        }),
        Err(QueryError::Granularity)
    );
    assert_eq!(
        parse(MetricsParams {
            kind: Some(""),
            ..Default::default()
        }),
        Err(QueryError::Kind)
    );
    let long = "k".repeat(65);
    assert_eq!(
        parse(MetricsParams {
            kind: Some(&long),
            ..Default::default()
        }),
        Err(QueryError::Kind)
    );
    assert!(matches!(
        parse(MetricsParams {
            to: Some("2026-03-10"),
            ..Default::default()
        }),
        Err(QueryError::Time { param: "to", .. })
    ));
    assert_eq!(
        parse(MetricsParams {
            from: Some("2026-03-10T00:00:00Z"),
            to: Some("2026-03-10T00:00:00Z"),
            ..Default::default()
        }),
        Err(QueryError::EmptyRange)
    );
}

#[test]
fn more_than_a_thousand_buckets_is_an_error() {
    let q = MetricsQuery::parse("u", &MetricsParams::default(), ms(2026, 1, 1)).expect("valid");
    assert!(q.statement().sql.ends_with("LIMIT ?4"));
    assert_eq!(q.statement().params[3], json!(1001));
    let row = |i: i64| {
        json!({"start_ms": i * HOUR_MS, "kind": "k", "count": 1, "value_count": 0,
                             "sum": null, "min": null, "max": null})
    };
    let rows: Vec<Value> = (0..1001).map(row).collect();
    assert_eq!(q.answer(&rows), Err(MetricsError::TooManyBuckets));
    let a = q.answer(&rows[..1000]).expect("at the limit");
    assert_eq!(a.buckets.len(), 1000);
    let wire = serde_json::to_value(&a.buckets[1]).expect("json");
    assert_eq!(
        wire,
        json!({"start": "1970-01-01T01:00:00.000Z", "kind": "k", "count": 1,
               "sum": null, "min": null, "max": null, "avg": null})
    );
}

type Figures = (i64, i64, Option<f64>, Option<f64>, Option<f64>);
type Table = BTreeMap<(String, i64, String), Figures>;

#[derive(Clone)]
struct Pt {
    session: String,
    seq: u64,
    user: String,
    kind: String,
    value: Option<f64>,
    ts: Millis,
}

impl Pt {
    fn json(&self) -> String {
        let mut p = json!({"seq": self.seq, "userId": self.user, "kind": self.kind, "ts": self.ts});
        if let Some(v) = self.value {
            p["value"] = json!(v);
        }
        p.to_string()
    }
}

fn brute_force(points: &[Pt], g: Granularity) -> Table {
    let mut t = Table::new();
    for p in points {
        let e = t
            .entry((p.user.clone(), g.start(p.ts), p.kind.clone()))
            .or_insert((0, 0, None, None, None));
        e.0 += 1;
        if let Some(v) = p.value {
            e.1 += 1;
            e.2 = Some(e.2.unwrap_or(0.0) + v);
            e.3 = Some(e.3.map_or(v, |m: f64| m.min(v)));
            e.4 = Some(e.4.map_or(v, |m: f64| m.max(v)));
        }
    }
    t
}

fn stored(db: &Connection, g: Granularity) -> Table {
    let rows = testdb::run(
        db,
        &Statement::new(
            format!(
                "SELECT user_id, start_ms, kind, count, value_count, sum, min, max FROM {}",
                g.table()
            ),
            vec![],
        ),
    );
    rows.iter()
        .map(|r| {
            (
                (
                    col_str(r, "user_id").expect("user"),
                    col_int(r, "start_ms").expect("start"),
                    col_str(r, "kind").expect("kind"),
                ),
                (
                    col_int(r, "count").expect("count"),
                    col_int(r, "value_count").expect("value_count"),
                    col_opt_f64(r, "sum").expect("sum"),
                    col_opt_f64(r, "min").expect("min"),
                    col_opt_f64(r, "max").expect("max"),
                ),
            )
        })
        .collect()
}

fn existing(db: &Connection) -> Existing {
    Existing::from_rows(&testdb::run(db, &Statement::new(LIST_PARTITIONS, vec![])))
        .expect("partitions")
}

fn flush(db: &Connection, pts: &[Pt], now: Millis) {
    let mut by_session: BTreeMap<&str, Vec<(Millis, String)>> = BTreeMap::new();
    for p in pts {
        by_session
            .entry(&p.session)
            .or_default()
            .push((p.ts, p.json()));
    }
    let mut stmts = Vec::new();
    for (s, list) in by_session {
        for w in write_points(s, &list, now) {
            let PartitionWrite {
                ensure, statements, ..
            } = w;
            stmts.extend(ensure.statements);
            stmts.extend(statements);
        }
    }
    testdb::batch(db, &stmts);
}

/// One scheduled run: batches until no mark is left, as repeated runs
/// would; returns how many batches it took.
fn run_rollup(db: &Connection, max_marks: u32) -> usize {
    let mut batches = 0;
    loop {
        let ex = existing(db);
        let months = parse_marked_months(&testdb::run(db, &marked_months(3))).expect("months");
        if months.is_empty() {
            return batches;
        }
        for m in months {
            testdb::batch(db, &rollup_batch(m, &ex, max_marks));
            batches += 1;
        }
        assert!(batches < 100_000, "the roll-up does not finish");
    }
}

fn check_all(db: &Connection, points: &[Pt]) {
    for g in Granularity::ALL {
        let want = brute_force(points, g);
        let got = stored(db, g);
        // The first difference only: the tables are large.
        let diff = want
            .iter()
            .find(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| (k, v, got.get(k)));
        assert_eq!(diff, None, "{g:?}: key, expected, stored");
        assert_eq!(got.len(), want.len(), "{g:?} bucket count");
    }
}

#[test]
fn rollups_equal_a_direct_computation_at_every_granularity() {
    let mut rng = Rng(0x0a11_7e5e);
    let start = ms(2023, 11, 20);
    let end = ms(2026, 5, 10);
    let users = ["u0", "u1", "u2"];
    let kinds = ["hr", "steps", "tap"];
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let mut make = |rng: &mut Rng, n: usize, lo: Millis, hi: Millis| -> Vec<Pt> {
        (0..n)
            .map(|_| {
                let session = format!("s{}", rng.below(40));
                let seq = seqs.entry(session.clone()).or_insert(0);
                *seq += 1;
                // Clustered in a few hours so buckets hold several points;
                // quarter values keep float sums exact in any order.
                let ts = if rng.below(3) == 0 {
                    lo + rng.below((hi - lo) as u64) as Millis
                } else {
                    let slot = (hi - lo) / 150;
                    lo + rng.below(150) as Millis * slot
                        + rng.below((2 * HOUR_MS).min(slot) as u64) as Millis
                };
                Pt {
                    session,
                    seq: *seq,
                    user: users[rng.below(3) as usize].to_owned(),
                    kind: kinds[rng.below(3) as usize].to_owned(),
                    value: (rng.below(4) != 0).then(|| (rng.below(400) as f64 - 200.0) / 4.0),
                    ts,
                }
            })
            .collect()
    };
    let db = testdb::open();
    let mut all: Vec<Pt> = Vec::new();
    // On time: flushed within a day of their ts, in ts order.
    let mut first = make(&mut rng, 1500, start, end);
    first.sort_by_key(|p| p.ts);
    for chunk in first.chunks(25) {
        flush(
            &db,
            chunk,
            chunk[chunk.len() - 1].ts + rng.below(DAY_MS as u64) as Millis,
        );
    }
    all.extend(first);
    let batches = run_rollup(&db, 37);
    assert!(batches > 30, "bounded batches: {batches}");
    check_all(&db, &all);

    // Late: into hours already rolled up, flushed at the end (old ones go
    // to yearly tables), while one month is mid-move (both copies).
    let now = end + DAY_MS;
    let moving = Month::of(ms(2024, 6, 1));
    let ex = existing(&db);
    let year = Span::Year(2024);
    let mut copy = ensure_points(year, now).statements;
    copy.push(Statement::new(
        format!(
            "INSERT OR IGNORE INTO {} SELECT * FROM {}",
            TableKind::Points.table(year),
            TableKind::Points.table(Span::Month(moving))
        ),
        vec![],
    ));
    assert!(ex.contains(TableKind::Points, Span::Month(moving)));
    testdb::batch(&db, &copy);
    let late: Vec<Pt> = all
        .iter()
        .step_by(7)
        .map(|p| p.ts)
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|ts| make(&mut rng, 1, hour_start(ts), hour_start(ts) + HOUR_MS))
        .collect();
    // A run planned before the late flush lands, carried out after it.
    let planned = parse_marked_months(&testdb::run(&db, &marked_months(1))).expect("months");
    assert!(planned.is_empty(), "all rolled up");
    for chunk in late.chunks(30) {
        flush(&db, chunk, now);
    }
    all.extend(late);
    let months = parse_marked_months(&testdb::run(&db, &marked_months(1))).expect("months");
    testdb::batch(&db, &rollup_batch(months[0], &existing(&db), 5));
    flush(&db, &make(&mut rng, 0, start, end), now);
    run_rollup(&db, 37);
    check_all(&db, &all);

    // A repeated run, and a batch of a month without marks, change nothing.
    assert_eq!(run_rollup(&db, 37), 0);
    testdb::batch(&db, &rollup_batch(moving, &existing(&db), 37));
    check_all(&db, &all);

    // The read answers the stored figures, sorted, with avg.
    let q = MetricsQuery::parse(
        "u1",
        &MetricsParams {
            granularity: Some("week"),
            from: Some("2024-01-01T00:00:00Z"),
            to: Some("2025-01-01T00:00:00Z"),
            kind: None,
        },
        now,
    )
    .expect("valid");
    let answer = q.answer(&testdb::run(&db, &q.statement())).expect("answer");
    let want: Vec<_> = brute_force(&all, Granularity::Week)
        .into_iter()
        .filter(|((u, s, _), _)| u == "u1" && (ms(2024, 1, 1)..ms(2025, 1, 1)).contains(s))
        .collect();
    assert_eq!(answer.buckets.len(), want.len());
    assert!(!want.is_empty());
    for (b, ((_, s, k), f)) in answer.buckets.iter().zip(&want) {
        assert_eq!((&b.start, &b.kind, b.count as i64), (&rfc3339(*s), k, f.0));
        assert_eq!((b.sum, b.min, b.max), (f.2, f.3, f.4));
        assert_eq!(b.avg, f.2.map(|s| s / f.1 as f64));
    }
    let wire = serde_json::to_value(&answer).expect("json");
    assert_eq!(wire["userId"], json!("u1"));
    assert_eq!(wire["granularity"], json!("week"));
}
