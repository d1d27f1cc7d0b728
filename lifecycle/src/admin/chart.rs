//! The usage tab: what sleeping saved over the last 30 UTC days, from `/usage`'s report grouped by
//! day — awake and asleep hours per day as stacked bars, the cost per day against the always-on
//! baseline as lines, and the totals. Inline SVG drawn here: no script, no library, no CDN.

use std::fmt::Write;

use axum::extract::State;
use axum::response::Response;
use chrono::{Duration, NaiveDate};
use http::HeaderMap;
use wakeway_proxy::pages::escape;

use super::AdminState;
use super::page::{self, Tab, admin_page};
use super::signin::{Why, form};
use crate::usage::{Bucket, GroupBy, Query, Report, RowKey};

/// Days the chart covers, today included.
const DAYS: i64 = 30;
const AWAKE: &str = "#e8912d";
const ASLEEP: &str = "#4a63e7";
const BASELINE: &str = "#8a92a3";
const SAVED: &str = "#1f8a4c";

/// One day of the chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub day: NaiveDate,
    pub awake_hours: f64,
    pub asleep_hours: f64,
    pub cost: f64,
    pub baseline: f64,
}

/// The report's days from `from`, one point per day (days without usage are zeros).
pub fn points(report: &Report, from: NaiveDate, days: i64) -> Vec<Point> {
    (0..days)
        .map(|i| {
            let day = from + Duration::days(i);
            let t = report.get(&RowKey::Day(day)).cloned().unwrap_or_default();
            Point {
                day,
                awake_hours: t.hours(Bucket::Running),
                asleep_hours: t.hours(Bucket::Sleeping),
                cost: t.cost,
                baseline: t.baseline_cost,
            }
        })
        .collect()
}

/// `GET /admin/usage`.
pub(super) async fn page(State(admin): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(who) = admin.admin(&headers).await else { return form(Why::Expired, admin.oidc.is_some()) };
    let to = admin.manager.now().date_naive();
    let from = to - Duration::days(DAYS - 1);
    let q = Query { from, to, user_id: None, group_by: GroupBy::Day };
    let report = match admin.manager.usage(&q).await {
        Ok(report) => report,
        Err(e) => return page::failed(e, "/admin/usage"),
    };
    let points = points(&report, from, DAYS);
    let body = if report.total.baseline_ms == 0 {
        "    <div class=\"empty\"><p><b>No usage yet.</b></p><p>Once sessions exist, this shows their awake and \
         asleep hours per day and what sleeping saved against keeping every workspace running.</p></div>"
            .to_string()
    } else {
        format!(
            "{}\n    <h2>Hours per day</h2>\n{}\n{}\n    <h2>Cost per day</h2>\n{}\n{}",
            totals(&report),
            hours_svg(&points),
            legend(&[(AWAKE, "awake"), (ASLEEP, "asleep")]),
            cost_svg(&points),
            legend(&[(AWAKE, "cost"), (BASELINE, "always on"), (SAVED, "saved")]),
        )
    };
    let meta = format!(
        "    <p class=\"meta\">{from} to {to} (UTC), all users; prices from the configuration. \
         The same numbers: <code>GET /usage?group_by=day</code>.</p>"
    );
    admin_page("Usage", Tab::Usage, &who.corner(), &format!("{body}\n{meta}"))
}

/// Money as the page shows it: cents, or four decimals under a dollar.
pub fn money(x: f64) -> String {
    if x.abs() >= 1.0 { format!("${x:.2}") } else { format!("${x:.4}") }
}

fn totals(report: &Report) -> String {
    let t = &report.total;
    let tile = |class: &str, value: String, label: &str| {
        format!("<div class=\"{class}\"><b>{}</b>{}</div>", escape(&value), escape(label))
    };
    format!(
        "    <div class=\"totals\">{}{}{}{}{}</div>",
        tile("", span(t.hours(Bucket::Running)), "awake"),
        tile("", span(t.hours(Bucket::Sleeping)), "asleep"),
        tile("", money(t.cost), "cost"),
        tile("", money(t.baseline_cost), "always on would cost"),
        tile("good", format!("{} ({:.0}%)", money(t.saved()), t.saved_percent()), "saved by sleeping"),
    )
}

