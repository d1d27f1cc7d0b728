//! `GET /usage`: awake and sleeping hours, cost, the always-on baseline's cost and what sleeping
//! saved, per user, session or UTC day, as JSON or (with `Accept: text/csv`) CSV.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, NaiveDate};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, answer, bad_query, valid_user_id};
use crate::usage::{Bucket, GroupBy, Report, RowKey, Totals};

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

/// One row (or the total): its key's fields, then the numbers.
#[derive(Serialize)]
struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    awake_hours: f64,
    sleeping_hours: f64,
    /// Hours deleted with the backup kept.
    deleted_hours: f64,
    cost: f64,
    baseline_cost: f64,
    saved: f64,
    saved_percent: f64,
    wakes: BTreeMap<String, u64>,
    sleeps: BTreeMap<String, u64>,
}

/// `GET /usage`.
#[derive(Serialize)]
struct UsageAnswer {
    from: String,
    to: String,
    group_by: &'static str,
    user_id: Option<String>,
    count: usize,
    rows: Vec<Row>,
    total: Row,
}

/// Six decimals: whole micro-units of cost and hours, free of float noise.
fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

impl Row {
    fn of(key: Option<&RowKey>, t: &Totals) -> Row {
        let (day, uuid, user_id) = match key {
            Some(RowKey::User(user)) => (None, None, Some(user.clone())),
            Some(RowKey::Session { uuid, user_id, .. }) => (None, Some(uuid.clone()), Some(user_id.clone())),
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
            wakes: t.wakes.clone(),
            sleeps: t.sleeps.clone(),
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
    if wants_csv {
        let mut response = csv(&q, &report).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        return Ok(response);
    }
    let rows: Vec<Row> = report.rows.iter().map(|(key, t)| Row::of(Some(key), t)).collect();
    Ok(answer(UsageAnswer {
        from: q.from.to_string(),
        to: q.to.to_string(),
        group_by: group_name(q.group_by),
        user_id: q.user_id.clone(),
        count: rows.len(),
        rows,
        total: Row::of(None, &report.total),
    }))
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
fn counts(map: &BTreeMap<String, u64>) -> String {
    map.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(";")
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
            field(&counts(&r.wakes)),
            field(&counts(&r.sleeps)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("ada@example.com"), "ada@example.com");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}
