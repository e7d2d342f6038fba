//! The benchmark harness's core in a tiny configuration: its JSON keeps its invariants.

use serde_json::Value;
use std::time::Duration;
use tonic_balancer_bench::{self as bench, Arm, NoProgress, Options, Scenario};

#[tokio::test]
async fn a_tiny_run_writes_consistent_results() {
    let mut options = Options::default();
    options.seed = 7;
    options.rps = Some(200.0);
    options.duration = Some(Duration::from_secs(1));
    let arms = [
        Arm::RoundRobin,
        Arm::PeakEwma,
        Arm::TonicBalance,
        Arm::PeakEwmaRetry,
    ];
    let run = async {
        let mut results = Vec::new();
        for scenario in [Scenario::OneSlow, Scenario::KillOne] {
            results.push(
                bench::run_scenario(scenario, &arms, &options, &NoProgress)
                    .await
                    .unwrap(),
            );
        }
        results
    };
    let results = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("benchmark run timed out");

    let json: Value = serde_json::from_str(&bench::to_json(&results)).unwrap();
    let scenarios = json.as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    for scenario in scenarios {
        assert_eq!(scenario["seed"], 7);
        let arms = scenario["arms"].as_array().unwrap();
        let names: Vec<&str> = arms.iter().map(|a| a["arm"].as_str().unwrap()).collect();
        // The retrying arm runs only where the targets are about retries.
        match scenario["scenario"].as_str().unwrap() {
            "one-slow" => assert_eq!(names, ["round_robin", "peak_ewma", "tonic_balance"]),
            _ => assert_eq!(
                names,
                [
                    "round_robin",
                    "peak_ewma",
                    "tonic_balance",
                    "peak_ewma+retry"
                ]
            ),
        }
        for arm in arms {
            let calls = arm["calls"].as_u64().unwrap();
            let ok = arm["ok"].as_u64().unwrap();
            let errors: u64 = arm["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(calls, 200, "{arm}");
            assert_eq!(ok + errors, calls, "{arm}");
            assert!(arm["attempts"].as_u64().unwrap() >= calls);
            assert!(arm["throughput_rps"].as_f64().unwrap() > 0.0);
            let l = &arm["latency_ms"];
            let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
                .iter()
                .map(|k| l[*k].as_f64().unwrap())
                .collect();
            assert!(
                p.windows(2).all(|w| w[0] <= w[1]),
                "percentiles out of order: {p:?}"
            );
            assert!(p[0] > 0.0);
            let shares: f64 = arm["backend_share"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
        }
    }
    // The report renders every scenario, with no network references.
    let html = bench::render_html(&results);
    assert!(html.contains("one-slow") && html.contains("kill-one"));
    assert!(!html.contains("src=\"http"));
    let table = bench::render_table(&results[0]);
    assert!(table.contains("peak_ewma") && table.contains("tonic_balance"));
    // kill-one: the retrying arm sent at least one attempt per call, and lost none of
    // the calls in flight on the killed backend.
    let retrying = &scenarios[1]["arms"][3];
    assert!(retrying["attempts"].as_u64().unwrap() >= 200);
    assert_eq!(retrying["ok"].as_u64().unwrap(), 200, "{retrying}");
}
