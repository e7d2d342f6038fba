//! The policy benchmark: this crate's policies against tonic's `balance_list` (and a
//! direct channel) on in-process fleets, or on real servers with `--target`.
//!
//! ```sh
//! cargo run --release -p tonic-balancer-bench                    # quick suite, about a minute
//! cargo run --release -p tonic-balancer-bench -- --full          # BENCH.md's sizes
//! cargo run --release -p tonic-balancer-bench -- --scenario tower-76,linkerd-2016
//! cargo run --release -p tonic-balancer-bench -- --full --scenario overhead
//! cargo run --release -p tonic-balancer-bench -- --scenario subsetting
//! valgrind --tool=callgrind target/release/bench --scenario overhead --arms round_robin
//! cargo run --release -p tonic-balancer-bench -- --target ipv4:127.0.0.1:5001,127.0.0.1:5002
//! ```
//!
//! Prints a table per scenario and writes `results.json` and `report.html` to `--out`.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tonic_balancer_bench::{Arm, Options, Progress, Scenario, ScenarioResult, Size};

/// Benchmark load-balancing policies.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Scenarios to run, comma-separated (healthy, one-slow, tower-76, linkerd-2016,
    /// kill-one, outage, overhead, subsetting, or "all"; `scale` runs on its own).
    /// Default: one-slow, kill-one, overhead.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Arms to run, comma-separated (round_robin, least_request, peak_ewma, pick_first,
    /// tonic_balance, direct). Default: all (direct only runs in overhead).
    #[arg(long, value_delimiter = ',')]
    arms: Vec<String>,
    /// Seed for backends' latencies and failures and for every channel's picks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Quick sizes: the default suite in about a minute (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The sizes BENCH.md gives (several minutes).
    #[arg(long)]
    full: bool,
    /// Where results.json and report.html go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Open-loop rate in calls per second (overrides the scenario's).
    #[arg(long)]
    rps: Option<f64>,
    /// Closed-loop outstanding calls (overrides the scenario's).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open-loop duration per arm in seconds (closed loops: a time cap).
    #[arg(long)]
    duration: Option<f64>,
    /// Closed-loop calls per arm (overhead: per arm and round at full concurrency).
    #[arg(long)]
    calls: Option<u64>,
    /// overhead: rounds the arms take turns over (default 3 quick, 7 full).
    #[arg(long)]
    rounds: Option<usize>,
    /// overhead: calls per arm and round at concurrency 1, for the added p50 (default a
    /// tenth of --calls; 0 skips that run).
    #[arg(long)]
    single_calls: Option<u64>,
    /// scale: endpoints in the channel (default 4 000; 10 000 with --full).
    #[arg(long)]
    endpoints: Option<usize>,
    /// Internal: serve the scale scenario's fleet (a child process of the benchmark).
    #[arg(long, hide = true)]
    serve_fleet: bool,
    /// Run against real servers implementing grpc.testing.TestService at this gRPC target
    /// instead of in-process fleets (no fault injection).
    #[arg(long)]
    target: Option<String>,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn arm_started(&self, scenario: &str, arm: &str, expected_calls: u64) {
        self.0.reset();
        self.0.set_length(expected_calls);
        self.0.set_message(format!("{scenario} / {arm}"));
    }
    fn call_done(&self) {
        self.0.inc(1);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "observability")]
    let _observability = observability::install();
    let args = Args::parse();
    if args.serve_fleet {
        return tonic_balancer_bench::scale::serve_fleet().await;
    }
    // `scale` has its own measurements and table (see the `scale` module).
    let scale = args.scenario.iter().any(|s| s == "scale");
    let others: Vec<String> = args
        .scenario
        .iter()
        .filter(|s| *s != "scale")
        .cloned()
        .collect();
    if scale && others.is_empty() {
        let endpoints = args
            .endpoints
            .unwrap_or(if args.full { 10_000 } else { 4_000 });
        let concurrency = args.concurrency.unwrap_or(8);
        let result = tonic_balancer_bench::scale::run(endpoints, concurrency, args.seed).await?;
        print!("{}", tonic_balancer_bench::scale::render(&result));
        std::fs::create_dir_all(&args.out)?;
        let json = args.out.join("scale.json");
        std::fs::write(&json, serde_json::to_string_pretty(&result)?)?;
        println!("\nwrote {}", json.display());
        return Ok(());
    }
    if scale {
        return Err("run --scenario scale on its own".into());
    }
    let scenarios = parse_scenarios(&others)?;
    let arms = parse_arms(&args.arms)?;
    let mut options = Options::default();
    options.seed = args.seed;
    options.size = if args.full { Size::Full } else { Size::Quick };
    options.rps = args.rps.filter(|r| *r > 0.0);
    options.concurrency = args.concurrency.filter(|c| *c > 0);
    options.calls = args.calls.filter(|c| *c > 0);
    options.rounds = args.rounds.filter(|r| *r > 0);
    options.single_calls = args.single_calls;
    options.duration = match args.duration {
        Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(secs) => {
            return Err(format!("--duration must be a positive number, got {secs}").into());
        }
        None => None,
    };

    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:28} [{bar:40}] {pos}/{len} calls ({eta})")?
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let progress = Bar(bar);

    let mut results: Vec<ScenarioResult> = Vec::new();
    if let Some(target) = &args.target {
        let result = tonic_balancer_bench::run_external(target, &arms, &options, &progress).await?;
        progress
            .0
            .suspend(|| print!("{}", tonic_balancer_bench::render_table(&result)));
        results.push(result);
    } else {
        for scenario in scenarios {
            let result =
                tonic_balancer_bench::run_scenario(scenario, &arms, &options, &progress).await?;
            progress
                .0
                .suspend(|| print!("{}", tonic_balancer_bench::render_table(&result)));
            results.push(result);
        }
    }
    progress.0.finish_and_clear();

    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("results.json");
    let html = args.out.join("report.html");
    std::fs::write(&json, tonic_balancer_bench::to_json(&results))?;
    std::fs::write(&html, tonic_balancer_bench::render_html(&results))?;
    println!("\nwrote {} and {}", json.display(), html.display());
    Ok(())
}

