//! Smoke tests of `iotmon bench`: tiny scenarios that finish in seconds. They check that a
//! report is produced and adds up (published = ingested + lost, percentiles in order, every
//! viewer served), never how fast anything was: timing belongs to the benchmarks themselves
//! (docs/benchmarks.md).
use std::process::Command;

use serde_json::Value;

/// Runs `iotmon bench ARGS --json` and parses the report; fails the test if the bench fails.
pub(crate) fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        // Debian installs mosquitto in /usr/sbin, not always on a user's PATH.
        .env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .expect("iotmon bench runs");
    assert!(
        output.status.success(),
        "iotmon bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the report is not JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn u64_of(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

fn f64_of(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

#[test]
fn a_tiny_reference_run_reports_consistent_figures() {
    let report = bench(&[
        "reference",
        "--devices",
        "40",
        "--interval",
        "400ms",
        "--viewers",
        "4",
        "--visible",
        "10",
        "--warmup",
        "500ms",
        "--measure",
        "2s",
        // About 8 alerts a second (100 readings/s, each anomaly lasting 3 readings), where
        // the reference's default would make one every few seconds.
        "--anomaly-rate",
        "0.1",
    ]);
    assert_eq!(report["scenario"], "reference");
    let run = &report["run"];
    assert_eq!(u64_of(run, "devices"), 40);
    assert_eq!(u64_of(run, "viewers"), 4);
    assert_eq!(u64_of(run, "viewers_connected"), 4, "{run}");
    let published = u64_of(run, "published_total");
    let ingested = u64_of(run, "ingested_total");
    assert!(published > 0, "{run}");
    assert_eq!(
        run["lost"].as_i64(),
        Some(published as i64 - ingested as i64)
    );
    assert_eq!(
        run["lost"].as_i64(),
        Some(0),
        "a tiny run loses nothing: {run}"
    );
    assert!((f64_of(run, "offered_per_second") - 100.0).abs() < 1e-6);
    assert!(f64_of(run, "window_seconds") >= 2.0);
    assert!(f64_of(run, "ingested_per_second") > 0.0);
    assert!(f64_of(run, "iotmon_peak_rss_mib") > 0.0);
    assert!(f64_of(run, "bytes_per_second_per_viewer") > 0.0);
    let latency = &run["latency"];
    assert!(u64_of(latency, "count") > 0, "{latency}");
    assert_percentiles_in_order(latency);
    // Every raise reaches at least the viewer subscribed to the fleet's group.
    assert!(f64_of(run, "alerts_raised_per_second") > 0.0, "{run}");
    let alerts = &run["alert_latency"];
    assert!(u64_of(alerts, "count") > 0, "{alerts}");
    assert_percentiles_in_order(alerts);
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 5);
    assert!(targets.iter().all(|target| target["met"].is_boolean()));
    let alert_target = targets
        .iter()
        .find(|target| target["what"] == "alert delay")
        .expect("an alert delay target");
    assert_eq!(alert_target["target"], "p99 ≤ 50 ms");
    assert!(
        alert_target["measured"]
            .as_str()
            .is_some_and(|text| text.contains(&format!("p99 {} ms", u64_of(alerts, "p99_ms")))),
        "{alert_target}"
    );
}

fn assert_percentiles_in_order(percentiles: &Value) {
    let order: Vec<u64> = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
        .iter()
        .map(|key| u64_of(percentiles, key))
        .collect();
    assert!(
        order.windows(2).all(|pair| pair[0] <= pair[1]),
        "{percentiles}"
    );
}

#[test]
fn a_tiny_broker_comparison_runs_both_brokers_side_by_side() {
    // Two steps per search (400/s, then 600/s; 900/s is above --max).
    let report = bench(&[
        "broker",
        "--connections",
        "20",
        "--qos",
        "0,1",
        "--rate",
        "400",
        "--max",
        "700",
        "--step-factor",
        "1.5",
        "--warmup",
        "300ms",
        "--measure",
        "1s",
    ]);
    assert_eq!(report["scenario"], "broker");
    let searches = report["searches"].as_array().expect("searches");
    let names: Vec<&str> = searches
        .iter()
        .map(|search| search["broker"].as_str().expect("broker name"))
        .collect();
    assert_eq!(
        names,
        ["iotmon broker", "mosquitto", "iotmon broker", "mosquitto"]
    );
    let runs = report["runs"].as_array().expect("runs");
    for search in searches {
        assert_eq!(u64_of(search, "connections_up"), 20, "{search}");
        let published = u64_of(search, "published_total");
        let delivered = u64_of(search, "delivered_total");
        assert!(published > 0, "{search}");
        assert_eq!(
            search["lost"].as_i64(),
            Some(published as i64 - delivered as i64)
        );
        if search["qos"] == 1 {
            assert_eq!(
                search["lost"].as_i64(),
                Some(0),
                "QoS 1 on loopback: {search}"
            );
        }
        let steps: Vec<&Value> = runs
            .iter()
            .filter(|run| run["broker"] == search["broker"] && run["qos"] == search["qos"])
            .collect();
        let numbers: Vec<u64> = steps.iter().map(|run| u64_of(run, "step")).collect();
        assert!(!numbers.is_empty() && numbers.len() <= 2, "{numbers:?}");
        assert!(numbers.iter().zip(1..).all(|(&n, i)| n == i), "{numbers:?}");
        for run in &steps {
            // Offered = published + held back + missed, in the same window.
            let window = f64_of(run, "window_seconds");
            let offered = f64_of(run, "offered_per_second") * window;
            let accounted = f64_of(run, "published_per_second") * window
                + u64_of(run, "held_back") as f64
                + u64_of(run, "missed") as f64;
            assert!((offered - accounted).abs() < 0.5, "{run}");
            assert!(f64_of(run, "delivered_per_second") > 0.0, "{run}");
            assert!(run["sustained"].is_boolean(), "{run}");
        }
        // The search's result is its fastest sustained step.
        let fastest = steps
            .iter()
            .filter(|run| run["sustained"] == true)
            .map(|run| f64_of(run, "delivered_per_second").min(f64_of(run, "published_per_second")))
            .fold(None, |best: Option<f64>, rate| {
                Some(best.map_or(rate, |b| b.max(rate)))
            });
        assert_eq!(search["sustained_per_second"].as_f64(), fastest, "{search}");
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2);
    for (ratio, pair) in ratios.iter().zip(searches.chunks(2)) {
        let (ours, theirs) = (
            &pair[0]["sustained_per_second"],
            &pair[1]["sustained_per_second"],
        );
        if let (Some(ours), Some(theirs)) = (ours.as_f64(), theirs.as_f64()) {
            assert!(
                (f64_of(ratio, "throughput_ratio") - ours / theirs).abs() < 1e-9,
                "{ratio}"
            );
        }
    }
}

#[test]
fn a_tiny_viewer_cost_run_measures_each_fleet_with_and_without_viewers() {
    let report = bench(&[
        "viewer-cost",
        "--fleets",
        "20,60",
        "--interval",
        "500ms",
        "--devices-per-connection",
        "10",
        "--readings-per-message",
        "2",
        "--viewers",
        "6",
        "--visible",
        "5",
        "--warmup",
        "500ms",
        "--measure",
        "2s",
    ]);
    assert_eq!(report["scenario"], "viewer_cost");
    let fleets = report["fleets"].as_array().expect("fleets");
    let sizes: Vec<u64> = fleets
        .iter()
        .map(|fleet| u64_of(fleet, "devices"))
        .collect();
    assert_eq!(sizes, [20, 60]);
    for fleet in fleets {
        let (without, with) = (&fleet["without_viewers"], &fleet["with_viewers"]);
        assert_eq!(u64_of(without, "viewers"), 0);
        assert_eq!(u64_of(with, "viewers"), 6);
        assert_eq!(u64_of(with, "viewers_connected"), 6, "{with}");
        for run in [without, with] {
            assert_eq!(u64_of(run, "devices"), u64_of(fleet, "devices"));
            assert_eq!(run["lost"].as_i64(), Some(0), "{run}");
            assert!(f64_of(run, "iotmon_rss_mib") > 0.0, "{run}");
        }
        assert_eq!(
            f64_of(fleet, "bytes_per_second_per_viewer"),
            f64_of(with, "bytes_per_second_per_viewer")
        );
        assert!(
            f64_of(fleet, "bytes_per_second_per_viewer") > 0.0,
            "{fleet}"
        );
        let extra_cpu = f64_of(with, "iotmon_cpu_percent") - f64_of(without, "iotmon_cpu_percent");
        assert!(
            (f64_of(fleet, "cpu_percent_per_1000_viewers") - extra_cpu / 6.0 * 1000.0).abs() < 1e-6,
            "{fleet}"
        );
    }
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 4);
    assert!(targets.iter().all(|target| target["met"].is_boolean()));
}

