//! Figures and summaries, as summarize.mjs has them: each run is one or
//! more JSON lines (one per presence phase); per name (a target, or a
//! presence phase) the median and [min..max] of each metric over the
//! rounds, ratios of medians, and a table for people.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `x` rounded to `digits` decimals.
pub fn round_to(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The `p`th percentile (nearest rank, as loadgen.mjs) of ascending
/// `sorted`, rounded to 0.01.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let x = sorted.get(rank.clamp(1, sorted.len().max(1)) - 1)?;
    Some(round_to(*x, 2))
}

/// p50, p99 (see [`percentile`]) and maximum (rounded to 0.1) of latencies.
pub fn spread(lat: &mut [f64]) -> [Option<f64>; 3] {
    lat.sort_by(f64::total_cmp);
    let max = lat.last().map(|x| round_to(*x, 1));
    [percentile(lat, 50.0), percentile(lat, 99.0), max]
}

/// A JSON object with its keys in the given order.
pub fn ordered_object(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON object as a string, its keys in the order written:
/// `fields! {"a": x, "b": y}` (each value as `json!` takes it).
macro_rules! fields {
    ($($k:literal: $v:expr),* $(,)?) => {
        $crate::summary::ordered_object(&[$(($k, serde_json::json!($v))),*])
    };
}
pub(crate) use fields;

/// A figure of one JSON line by name: a field (booleans count 1 or 0), a
/// process's CPU (`cpu_<process>_pct`, as summarize.mjs names them), or
/// workerd's CPU microseconds per ack or per check. A line that says the
/// run could not be carried out (`fatal`) has only its errors.
pub fn metric(v: &Value, name: &str) -> Option<f64> {
    if v.get("fatal").is_some() {
        return (name == "errors").then(|| errors(v) as f64);
    }
    let cpu = |process: &str| v["cpu_pct"][process].as_f64();
    let per = |rate: &str| match (cpu("workerd"), v[rate].as_f64()) {
        (Some(w), Some(n)) if n > 0.0 && w > 0.0 => Some(w * 1e4 / n),
        _ => None,
    };
    match name {
        "cpu_proxy_pct" => cpu("workerd_proxy"),
        "workerd_cpu_us_per_ack" => per("acks_per_s"),
        "workerd_cpu_us_per_check" => per("checks_per_s"),
        _ => match name
            .strip_prefix("cpu_")
            .and_then(|n| n.strip_suffix("_pct"))
        {
            Some(process) => cpu(process),
            None => v[name].as_bool().map(f64::from).or(v[name].as_f64()),
        },
    }
}

/// Correctness errors of a line (a `fatal` line without a count is one).
pub fn errors(v: &Value) -> u64 {
    v["errors"]
        .as_u64()
        .unwrap_or(u64::from(v.get("fatal").is_some()))
}

/// Whether a run's lines passed their checks.
pub fn ok(lines: &[Value]) -> bool {
    let ok = |v: &Value| errors(v) == 0 && v.get("fatal").is_none() && v["exact_ok"] != false;
    lines.iter().all(ok)
}

/// Lines' errors by code (`<phase>:<code>` for phase lines when `phases`).
pub fn error_detail<'a>(
    lines: impl IntoIterator<Item = &'a Value>,
    phases: bool,
) -> BTreeMap<String, u64> {
    let mut d = BTreeMap::new();
    for v in lines {
        for (k, n) in v["error_detail"].as_object().into_iter().flatten() {
            let key = match v["phase"].as_str() {
                Some(p) if phases => format!("{p}:{k}"),
                _ => k.clone(),
            };
            *d.entry(key).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    d
}

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
    /// Over `(name, line)` pairs.
    pub fn of(names: &[String], runs: &[(String, Value)], metrics: &[&str]) -> Stats {
        let mut st = Stats::default();
        for n in names {
            let mine: Vec<&Value> = runs.iter().filter(|(t, _)| t == n).map(|r| &r.1).collect();
            st.rounds.insert(n.clone(), mine.len());
            st.errors
                .insert(n.clone(), mine.iter().map(|v| errors(v)).sum());
            st.error_detail
                .insert(n.clone(), error_detail(mine.iter().copied(), false));
            for &m in metrics {
                let xs: Vec<f64> = mine.iter().filter_map(|v| metric(v, m)).collect();
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

    /// `median(num) / median(den)` for each metric both have (den != 0).
    pub fn ratio(&self, num: &str, den: &str, metrics: &[&str]) -> BTreeMap<String, f64> {
        let get = |n: &str, m: &str| self.median.get(n)?.get(m).copied();
        let ratio = |m: &&str| match (get(num, m), get(den, m)) {
            (Some(a), Some(b)) if b != 0.0 => Some((m.to_string(), round_to(a / b, 3))),
            _ => None,
        };
        metrics.iter().filter_map(ratio).collect()
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
            row.extend(
                ratios
                    .iter()
                    .map(|(_, r)| r.get(m).map_or("-".into(), |x| fmt(*x))),
            );
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
pub fn compare(
    title: &str,
    shape: Value,
    heading: &str,
    names: &[String],
    runs: &[(String, Value)],
    metrics: &[&str],
    ok: bool,
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
    let json = fields! {
        "summary": title, "shape": shape, "rounds": st.rounds, "median": st.median, "min": st.min,
        "max": st.max, "ratio": ratio_json, "errors": st.errors, "error_detail": st.error_detail,
        "ok": ok,
    };
    Summary {
        table: st.table(heading, names, metrics, &ratios),
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_nearest_rank_percentiles_medians_and_ratios_of_rust_over_the_others() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        let got = [0.0, 50.0, 99.0, 100.0].map(|p| percentile(&xs, p));
        assert_eq!(got, [Some(1.0), Some(5.0), Some(10.0), Some(10.0)]);
        assert_eq!(
            (percentile(&[7.126], 99.0), percentile(&[], 50.0)),
            (Some(7.13), None)
        );
        assert_eq!(
            (median(&[]), median(&[4.0, 1.0, 3.0, 2.0])),
            (None, Some(2.5))
        );
        let v = json!({"acks_per_s": 1000, "exact_ok": true, "cpu_pct": {"workerd": 50.0, "workerd_proxy": 9}});
        assert_eq!(metric(&v, "workerd_cpu_us_per_ack"), Some(500.0));
        assert_eq!(
            (metric(&v, "exact_ok"), metric(&v, "cpu_proxy_pct")),
            (Some(1.0), Some(9.0))
        );
        assert!(!ok(&[json!({"fatal": "x"})]) && !ok(&[json!({"errors": 0, "exact_ok": false})]));

        let run = |r: f64, e: u64| json!({"rate": r, "errors": e, "error_detail": {"e": e}});
        let runs = [
            ("q", 200.0, 0),
            ("rust", 100.0, 1),
            ("q", 200.0, 0),
            ("rust", 300.0, 0),
        ];
        let runs: Vec<(String, Value)> = runs.map(|(n, r, e)| (n.to_owned(), run(r, e))).to_vec();
        let names = ["q".to_owned(), "rust".to_owned()];
        let s = compare("t", json!({}), "shape", &names, &runs, &["rate", "x"], true);
        let v: Value = serde_json::from_str(&s.json).unwrap();
        let rate = (&v["median"]["rust"]["rate"], &v["ratio"]["rust/q"]["rate"]);
        assert_eq!(rate, (&json!(200.0), &json!(1.0)));
        assert_eq!(
            (&v["errors"]["rust"], &v["rounds"]["rust"]),
            (&json!(1), &json!(2))
        );
        assert!(s.table.contains("200 [100..300]"), "{}", s.table);
    }
}
