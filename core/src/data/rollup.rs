//! Analytics (CONTRACT.md section 8): metrics per author, kind and UTC hour,
//! day, ISO week and month, kept exact by recomputing marked hours from the
//! raw points.
//!
//! - The flush that writes points also writes, in the same batch,
//!   [`mark_statement`](crate::data::history::mark_statement): the
//!   (author, hour) buckets it touched.
//! - The scheduled handler, at `now`:
//!   1. runs [`LIST_PARTITIONS`](crate::data::partition::LIST_PARTITIONS) and
//!      [`marked_months`] (one batch), builds an
//!      [`Existing`] and [`parse_marked_months`];
//!   2. for each month, oldest first, runs [`rollup_batch`] as ONE batch
//!      (one transaction): it recomputes at most `max_marks` marked hours
//!      from the raw points, then their days, weeks and month, then deletes
//!      those marks;
//!   3. repeats from 1 while months remain and the run has time left.
//!
//!   A batch reads and deletes the same marks inside its transaction, so a
//!   flush that lands between runs leaves a mark for the next one, and two
//!   overlapping runs compute the same figures. A batch that fails (say a
//!   monthly table dropped by a move since step 1) changes nothing and is
//!   retried by the next run.
//! - `GET /v1/users/{userId}/metrics`: [`MetricsQuery`].

use serde_json::Value;
use sesh_protocol::limits::{char_len, MAX_KIND_CHARS};
use sesh_protocol::{Bucket, MetricsAnswer};
use thiserror::Error;

use crate::data::history::{parse_time, QueryError};
use crate::data::partition::{
    col_int, col_opt_f64, col_str, Existing, Month, RowError, Span, Statement, TableKind, DAY_MS,
};
use crate::time::{rfc3339, Millis};

/// Milliseconds in an hour.
pub const HOUR_MS: Millis = 3_600_000;

/// Marks recomputed by one [`rollup_batch`] unless the caller picks another
/// bound: enough to keep up with a busy hour of many users, few enough that
/// a batch stays far below D1's 30 s.
pub const DEFAULT_MARKS_PER_BATCH: u32 = 500;

/// Most buckets in one metrics answer.
pub const MAX_BUCKETS: usize = 1000;

/// The first millisecond of the UTC hour holding `ms`.
pub fn hour_start(ms: Millis) -> Millis {
    ms - ms.rem_euclid(HOUR_MS)
}

/// The first millisecond of the UTC day holding `ms`.
pub fn day_start(ms: Millis) -> Millis {
    ms - ms.rem_euclid(DAY_MS)
}

/// The first millisecond of the ISO week (Monday 00:00 UTC) holding `ms`.
pub fn week_start(ms: Millis) -> Millis {
    let days = ms.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday, three days after a Monday.
    (days - (days + 3).rem_euclid(7)) * DAY_MS
}

/// The first millisecond of the UTC month holding `ms`.
pub fn month_start(ms: Millis) -> Millis {
    Month::of(ms).start_ms()
}

/// The size of a metrics bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
    /// ISO weeks, Monday 00:00 UTC to Monday.
    Week,
    /// UTC months.
    Month,
}

impl Granularity {
    /// All four, finest first.
    pub const ALL: [Granularity; 4] = [
        Granularity::Hour,
        Granularity::Day,
        Granularity::Week,
        Granularity::Month,
    ];

    /// Parses the query value.
    pub fn parse(s: &str) -> Option<Granularity> {
        Granularity::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The query and answer value.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }

    /// The table holding this granularity's figures.
    pub fn table(self) -> &'static str {
        match self {
            Granularity::Hour => "metrics_hour",
            Granularity::Day => "metrics_day",
            Granularity::Week => "metrics_week",
            Granularity::Month => "metrics_month",
        }
    }

    /// The start of the bucket holding `ms`.
    pub fn start(self, ms: Millis) -> Millis {
        match self {
            Granularity::Hour => hour_start(ms),
            Granularity::Day => day_start(ms),
            Granularity::Week => week_start(ms),
            Granularity::Month => month_start(ms),
        }
    }

    /// How far back `from` defaults to from `to`.
    pub fn default_window(self) -> Millis {
        match self {
            Granularity::Hour => DAY_MS,
            Granularity::Day => 30 * DAY_MS,
            Granularity::Week => 12 * 7 * DAY_MS,
            Granularity::Month => 365 * DAY_MS,
        }
    }
}