/// A figure of a fault's section by what it is.
fn fault_figure(section: &Value, what: &str) -> f64 {
    section["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .find(|figure| figure["what"] == what)
        .and_then(|figure| figure["value"].as_f64())
        .unwrap_or_else(|| panic!("{what} in {section}"))
}

#[test]
fn a_tiny_fault_run_kills_and_restarts_serve_and_storms_both_brokers() {
    let report = bench(&[
        "faults",
        "--faults",
        "kill,storm",
        "--devices",
        "40",
        "--interval",
        "400ms",
        "--anomaly-rate",
        "0.05",
        "--warmup",
        "500ms",
        "--measure",
        "2s",
    ]);
    assert_eq!(report["scenario"], "faults");
    let sections = report["faults"].as_array().expect("faults");
    let names: Vec<&str> = sections
        .iter()
        .map(|section| section["fault"].as_str().expect("fault"))
        .collect();
    assert_eq!(names, ["kill", "storm"]);
    let kill = &sections[0];
    assert!(
        fault_figure(kill, "held by the store afterwards") > 0.0,
        "{kill}"
    );
    let ingested = fault_figure(kill, "ingested before the kill")
        + fault_figure(kill, "ingested after the restart");
    let lost = fault_figure(kill, "lost by iotmon (ingested, not stored)");
    assert_eq!(
        ingested - fault_figure(kill, "left out of rollups as late") - lost,
        fault_figure(kill, "held by the store afterwards"),
        "the loss adds up: {kill}"
    );
    let storm = &sections[1];
    assert_eq!(
        fault_figure(storm, "iotmon broker: connected"),
        40.0,
        "{storm}"
    );
    assert_eq!(fault_figure(storm, "mosquitto: connected"), 40.0, "{storm}");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|target| target["met"].is_boolean()));
}
