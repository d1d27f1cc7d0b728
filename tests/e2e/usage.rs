//! `GET /usage` through the real binary: a session's awake and asleep time, cost and saving as
//! JSON and as CSV, its wake and sleep counted, and a bad question answered with a precise 422.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::harness::Wakeway;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn usage_answers_awake_and_asleep_time_cost_and_saving_as_json_and_csv() {
    let w = Wakeway::start(&[]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.sleep(&id).await;
    w.wait_state(&id, "sleeping", LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = w.api(Method::GET, "/usage?group_by=session").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["count"], 1, "{v}");
    let row = &v["rows"][0];
    assert_eq!(row["uuid"], id.as_str(), "{v}");
    assert_eq!(row["user_id"], "user@example.com");
    let num = |name: &str| row[name].as_f64().unwrap_or_else(|| panic!("{name} in {row}"));
    assert!(num("awake_hours") * 3600.0 >= 1.2, "it ran at least the 1.2 s waited: {row}");
    assert!(num("sleeping_hours") * 3600.0 >= 0.3, "it slept at least the 0.3 s waited: {row}");
    assert!(num("cost") > 0.0 && num("baseline_cost") > num("cost"), "{row}");
    assert!((num("saved") - (num("baseline_cost") - num("cost"))).abs() < 2e-6, "{row}");
    assert_eq!(row["sleeps"]["api"], 1, "{row}");
    assert_eq!(row["wakes"].as_object().unwrap().values().filter_map(Value::as_u64).sum::<u64>(), 1, "{row}");
    assert_eq!(v["total"]["cost"], row["cost"]);

    let r = w.api(Method::GET, "/usage?group_by=user").header("accept", "text/csv").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "user_id,awake_hours,sleeping_hours,deleted_hours,cost,baseline_cost,saved,saved_percent,wakes,sleeps"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].starts_with("user@example.com,") && lines[1].ends_with(",api=1"), "{csv}");

    let r = w.api(Method::GET, "/usage?from=yesterday").send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_date", "{v}");

    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_state_seconds_total{state=\"running\",tier=\"small\"}"), "{metrics}");
}