/// The months that have marks, oldest first, at most `limit`: one index
/// seek per month, however many marks there are.
pub fn marked_months(limit: u32) -> Statement {
    Statement::new(
        "WITH RECURSIVE m(month) AS (\
         SELECT min(month) FROM rollup_marks \
         UNION ALL SELECT (SELECT min(month) FROM rollup_marks WHERE month > m.month) \
         FROM m WHERE m.month IS NOT NULL) \
         SELECT month FROM m WHERE month IS NOT NULL LIMIT ?1",
        vec![Value::from(limit)],
    )
}

/// The months of [`marked_months`]'s rows.
pub fn parse_marked_months(rows: &[Value]) -> Result<Vec<Month>, RowError> {
    crate::data::history::parse_point_months(rows)
}

/// The batch (run as ONE D1 batch) that recomputes the oldest `max_marks`
/// marks of `month`: their hours from the raw points of every points table
/// that can hold the month (monthly and yearly, a point counted once by
/// `(session_id, seq)`), then their days from the hours, their ISO weeks
/// and the month from the days, then deletes those marks. Each statement
/// binds at most four parameters, whatever the number of marks.
pub fn rollup_batch(month: Month, existing: &Existing, max_marks: u32) -> Vec<Statement> {
    let max_marks = max_marks.max(1);
    let base = vec![Value::from(month.suffix()), Value::from(max_marks)];
    // The same marks in every statement: the batch is one transaction and
    // none of its statements but the last touches the marks.
    let marks = "(SELECT hour_ms, user_id FROM rollup_marks WHERE month = ?1 \
                 ORDER BY hour_ms, user_id LIMIT ?2)";
    let cols = "user_id, start_ms, kind, count, value_count, sum, min, max";
    let mut out = Vec::new();
    let sources: Vec<String> = [Span::Year(month.year()), Span::Month(month)]
        .into_iter()
        .filter(|s| existing.contains(TableKind::Points, *s))
        .map(|s| {
            format!(
                "SELECT p.session_id, p.seq, p.user_id, p.kind, p.value, p.ts \
                 FROM {marks} AS mk JOIN {} AS p ON p.user_id = mk.user_id \
                 AND p.ts >= mk.hour_ms AND p.ts < mk.hour_ms + 3600000",
                TableKind::Points.table(s)
            )
        })
        .collect();
    if !sources.is_empty() {
        out.push(Statement::new(
            format!(
                "INSERT OR REPLACE INTO metrics_hour ({cols}) \
                 SELECT user_id, ts - ts % 3600000, kind, count(*), count(value), \
                 sum(value), min(value), max(value) FROM ({}) \
                 GROUP BY user_id, ts - ts % 3600000, kind",
                sources.join(" UNION ")
            ),
            base.clone(),
        ));
    }
    let derive = |table: &str, from: &str, buckets: String, span: &str| {
        format!(
            "INSERT OR REPLACE INTO {table} ({cols}) \
             SELECT h.user_id, a.b, h.kind, sum(h.count), sum(h.value_count), sum(h.sum), \
             min(h.min), max(h.max) FROM ({buckets}) AS a JOIN {from} AS h \
             ON h.user_id = a.user_id AND h.start_ms >= a.b AND h.start_ms < {span} \
             GROUP BY h.user_id, a.b, h.kind"
        )
    };
    out.push(Statement::new(
        derive(
            "metrics_day",
            "metrics_hour",
            format!("SELECT DISTINCT user_id, hour_ms - hour_ms % 86400000 AS b FROM {marks}"),
            "a.b + 86400000",
        ),
        base.clone(),
    ));
    out.push(Statement::new(
        derive(
            "metrics_week",
            "metrics_day",
            format!(
                "SELECT DISTINCT user_id, d - ((d / 86400000 + 3) % 7) * 86400000 AS b \
                 FROM (SELECT user_id, hour_ms - hour_ms % 86400000 AS d FROM {marks})"
            ),
            "a.b + 604800000",
        ),
        base.clone(),
    ));
    let mut month_params = base.clone();
    month_params.push(Value::from(month.start_ms()));
    month_params.push(Value::from(month.end_ms()));
    out.push(Statement::new(
        derive(
            "metrics_month",
            "metrics_day",
            format!("SELECT DISTINCT user_id, ?3 AS b FROM {marks}"),
            "?4",
        ),
        month_params,
    ));
    out.push(Statement::new(
        format!("DELETE FROM rollup_marks WHERE month = ?1 AND (hour_ms, user_id) IN {marks}"),
        base,
    ));
    out
}

