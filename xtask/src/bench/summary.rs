//! Summaries over runs, as summarize.mjs prints them: per name (a target,
//! or a presence phase), the median and [min..max] of each metric over the
//! rounds, ratios of medians, and a table for people.

use std::collections::BTreeMap;

use serde_json::json;

use super::loadgen::round_to;

/// What a summary needs of one run's result.
pub trait Figures {
    /// A metric by name; `None` where the run has no such figure.
    fn metric(&self, name: &str) -> Option<f64>;
    /// Correctness errors (and runs that failed to produce figures).
    fn errors(&self) -> u64;
    fn error_detail(&self) -> BTreeMap<String, u64>;
    /// The JSON lines printed for this run (`<target> <line>` each).
    fn lines(&self) -> Vec<String>;
    /// Whether the run passed its checks.
    fn ok(&self) -> bool {
        self.errors() == 0
    }
}

/// The `errors`, `error_detail` and `lines` of a `Figures` impl for a report
/// with `errors` and `error_detail` fields that prints as one JSON line
/// (its `to_json`).
macro_rules! one_line_figures {
    () => {
        fn errors(&self) -> u64 {
            self.errors
        }
        fn error_detail(&self) -> std::collections::BTreeMap<String, u64> {
            self.error_detail.clone()
        }
        fn lines(&self) -> Vec<String> {
            vec![self.to_json()]
        }
    };
}
pub(crate) use one_line_figures;

/// The median of `xs` (mean of the middle two when even).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[m]),
        _ => Some((s[m - 1] + s[m]) / 2.0),
    }
}

pub type ByName = BTreeMap<String, BTreeMap<String, f64>>;

