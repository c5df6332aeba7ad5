//! The report: medians over rounds as Markdown tables, the latency tollgate adds, and the
//! verdict against the aim of issue 3 (p99 added ≤ 1 ms at concurrency 1).

use std::fmt::Write as _;

use super::load::Sample;
use super::stats::{median, range};
use super::{Report, Scenario, Target};

/// A table row: metric name, the value of a sample, whether it is a rate (shown with a ratio).
type Row = (&'static str, fn(&Sample) -> f64, bool);

/// The aim: p99 added latency at concurrency 1, in µs.
pub const AIM_P99_ADDED_US: f64 = 1000.0;

impl Report {
    /// The samples of `scenario` via `target`, one per round.
    fn of(&self, scenario: Scenario, target: Target) -> &[Sample] {
        self.samples
            .get(&(scenario, target))
            .map_or(&[], Vec::as_slice)
    }

    /// The median over rounds of `f`.
    fn median_of(
        &self,
        scenario: Scenario,
        target: Target,
        f: impl Fn(&Sample) -> f64,
    ) -> Option<f64> {
        median(self.of(scenario, target).iter().map(f))
    }

    /// Per round, `f(target) − f(direct)` (the same round's samples).
    fn added(&self, scenario: Scenario, target: Target, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        let direct = self.of(scenario, Target::Direct);
        self.of(scenario, target)
            .iter()
            .zip(direct)
            .map(|(t, d)| f(t) - f(d))
            .collect()
    }

    /// The median over rounds of the added p99 at c=1 (HTTP/1.1 chat), in µs.
    pub fn p99_added(&self) -> Option<f64> {
        median(self.added(Scenario::Chat1, Target::Tollgate, |s| s.stats.p99))
    }

    /// Failed exchanges over the whole run.
    pub fn total_errors(&self) -> u64 {
        self.samples.values().flatten().map(|s| s.errors).sum()
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Medians over {} round(s); each round starts a fresh fake upstream and fresh proxies, \
             and measures every target back to back (order rotated per round).\n",
            self.config.rounds
        );
        self.results_table(&mut out);
        self.added_table(&mut out);
        self.verdict(&mut out);
        self.notes(&mut out);
        out
    }

    /// The measured targets, in report order.
    fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|t| self.config.targets.contains(t))
            .collect()
    }

    /// Rates (with the ratio to direct), percentiles, proxy CPU and upstream connections.
    fn results_table(&self, out: &mut String) {
        let targets = self.targets();
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        let _ = writeln!(out, "| scenario | metric | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---:|".repeat(targets.len()));
        for &scenario in &self.config.scenarios {
            let rate_name = match scenario {
                Scenario::Sse1 => "streams/s",
                _ => "requests/s",
            };
            let mut rows: Vec<Row> = vec![
                (rate_name, |s| s.rate, true),
                ("p50", |s| s.stats.p50, false),
                ("p99", |s| s.stats.p99, false),
            ];
            if scenario != Scenario::ChatN {
                rows.push(("p99.9", |s| s.stats.p999, false));
            }
            rows.push((
                "proxy CPU per request",
                |s| s.cpu_per_exchange_us().unwrap_or(f64::NAN),
                false,
            ));
            let label = scenario.label(self.config.concurrency);
            for (i, (metric, f, is_rate)) in rows.iter().enumerate() {
                let direct = self.median_of(scenario, Target::Direct, f);
                let cells: Vec<String> = targets
                    .iter()
                    .map(|&t| match self.median_of(scenario, t, f) {
                        None => "–".to_owned(),
                        Some(v) if *is_rate => match direct.filter(|_| t != Target::Direct) {
                            Some(d) if d > 0.0 => format!("{} ({:.2}×)", thousands(v), v / d),
                            _ => thousands(v),
                        },
                        Some(v) => micros(v),
                    })
                    .collect();
                let scenario_cell = if i == 0 { label.as_str() } else { "" };
                let _ = writeln!(
                    out,
                    "| {scenario_cell} | {metric} | {} |",
                    cells.join(" | ")
                );
            }
            let conns: Vec<String> = targets
                .iter()
                .map(|&t| {
                    self.median_of(scenario, t, |s| s.upstream_connections as f64)
                        .map_or("–".to_owned(), thousands)
                })
                .collect();
            let _ = writeln!(
                out,
                "| | TLS connections the upstream accepted | {} |",
                conns.join(" | ")
            );
        }
    }

    /// Through minus direct, per proxy target and scenario.
    fn added_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nAdded latency = the percentile through the proxy minus the same percentile direct, \
             in the same round (a difference of percentiles, not a percentile of differences); \
             median over rounds, [min – max] over rounds.\n"
        );
        let _ = writeln!(
            out,
            "| scenario | via | p50 added | p99 added | p99.9 added |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for &scenario in &self.config.scenarios {
            for t in self.targets().into_iter().filter(|t| *t != Target::Direct) {
                let cell = |f: fn(&Sample) -> f64| {
                    let added = self.added(scenario, t, f);
                    match (median(added.iter().copied()), range(added)) {
                        (Some(m), Some((lo, hi))) => {
                            format!("{} [{} – {}]", signed(m), signed(lo), signed(hi))
                        }
                        _ => "–".to_owned(),
                    }
                };
                let p999 = if scenario == Scenario::ChatN {
                    "–".to_owned()
                } else {
                    cell(|s| s.stats.p999)
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {p999} |",
                    scenario.label(self.config.concurrency),
                    t.name(),
                    cell(|s| s.stats.p50),
                    cell(|s| s.stats.p99),
                );
            }
        }
    }

    /// The verdict against [`AIM_P99_ADDED_US`].
    fn verdict(&self, out: &mut String) {
        match self.p99_added() {
            Some(p99) => {
                let verdict = if p99 <= AIM_P99_ADDED_US {
                    "meets"
                } else {
                    "misses"
                };
                let _ = writeln!(
                    out,
                    "\n**Verdict:** p99 added at concurrency 1 (HTTP/1.1 chat, RUST_LOG=warn) is \
                     {} → {verdict} the aim (≤ {}).",
                    micros(p99),
                    micros(AIM_P99_ADDED_US)
                );
            }
            None => {
                let _ = writeln!(out, "\n**Verdict:** not measured (no c=1 chat samples).");
            }
        }
    }

    fn notes(&self, out: &mut String) {
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\nMachine: {} cores, {}, kernel {}, {}; load average before {} / after {}. \
             {}. Run took {:.0} s.",
            m.cores,
            m.cpu_model,
            m.kernel,
            m.memory,
            self.load.0,
            self.load.1,
            self.version,
            self.elapsed.as_secs_f64()
        );
        if let Some(b) = median(self.info_log_bytes_per_request.iter().copied()) {
            let _ = writeln!(
                out,
                "At RUST_LOG=info tollgate wrote {b:.0} log bytes per chat request (median)."
            );
        }
        let errors = self.total_errors();
        let first = self
            .samples
            .values()
            .flatten()
            .find_map(|s| s.first_error.clone());
        match first {
            Some(e) => {
                let _ = writeln!(out, "**{errors} failed exchanges**; the first: {e}");
            }
            None => {
                let _ = writeln!(out, "No failed exchanges.");
            }
        }
        if self.retried > 0 || self.noisy_kept > 0 {
            let _ = writeln!(
                out,
                "{} sample(s) measured again because other work kept the machine > {:.0}% busy; \
                 {} kept although noisy.",
                self.retried,
                self.config.max_other_busy * 100.0,
                self.noisy_kept
            );
        }
    }
}

/// µs with a unit, ms beyond 10 ms.
fn micros(us: f64) -> String {
    if us.abs() >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn signed(us: f64) -> String {
    if us >= 0.0 {
        format!("+{}", micros(us))
    } else {
        format!("−{}", micros(-us))
    }
}

/// An integer with thin thousands separators.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(micros(412.4), "412 µs");
        assert_eq!(micros(12_345.0), "12.3 ms");
        assert_eq!(signed(-5.0), "−5 µs");
    }
}