/// The query string of `GET /v1/users/{userId}/metrics`, as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsParams<'a> {
    /// `hour`, `day`, `week` or `month`.
    pub granularity: Option<&'a str>,
    /// RFC 3339.
    pub from: Option<&'a str>,
    /// RFC 3339.
    pub to: Option<&'a str>,
    /// Only this kind.
    pub kind: Option<&'a str>,
}

/// A parsed metrics query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    user: String,
    granularity: Granularity,
    from: Millis,
    to: Millis,
    kind: Option<String>,
}

/// Why a metrics answer cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetricsError {
    /// More than [`MAX_BUCKETS`] buckets: 400 `bad_request`.
    #[error("more than {MAX_BUCKETS} buckets; narrow `from`/`to`, pick a coarser `granularity` or one `kind`")]
    TooManyBuckets,
    /// A damaged row: 500.
    #[error(transparent)]
    Row(#[from] RowError),
}

impl MetricsQuery {
    /// Validates the parameters of user `user`'s metrics at `now`.
    /// Defaults: `granularity` `day`; `to` now; `from` `to` minus 24 hours
    /// (hour), 30 days (day), 12 weeks (week) or 365 days (month). Buckets
    /// are those whose start lies in `[from, to)`, `from` first rounded
    /// down to the start of its bucket, so the bucket holding `from` is in.
    pub fn parse(
        user: &str,
        params: &MetricsParams<'_>,
        now: Millis,
    ) -> Result<MetricsQuery, QueryError> {
        let granularity = match params.granularity {
            None => Granularity::Day,
            Some(g) => Granularity::parse(g).ok_or(QueryError::Granularity)?,
        };
        let to = params
            .to
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or(now);
        let from = match params.from {
            Some(v) => parse_time("from", v)?,
            None => to.saturating_sub(granularity.default_window()),
        };
        if from >= to {
            return Err(QueryError::EmptyRange);
        }
        if let Some(k) = params.kind {
            if !(1..=MAX_KIND_CHARS).contains(&char_len(k)) {
                return Err(QueryError::Kind);
            }
        }
        Ok(MetricsQuery {
            user: user.to_owned(),
            granularity,
            from: granularity.start(from),
            to,
            kind: params.kind.map(str::to_owned),
        })
    }

    /// The statement; it fetches one bucket more than allowed, to tell.
    pub fn statement(&self) -> Statement {
        let mut params = vec![
            Value::from(self.user.as_str()),
            Value::from(self.from),
            Value::from(self.to),
            Value::from(MAX_BUCKETS + 1),
        ];
        let kind = match &self.kind {
            Some(k) => {
                params.push(Value::from(k.as_str()));
                " AND kind = ?5"
            }
            None => "",
        };
        Statement::new(
            format!(
                "SELECT start_ms, kind, count, value_count, sum, min, max FROM {} \
                 WHERE user_id = ?1 AND start_ms >= ?2 AND start_ms < ?3{kind} \
                 ORDER BY start_ms, kind LIMIT ?4",
                self.granularity.table()
            ),
            params,
        )
    }

    /// The answer from the statement's rows.
    pub fn answer(&self, rows: &[Value]) -> Result<MetricsAnswer, MetricsError> {
        if rows.len() > MAX_BUCKETS {
            return Err(MetricsError::TooManyBuckets);
        }
        let buckets = rows
            .iter()
            .map(|r| {
                let count = col_int(r, "count")?;
                let value_count = col_int(r, "value_count")?;
                let sum = col_opt_f64(r, "sum")?;
                Ok(Bucket {
                    start: rfc3339(col_int(r, "start_ms")?),
                    kind: col_str(r, "kind")?,
                    count: u64::try_from(count).unwrap_or(0),
                    sum,
                    min: col_opt_f64(r, "min")?,
                    max: col_opt_f64(r, "max")?,
                    avg: sum
                        .filter(|_| value_count > 0)
                        .map(|s| s / value_count as f64),
                })
            })
            .collect::<Result<Vec<_>, RowError>>()?;
        Ok(MetricsAnswer {
            user_id: self.user.clone(),
            granularity: self.granularity.as_str().to_owned(),
            buckets,
        })
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