/// Medians, minima and maxima per name and metric, rounded to 0.001.
#[derive(Debug, Default)]
pub struct Stats {
    pub rounds: BTreeMap<String, usize>,
    pub median: ByName,
    pub min: ByName,
    pub max: ByName,
    pub errors: BTreeMap<String, u64>,
    pub error_detail: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Stats {
    pub fn of<R: Figures>(names: &[String], runs: &[(String, R)], metrics: &[&str]) -> Stats {
        let mut st = Stats::default();
        for n in names {
            let mine: Vec<&R> = runs
                .iter()
                .filter(|(t, _)| t == n)
                .map(|(_, r)| r)
                .collect();
            st.rounds.insert(n.clone(), mine.len());
            st.errors
                .insert(n.clone(), mine.iter().map(|r| r.errors()).sum());
            let detail = st.error_detail.entry(n.clone()).or_default();
            for r in &mine {
                for (k, v) in r.error_detail() {
                    *detail.entry(k).or_default() += v;
                }
            }
            for &m in metrics {
                let xs: Vec<f64> = mine.iter().filter_map(|r| r.metric(m)).collect();
                let Some(med) = median(&xs) else { continue };
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                for (table, x) in [(&mut st.median, med), (&mut st.min, lo), (&mut st.max, hi)] {
                    table
                        .entry(n.clone())
                        .or_default()
                        .insert(m.to_owned(), round_to(x, 3));
                }
            }
        }
        st
    }

    /// The median of `metric` for `name`.
    pub fn get(&self, name: &str, metric: &str) -> Option<f64> {
        self.median.get(name)?.get(metric).copied()
    }

    /// `median(num) / median(den)` for each metric both have (den != 0).
    pub fn ratio(&self, num: &str, den: &str, metrics: &[&str]) -> BTreeMap<String, f64> {
        let mut r = BTreeMap::new();
        for &m in metrics {
            if let (Some(a), Some(b)) = (self.get(num, m), self.get(den, m)) {
                if b != 0.0 {
                    r.insert(m.to_owned(), round_to(a / b, 3));
                }
            }
        }
        r
    }

    /// The table: one row per metric, `median [min..max]` per name, then
    /// the given ratio columns (`(label, ratios)`).
    pub fn table(
        &self,
        heading: &str,
        names: &[String],
        metrics: &[&str],
        ratios: &[(String, BTreeMap<String, f64>)],
    ) -> String {
        let fmt = |x: f64| {
            if x.fract() == 0.0 {
                format!("{x}")
            } else {
                format!("{x:.2}")
            }
        };
        let mut header = vec!["metric".to_owned()];
        header.extend(names.iter().cloned());
        header.extend(ratios.iter().map(|(label, _)| label.clone()));
        let mut rows = vec![header];
        for &m in metrics {
            let mut row = vec![m.to_owned()];
            for n in names {
                let cell = |t: &ByName| t.get(n).and_then(|x| x.get(m)).copied();
                row.push(
                    match (cell(&self.median), cell(&self.min), cell(&self.max)) {
                        (Some(a), Some(lo), Some(hi)) => {
                            format!("{} [{}..{}]", fmt(a), fmt(lo), fmt(hi))
                        }
                        _ => "-".into(),
                    },
                );
            }
            for (_, r) in ratios {
                row.push(r.get(m).map_or("-".into(), |x| fmt(*x)));
            }
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut table = format!(
            "\n{heading}; median [min..max] over rounds {}\n",
            json!(self.rounds)
        );
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            table.push_str(cells.join("  ").trim_end());
            table.push('\n');
        }
        table
    }
}

/// A summary: the table (for stderr) and one JSON line (for stdout).
pub struct Summary {
    pub table: String,
    pub json: String,
}

/// The summary of targets compared side by side: medians, spread, and the
/// ratios of the `rust` target (else the first) to each other target.
pub fn compare<R: Figures>(
    title: &str,
    shape: serde_json::Value,
    heading: &str,
    names: &[String],
    runs: &[(String, R)],
    metrics: &[&str],
    problems: &[String],
) -> Summary {
    let st = Stats::of(names, runs, metrics);
    let base = names
        .iter()
        .find(|n| *n == "rust")
        .or(names.first())
        .cloned()
        .unwrap_or_default();
    let ratios: Vec<(String, BTreeMap<String, f64>)> = names
        .iter()
        .filter(|n| **n != base)
        .map(|o| (format!("{base}/{o}"), st.ratio(&base, o, metrics)))
        .collect();
    let ratio_json: BTreeMap<&str, &BTreeMap<String, f64>> =
        ratios.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let json = super::loadgen::ordered_object(&[
        ("summary", json!(title)),
        ("shape", shape),
        ("rounds", json!(st.rounds)),
        ("median", json!(st.median)),
        ("min", json!(st.min)),
        ("max", json!(st.max)),
        ("ratio", json!(ratio_json)),
        ("errors", json!(st.errors)),
        ("error_detail", json!(st.error_detail)),
        ("ok", json!(problems.is_empty())),
    ]);
    Summary {
        table: st.table(heading, names, metrics, &ratios),
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Run(BTreeMap<&'static str, f64>, u64);

    impl Figures for Run {
        fn metric(&self, name: &str) -> Option<f64> {
            self.0.get(name).copied()
        }
        fn errors(&self) -> u64 {
            self.1
        }
        fn error_detail(&self) -> BTreeMap<String, u64> {
            BTreeMap::from([("e".to_owned(), self.1)])
        }
        fn lines(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn run(rate: f64, p99: f64, errors: u64) -> Run {
        Run(BTreeMap::from([("rate", rate), ("p99", p99)]), errors)
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_rust_over_the_others() {
        let runs = vec![
            ("quota-ref".to_owned(), run(200.0, 10.0, 0)),
            ("rust".to_owned(), run(100.0, 20.0, 1)),
            ("quota-ref".to_owned(), run(200.0, 10.0, 0)),
            ("rust".to_owned(), run(300.0, 40.0, 0)),
        ];
        let names = vec!["quota-ref".to_owned(), "rust".to_owned()];
        let s = compare(
            "t",
            json!({}),
            "shape",
            &names,
            &runs,
            &["rate", "p99", "missing"],
            &[],
        );
        let v: serde_json::Value = serde_json::from_str(&s.json).unwrap();
        assert_eq!(v["median"]["rust"]["rate"], 200.0);
        assert_eq!(v["min"]["rust"]["rate"], 100.0);
        assert_eq!(v["max"]["rust"]["p99"], 40.0);
        assert_eq!(v["ratio"]["rust/quota-ref"]["rate"], 1.0);
        assert_eq!(v["ratio"]["rust/quota-ref"]["p99"], 3.0);
        assert!(v["ratio"]["rust/quota-ref"].get("missing").is_none());
        assert_eq!(v["rounds"]["rust"], 2);
        assert_eq!(v["errors"]["rust"], 1);
        assert_eq!(v["error_detail"]["rust"]["e"], 1);
        assert_eq!(v["ok"], true);
        assert!(s.table.contains("rust/quota-ref"), "{}", s.table);
        assert!(s.table.contains("200 [100..300]"), "{}", s.table);
    }

    #[test]
    fn a_ratio_needs_both_medians_and_a_nonzero_denominator() {
        let runs = vec![
            ("a".to_owned(), run(10.0, 0.0, 0)),
            ("b".to_owned(), run(5.0, 0.0, 0)),
        ];
        let st = Stats::of(&["a".into(), "b".into()], &runs, &["rate", "p99"]);
        let r = st.ratio("a", "b", &["rate", "p99", "x"]);
        assert_eq!(r, BTreeMap::from([("rate".to_owned(), 2.0)]));
        assert_eq!(st.get("c", "rate"), None);
    }
}