/// Hours as a person reads them: hours, else minutes, else seconds.
pub fn span(hours: f64) -> String {
    match hours {
        h if h >= 10.0 => format!("{h:.0} h"),
        h if h >= 1.0 => format!("{h:.1} h"),
        h if h * 60.0 >= 1.0 => format!("{:.0} min", h * 60.0),
        h => format!("{:.0} s", h * 3600.0),
    }
}

fn legend(items: &[(&str, &str)]) -> String {
    let items: String =
        items.iter().map(|(color, text)| format!("<span><i style=\"background:{color}\"></i>{text}</span>")).collect();
    format!("    <p class=\"legend\">{items}</p>")
}

/// The smallest 1, 2, 2.5 or 5 × 10ⁿ at least `x` (1 for nothing), so the axis reads well.
pub fn nice(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= x * 0.999_999).unwrap_or(10.0 * magnitude)
}

/// Grid steps for an axis ending at `max` (a [`nice`] number): round steps (0.2, 0.5, 1, 5…).
fn divisions(max: f64) -> usize {
    let leading = max / 10f64.powf(max.log10().floor());
    if (leading - 2.0).abs() < 1e-9 { 4 } else { 5 }
}

/// `x` with as many decimals as a grid step of `step` needs.
pub fn number(x: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
    let scaled = step * 10f64.powi(decimals as i32);
    let decimals = if (scaled - scaled.round()).abs() > 1e-6 { decimals + 1 } else { decimals };
    format!("{x:.decimals$}")
}

/// The drawing area of both charts.
struct Frame {
    /// The top of the axis, in the unit drawn.
    max: f64,
    /// Shown values per drawn unit (60 to label hours in minutes).
    shown: f64,
    n: usize,
}

const W: f64 = 1000.0;
const H: f64 = 260.0;
const LEFT: f64 = 76.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

impl Frame {
    fn slot(&self) -> f64 {
        (W - LEFT - RIGHT) / self.n as f64
    }

    fn x(&self, i: usize) -> f64 {
        LEFT + self.slot() * (i as f64 + 0.5)
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (H - TOP - BOTTOM) * (1.0 - v / self.max)
    }

    /// The grid, the y labels (`label` formats a value) and a date under every fifth day.
    fn axes(&self, points: &[Point], label: impl Fn(f64, f64) -> String) -> String {
        let mut out = String::new();
        let n = divisions(self.max * self.shown);
        let step = self.max / n as f64;
        for k in 0..=n {
            let v = step * k as f64;
            let y = self.y(v);
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                escape(&label(v * self.shown, step * self.shown))
            );
        }
        for (i, p) in points.iter().enumerate().filter(|(i, _)| (points.len() - 1 - i).is_multiple_of(5)) {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                self.x(i),
                H - 6.0,
                p.day.format("%b %-d")
            );
        }
        out
    }
}

fn svg(label: &str, inner: &str) -> String {
    format!(
        "    <div class=\"plot\"><svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\">{inner}</svg></div>",
        escape(label)
    )
}

/// Awake and asleep hours per day, stacked.
pub fn hours_svg(points: &[Point]) -> String {
    let most = points.iter().map(|p| p.awake_hours + p.asleep_hours).fold(0.0, f64::max);
    // Under an hour a day, the axis counts minutes.
    let (unit, per_hour) = if most < 1.0 { ("min", 60.0) } else { ("h", 1.0) };
    let frame = Frame { max: nice(most * per_hour) / per_hour, shown: per_hour, n: points.len().max(1) };
    let mut out = frame.axes(points, |v, step| format!("{} {unit}", number(v, step)));
    let width = (frame.slot() * 0.62).max(2.0);
    for (i, p) in points.iter().enumerate() {
        let x = frame.x(i) - width / 2.0;
        let (base, awake_top) = (frame.y(0.0), frame.y(p.awake_hours));
        let asleep_top = frame.y(p.awake_hours + p.asleep_hours);
        let _ = write!(
            out,
            "<g><title>{}: {:.1} h awake, {:.1} h asleep</title>\
             <rect x=\"{x:.1}\" y=\"{awake_top:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{AWAKE}\"/>\
             <rect x=\"{x:.1}\" y=\"{asleep_top:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{ASLEEP}\" rx=\"2\"/></g>",
            p.day,
            p.awake_hours,
            p.asleep_hours,
            base - awake_top,
            awake_top - asleep_top,
        );
    }
    svg("Awake and asleep hours per day", &out)
}