fn parse_scenarios(names: &[String]) -> Result<Vec<Scenario>, String> {
    match names {
        [] => Ok(Scenario::QUICK_SUITE.to_vec()),
        [all] if all == "all" => Ok(Scenario::ALL.to_vec()),
        names => names
            .iter()
            .map(|n| {
                Scenario::parse(n).ok_or_else(|| {
                    let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario {n:?}; known: {}", known.join(", "))
                })
            })
            .collect(),
    }
}

fn parse_arms(names: &[String]) -> Result<Vec<Arm>, String> {
    if names.is_empty() {
        return Ok(Arm::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Arm::parse(n).ok_or_else(|| {
                let known: Vec<_> = Arm::ALL.iter().map(|a| a.name()).collect();
                format!("unknown arm {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// The `observability` feature: real sinks for the channel's metrics and spans.
#[cfg(feature = "observability")]
mod observability {
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
    use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
    use std::time::Duration;

    /// Takes every span and drops it at its end: the SDK records spans in full (a
    /// provider without a processor would not), and no exporter cost is measured.
    #[derive(Debug)]
    struct Discard;

    impl SpanProcessor for Discard {
        fn on_start(&self, _: &mut Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            drop(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn set_resource(&mut self, _: &Resource) {}
    }

    /// What was installed; the providers live as long as it does.
    pub(crate) struct Installed {
        _meter: Option<SdkMeterProvider>,
        _tracer: Option<SdkTracerProvider>,
    }

    /// Installs what `TONIC_BALANCER_BENCH_OTEL` asks for (`all`, `metrics`, `none`).
    pub(crate) fn install() -> Installed {
        let what = std::env::var("TONIC_BALANCER_BENCH_OTEL").unwrap_or_else(|_| "all".into());
        eprintln!("observability sinks: {what}");
        let mut installed = Installed {
            _meter: None,
            _tracer: None,
        };
        if what == "none" {
            return installed;
        }
        // Sync instruments aggregate as they record; the periodic reader's default
        // 60 s interval exports at most a few times into memory during a run.
        let meter = SdkMeterProvider::builder()
            .with_periodic_exporter(InMemoryMetricExporter::default())
            .build();
        opentelemetry::global::set_meter_provider(meter.clone());
        installed._meter = Some(meter);
        if let Err(error) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()
        {
            eprintln!("no metrics recorder: {error}");
        }
        if what == "all" {
            let tracer = SdkTracerProvider::builder()
                .with_span_processor(Discard)
                .build();
            opentelemetry::global::set_tracer_provider(tracer.clone());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            installed._tracer = Some(tracer);
        }
        installed
    }
}
