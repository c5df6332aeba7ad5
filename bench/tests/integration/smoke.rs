//! Smoke test: every scenario for ~200 ms against direct and tollgate (and HAProxy when it is
//! installed), so CI exercises the harness end to end in a few seconds. Numbers are not checked,
//! only that each is nonzero and error-free.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_bench::Config;
use tollgate_bench::load::Scenario;
use tollgate_bench::target::{self, Kind};

/// `$TOLLGATE_BIN`, else `target/<profile>/tollgate` beside this test's `deps/` directory.
fn tollgate_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent().and_then(Path::parent)?.join("tollgate");
    candidate.is_file().then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_direct_tollgate_and_haproxy() {
    let Some(bin) = tollgate_bin() else {
        eprintln!("skipped: no tollgate binary beside the test (run `cargo build -p tollgate`)");
        return;
    };
    let haproxy = target::find_on_path("haproxy");
    let mut config = Config::new(bin, haproxy.clone());
    config.load.warmup = Duration::from_millis(50);
    config.load.duration = Duration::from_millis(200);
    config.load.connections = 8;
    config.load.new_conn_concurrency = 4;
    config.rounds = 1;
    config.idle_window = Duration::from_millis(100);
    // CI shares the machine: never wait for quiet here, the numbers are not checked.
    config.noisy_retries = 0;
    config.targets = vec![Kind::Direct, Kind::Tollgate];
    if haproxy.is_some() {
        config.targets.push(Kind::Haproxy);
    } else {
        eprintln!("haproxy not installed: measuring direct and tollgate only");
    }

    let report = tollgate_bench::run(&config, |line| eprintln!("{line}"))
        .await
        .expect("the run completes");
    println!("{report}");
    for scenario in Scenario::ALL {
        for &kind in &config.targets {
            let rate = report.median_rate(scenario, kind).unwrap_or(0.0);
            assert!(
                rate > 0.0,
                "{} against {} measured nothing",
                scenario.name(),
                kind.name()
            );
        }
        assert!(
            report
                .ratio(scenario, Kind::Tollgate, Kind::Direct)
                .is_some()
        );
    }
    assert_eq!(report.total_errors(), 0, "errors in the run:\n{report}");
}