/// The cost per day against the always-on baseline; the gap between them (the saving) shaded.
pub fn cost_svg(points: &[Point]) -> String {
    let most = points.iter().map(|p| p.baseline.max(p.cost)).fold(0.0, f64::max);
    let frame = Frame { max: nice(most), shown: 1.0, n: points.len().max(1) };
    let mut out = frame.axes(points, |v, step| format!("${}", number(v, step.min(0.01))));
    let line = |value: fn(&Point) -> f64| -> Vec<String> {
        points.iter().enumerate().map(|(i, p)| format!("{:.1},{:.1}", frame.x(i), frame.y(value(p)))).collect()
    };
    let (cost, baseline) = (line(|p| p.cost), line(|p| p.baseline));
    let mut gap = baseline.clone();
    gap.extend(cost.iter().rev().cloned());
    let _ = write!(
        out,
        "<polygon points=\"{}\" fill=\"{SAVED}\" fill-opacity=\".16\"/>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"{BASELINE}\" stroke-width=\"2\" stroke-dasharray=\"5 4\"/>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"{AWAKE}\" stroke-width=\"2.5\" stroke-linejoin=\"round\"/>",
        gap.join(" "),
        baseline.join(" "),
        cost.join(" "),
    );
    for (i, p) in points.iter().enumerate() {
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{AWAKE}\"><title>{}: {} (always on: {})</title></circle>",
            frame.x(i),
            frame.y(p.cost),
            p.day,
            money(p.cost),
            money(p.baseline)
        );
    }
    svg("Cost per day against always on", &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(24.0), 25.0);
        assert_eq!(nice(48.0), 50.0);
        assert_eq!(nice(0.013), 0.02);
        assert_eq!(nice(200.0), 200.0);
        assert_eq!((divisions(25.0), divisions(2.0), divisions(0.5)), (5, 4, 5));
        assert_eq!(
            (number(12.5, 2.5), number(20.0, 5.0), number(0.004, 0.001)),
            ("12.5".into(), "20".into(), "0.004".into())
        );
    }

    #[test]
    fn bars_stack_awake_under_asleep_within_the_frame() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let p = |i: i64, awake, asleep| Point {
            day: day + Duration::days(i),
            awake_hours: awake,
            asleep_hours: asleep,
            cost: awake * 0.05,
            baseline: (awake + asleep) * 0.05,
        };
        let svg = hours_svg(&[p(0, 0.0, 0.0), p(1, 4.0, 20.0), p(2, 24.0, 0.0)]);
        assert!(svg.contains("<title>2026-11-02: 4.0 h awake, 20.0 h asleep</title>"), "{svg}");
        assert!(svg.contains(">25 h</text>") && svg.contains(">0 h</text>"), "{svg}");
        // 24 h of 25 over the 226 px plot height: the awake bar of day 3 is 217.0 px tall.
        assert!(svg.contains("height=\"217.0\" fill=\"#e8912d\""), "{svg}");
        let short = hours_svg(&[p(0, 0.5, 0.3)]);
        assert!(
            short.contains(">50 min</text>") && short.contains(">10 min</text>"),
            "under an hour, minutes: {short}"
        );
        assert_eq!(
            (span(30.0), span(2.34), span(0.5), span(0.001)),
            ("30 h".into(), "2.3 h".into(), "30 min".into(), "4 s".into())
        );
        let cost = cost_svg(&[p(0, 0.0, 0.0), p(1, 4.0, 20.0)]);
        assert!(cost.contains("<polyline") && cost.contains("2026-11-02: $0.2000 (always on: $1.20)"), "{cost}");
        assert!(!svg.contains("NaN") && !cost.contains("NaN"));
    }
}
