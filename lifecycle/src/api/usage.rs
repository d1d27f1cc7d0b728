//! `GET /usage`: awake and sleeping hours, cost, the always-on baseline's cost and what sleeping
//! saved, per user, session or UTC day, as JSON or (with `Accept: text/csv`) CSV.

use std::convert::Infallible;
use std::fmt::Write;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{Duration, NaiveDate};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, bad_query, valid_user_id};
use crate::manager::LifecycleError;
use crate::usage::{Bucket, Counts, GroupBy, Report, RowKey, Totals};

/// The longest period one question may cover.
const MAX_DAYS: i64 = 366;
/// The period asked for when `from` is not given: the 30 days up to `to`.
const DEFAULT_DAYS: i64 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    group_by: Option<String>,
}

/// One row (or the total): its key's fields, then the numbers (borrowed from the report: 100,000
/// session rows are written without copying their names).
#[derive(Serialize)]
struct Row<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    awake_hours: f64,
    sleeping_hours: f64,
    /// Hours deleted with the backup kept.
    deleted_hours: f64,
    cost: f64,
    baseline_cost: f64,
    saved: f64,
    saved_percent: f64,
    wakes: &'a Counts,
    sleeps: &'a Counts,
}

/// `GET /usage`'s answer up to its rows: then come `rows` (every row) and `total` (a row).
#[derive(Serialize)]
struct Head<'a> {
    from: String,
    to: String,
    group_by: &'static str,
    user_id: Option<&'a str>,
    count: usize,
}

/// Six decimals: whole micro-units of cost and hours, free of float noise.
fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

impl<'a> Row<'a> {
    fn of(key: Option<&'a RowKey>, t: &'a Totals) -> Row<'a> {
        let (day, uuid, user_id) = match key {
            Some(RowKey::User(user)) => (None, None, Some(&**user)),
            Some(RowKey::Session { uuid, user_id, .. }) => (None, Some(&**uuid), Some(&**user_id)),
            Some(RowKey::Day(day)) => (Some(day.to_string()), None, None),
            None => (None, None, None),
        };
        Row {
            day,
            uuid,
            user_id,
            awake_hours: round(t.hours(Bucket::Running)),
            sleeping_hours: round(t.hours(Bucket::Sleeping)),
            deleted_hours: round(t.hours(Bucket::Deleted)),
            cost: round(t.cost),
            baseline_cost: round(t.baseline_cost),
            saved: round(t.saved()),
            saved_percent: (t.saved_percent() * 100.0).round() / 100.0,
            wakes: &t.wakes,
            sleeps: &t.sleeps,
        }
    }
}

fn invalid(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn parse_day(name: &str, text: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map(Some).map_err(|_| {
        invalid(
            "invalid_date",
            format!("{name} must be a UTC day written YYYY-MM-DD, e.g. 2026-11-01 (it is {text:?})."),
        )
    })
}

/// The question a query string asks, checked: days, user and grouping.
fn question(q: UsageQuery, today: NaiveDate) -> Result<crate::usage::Query, ApiError> {
    let to = parse_day("to", q.to.as_deref())?.unwrap_or(today);
    let from = parse_day("from", q.from.as_deref())?.unwrap_or(to - Duration::days(DEFAULT_DAYS - 1));
    if from > to {
        return Err(invalid("invalid_range", format!("from ({from}) must not be after to ({to}).")));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(invalid(
            "invalid_range",
            format!("from ({from}) to ({to}) covers more than {MAX_DAYS} days; ask for a shorter period."),
        ));
    }
    if let Some(user) = &q.user_id {
        valid_user_id(user)?;
    }
    let group_by = match q.group_by.as_deref() {
        None => GroupBy::User,
        Some(name) => GroupBy::parse(name).ok_or_else(|| {
            invalid("invalid_group_by", format!("group_by must be {} (it is {name:?}).", GroupBy::NAMES))
        })?,
    };
    Ok(crate::usage::Query { from, to, user_id: q.user_id, group_by })
}

pub(super) async fn usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let q = question(q, state.manager.now().date_naive())?;
    let report = state.manager.usage(&q).await?;
    let wants_csv = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/csv")));
    // Off the async workers: 100,000 session rows are tens of megabytes.
    let (parts, content_type, report) = tokio::task::spawn_blocking(move || {
        if wants_csv {
            (vec![csv(&q, &report).into_bytes()], "text/csv; charset=utf-8", report)
        } else {
            (usage_json_parts(&q, &report), "application/json", report)
        }
    })
    .await
    .map_err(|e| ApiError::from(LifecycleError::task_failed("the usage answer", e)))?;
    // Freeing 100,000 rows takes a while: after the answer, not before it.
    tokio::task::spawn_blocking(move || drop(report));
    let length = parts.iter().map(Vec::len).sum::<usize>();
    let body =
        Body::from_stream(futures::stream::iter(parts.into_iter().map(|part| Ok::<_, Infallible>(Bytes::from(part)))));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_LENGTH, HeaderValue::from(length)),
    ];
    Ok((headers, body).into_response())
}

/// The JSON body of `GET /usage` for `report`, the answer to `q`: its [`Head`], `rows` and
/// `total`, written as `serde_json` writes the whole.
pub fn usage_json(q: &crate::usage::Query, report: &Report) -> Vec<u8> {
    usage_json_parts(q, report).concat()
}

