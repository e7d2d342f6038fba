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
            // Only the overhead scenario compares with direct.
            assert!(arm.get("overhead").is_none(), "{arm}");
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

/// The overhead scenario in miniature: arms interleaved over rounds, each with its
/// throughput per round, CPU per call, and p50 at concurrency 1, compared with direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overhead_scenario_compares_interleaved_rounds_with_direct() {
    let mut options = Options::default();
    options.seed = 3;
    options.rounds = Some(2);
    options.calls = Some(120);
    options.concurrency = Some(4);
    options.single_calls = Some(30);
    let arms = [Arm::Direct, Arm::RoundRobin, Arm::PeakEwma];
    let run = bench::run_scenario(Scenario::Overhead, &arms, &options, &NoProgress);
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("benchmark run timed out")
        .unwrap();
    let json: Value = serde_json::from_str(&bench::to_json(std::slice::from_ref(&result))).unwrap();
    let arms = json[0]["arms"].as_array().unwrap();
    let names: Vec<&str> = arms.iter().map(|a| a["arm"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "round_robin", "peak_ewma"]);
    for arm in arms {
        // The documented fields keep their meaning: the runs at full concurrency.
        assert_eq!(arm["calls"].as_u64().unwrap(), 240, "{arm}");
        assert_eq!(arm["ok"].as_u64().unwrap(), 240, "{arm}");
        assert!(arm["attempts"].as_u64().unwrap() >= 240, "{arm}");
        assert!(arm["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(arm["latency_ms"]["p50"].as_f64().unwrap() > 0.0);

        let o = &arm["overhead"];
        assert_eq!(o["rounds"], 2, "{arm}");
        let per_round: Vec<f64> = o["round_throughput_rps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(per_round.len(), 2);
        assert!(per_round.iter().all(|r| *r > 0.0), "{per_round:?}");
        assert!(o["throughput_ratio_to_direct"].as_f64().unwrap() > 0.0);
        #[cfg(unix)]
        assert!(o["cpu_us_per_call"].as_f64().unwrap() > 0.0, "{o}");
        assert_eq!(o["single_calls"], 60);
        assert!(o["single_p50_ms"].as_f64().unwrap() > 0.0);
        assert!(o["added_p50_us"].as_f64().unwrap().is_finite());
    }
    // Direct against itself: ratio 1, nothing added.
    let direct = &arms[0]["overhead"];
    assert_eq!(direct["throughput_ratio_to_direct"], 1.0);
    assert_eq!(direct["added_p50_us"], 0.0);

    let table = bench::render_table(&result);
    assert!(
        table.contains("rps/direct") && table.contains("2 rounds"),
        "{table}"
    );
    assert!(
        bench::render_html(std::slice::from_ref(&result))
            .contains("Overhead: 2 interleaved rounds")
    );
}

/// One arm alone still runs (how a callgrind count is taken), without direct's ratios.
#[tokio::test]
async fn the_overhead_scenario_runs_one_arm_alone() {
    let mut options = Options::default();
    options.rounds = Some(1);
    options.calls = Some(50);
    options.single_calls = Some(0);
    let run = bench::run_scenario(
        Scenario::Overhead,
        &[Arm::RoundRobin],
        &options,
        &NoProgress,
    );
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("benchmark run timed out")
        .unwrap();
    let json: Value = serde_json::from_str(&bench::to_json(&[result])).unwrap();
    let arm = &json[0]["arms"][0];
    assert_eq!(arm["arm"], "round_robin");
    assert_eq!(arm["calls"], 50);
    let o = &arm["overhead"];
    assert_eq!(o["rounds"], 1);
    assert_eq!(o["single_calls"], 0);
    assert!(o.get("throughput_ratio_to_direct").is_none(), "{o}");
    assert!(o.get("added_p50_us").is_none(), "{o}");
}

/// The subsetting scenario's JSON: A68's spread, deterministic subsetting's exact one,
/// and the real channels' connections all add up.
#[tokio::test]
async fn the_subsetting_scenario_reports_spread_and_churn() {
    let options = Options::default();
    let run = bench::run_scenario(Scenario::Subsetting, &[], &options, &NoProgress);
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("benchmark run timed out")
        .unwrap();
    let json: Value = serde_json::from_str(&bench::to_json(&[result])).unwrap();
    let arms = json[0]["arms"].as_array().unwrap();
    let names: Vec<&str> = arms.iter().map(|a| a["arm"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "random_subsetting",
            "deterministic_subsetting",
            "random_subsetting_real"
        ]
    );
    for arm in arms {
        let f = &arm["subsetting"];
        let (clients, servers, size) = (
            f["clients"].as_f64().unwrap(),
            f["servers"].as_f64().unwrap(),
            f["subset_size"].as_f64().unwrap(),
        );
        // Every client holds its whole subset, and the servers' mean adds up to it.
        assert_eq!(
            f["connections_per_client"]["min"].as_f64(),
            Some(size),
            "{f}"
        );
        assert_eq!(
            f["connections_per_client"]["max"].as_f64(),
            Some(size),
            "{f}"
        );
        let mean = f["connections_per_server"]["mean"].as_f64().unwrap();
        assert!((mean - clients * size / servers).abs() < 1e-9, "{f}");
        assert!(f["max_over_mean_load"].as_f64().unwrap() >= 1.0, "{f}");
    }
    let random = &arms[0]["subsetting"];
    let deterministic = &arms[1]["subsetting"];
    assert!(random["churn_per_client"].as_f64().unwrap() <= 1.0);
    assert_eq!(deterministic["max_over_mean_load"].as_f64(), Some(1.0));
    assert!(random["max_over_mean_load"].as_f64().unwrap() > 1.0);
}
