//! Smoke test of the gateway benchmark: one tiny round of every scenario against every target,
//! with the debug `tollgate` next to the test executable's directory (skipped when it is not
//! built). Asserts only that requests succeed and the numbers are positive: timing on a shared
//! CI machine proves nothing.

#![allow(clippy::unwrap_used)] // a test: a failure should just panic

#[allow(dead_code)] // the binary uses parts of the harness this test does not
#[path = "../../src/gateway.rs"]
mod gateway;

use std::time::Duration;

use gateway::{Config, Scenario, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_succeeds_through_tollgate_and_direct() {
    // target/debug/deps/<test> → target/debug/tollgate
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().join("../tollgate");
    if !bin.is_file() {
        eprintln!(
            "skipping: {} not built (cargo build -p tollgate, or cargo test --workspace)",
            bin.display()
        );
        return;
    }
    let config = Config {
        warmup_requests: 5,
        requests: 30,
        sse_requests: 10,
        concurrency: 4,
        warmup: Duration::from_millis(20),
        window: Duration::from_millis(150),
        // Never wait for a quiet machine in CI.
        max_other_busy: 1.0,
        ..Config::new(bin).quick()
    };
    let report = gateway::run(&config, |line| eprintln!("{line}"))
        .await
        .unwrap();
    assert_eq!(report.total_errors(), 0, "{}", report.markdown());
    for scenario in Scenario::ALL {
        for target in [Target::Direct, Target::Tollgate, Target::TollgateInfo] {
            let samples = &report.samples[&(scenario, target)];
            assert_eq!(samples.len(), 1);
            let s = &samples[0];
            assert!(
                s.stats.n > 0 && s.rate > 0.0,
                "{scenario:?} {target:?}: {s:?}"
            );
            assert!(s.stats.p50 > 0.0 && s.stats.p99 >= s.stats.p50, "{s:?}");
        }
    }
    let markdown = report.markdown();
    assert!(markdown.contains("**Verdict:**"), "{markdown}");
}