/// [`usage_json`] in parts to be sent one after the other, with many rows written on every core
/// (100,000 session rows are ~24 MB: not copied into one buffer).
pub fn usage_json_parts(q: &crate::usage::Query, report: &Report) -> Vec<Vec<u8>> {
    let rows = &report.rows;
    let head = Head {
        from: q.from.to_string(),
        to: q.to.to_string(),
        group_by: group_name(q.group_by),
        user_id: q.user_id.as_deref(),
        count: rows.len(),
    };
    let mut start = json(&head);
    start.pop(); // its `}`: the rows and the total follow
    start.extend_from_slice(b",\"rows\":[");
    let cores =
        if rows.len() < ROWS_PER_CORE { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let mut parts: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let writers: Vec<_> = rows
            .chunks(rows.len().div_ceil(cores).max(1))
            .enumerate()
            // Each part after the first starts with the comma that follows the last one's row.
            .map(|(i, rows)| scope.spawn(move || json_rows(rows, i > 0)))
            .collect();
        writers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut end = b"],\"total\":".to_vec();
    end.extend(json(&Row::of(None, &report.total)));
    end.push(b'}');
    parts.insert(0, start);
    parts.push(end);
    parts
}

/// Fewer rows than this are written on one core.
const ROWS_PER_CORE: usize = 5_000;

fn json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("usage rows are plain data")
}

/// `rows` as JSON, comma-separated (the inside of an array), after a comma if `comma_first`.
fn json_rows(rows: &[(RowKey, Totals)], comma_first: bool) -> Vec<u8> {
    // Session rows are ~240 bytes: one allocation for most parts.
    let mut out = Vec::with_capacity(rows.len() * 256);
    for (i, (key, t)) in rows.iter().enumerate() {
        if i > 0 || comma_first {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &Row::of(Some(key), t)).expect("usage rows are plain data");
    }
    out
}

fn group_name(g: GroupBy) -> &'static str {
    match g {
        GroupBy::User => "user",
        GroupBy::Session => "session",
        GroupBy::Day => "day",
    }
}

/// One CSV field: quoted when it holds a comma, quote or line break; a leading `= + - @` is
/// escaped with `'` so a spreadsheet never runs a user id as a formula.
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

/// Counts as `name=n;name=n`.
fn counts(counts: &Counts) -> String {
    counts.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(";")
}

/// The rows as CSV (a header line, then one line per row; the total is not a row).
fn csv(q: &crate::usage::Query, report: &Report) -> String {
    let key = match q.group_by {
        GroupBy::User => "user_id",
        GroupBy::Session => "uuid,user_id",
        GroupBy::Day => "day",
    };
    let mut out = format!(
        "{key},awake_hours,sleeping_hours,deleted_hours,cost,baseline_cost,saved,saved_percent,wakes,sleeps\r\n"
    );
    for (k, t) in &report.rows {
        let r = Row::of(Some(k), t);
        let key = match k {
            RowKey::User(user) => field(user),
            RowKey::Session { uuid, user_id, .. } => format!("{},{}", field(uuid), field(user_id)),
            RowKey::Day(day) => day.to_string(),
        };
        let _ = write!(
            out,
            "{key},{},{},{},{},{},{},{},{},{}\r\n",
            r.awake_hours,
            r.sleeping_hours,
            r.deleted_hours,
            r.cost,
            r.baseline_cost,
            r.saved,
            r.saved_percent,
            field(&counts(r.wakes)),
            field(&counts(r.sleeps)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /usage`'s answer as one value (what [`usage_json`] must write, byte for byte).
    #[derive(Serialize)]
    struct UsageAnswer<'a> {
        from: String,
        to: String,
        group_by: &'static str,
        user_id: Option<&'a str>,
        count: usize,
        rows: Vec<Row<'a>>,
        total: Row<'a>,
    }

    #[test]
    fn many_rows_written_on_every_core_are_the_answer_serde_writes() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        for (n, user_id) in [(0, None), (3, None), (ROWS_PER_CORE * 2 + 7, Some("ann\"q".to_string()))] {
            let mut report = Report::default();
            for i in 0..n {
                let key = RowKey::Session {
                    user_id: format!("user{:02}", i % 13).into(),
                    created_at: day.and_hms_opt(0, 0, 0).unwrap().and_utc(),
                    uuid: format!("{i:08x}").into(),
                };
                let t = Totals {
                    ms: [i as u64 * 1000, 0, 0],
                    cost: i as f64 / 7.0,
                    wakes: Counts::of([("http".into(), i as u64), ("api-wake".into(), 1)]),
                    ..Totals::default()
                };
                report.total.cost += t.cost;
                report.rows.push((key, t));
            }
            report.rows.sort_by(|a, b| a.0.cmp(&b.0));
            let q = crate::usage::Query { from: day, to: day, user_id, group_by: GroupBy::Session };
            let rows: Vec<Row> = report.rows.iter().map(|(key, t)| Row::of(Some(key), t)).collect();
            let whole = UsageAnswer {
                from: "2026-11-01".into(),
                to: "2026-11-01".into(),
                group_by: "session",
                user_id: q.user_id.as_deref(),
                count: n,
                rows,
                total: Row::of(None, &report.total),
            };
            let body = usage_json(&q, &report);
            assert_eq!(String::from_utf8(body).unwrap(), serde_json::to_string(&whole).unwrap(), "{n} rows");
        }
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("ada@example.com"), "ada@example.com");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}
