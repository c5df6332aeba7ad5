//! The report: per scenario a table of medians, spreads, ratios and proxy CPU cost; then a
//! summary of the ratios; the machine, versions and settings first, so a pasted table carries
//! its context.

use std::collections::BTreeMap;
use std::fmt::{self, Display, Write as _};

use crate::Config;
use crate::load::{Sample, Scenario};
use crate::proc::Machine;
use crate::target::Kind;

/// A finished run.
#[derive(Debug)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// /proc/loadavg before the run.
    pub load_before: String,
    /// /proc/loadavg after the run.
    pub load_after: String,
    /// `(program, version line)`.
    pub versions: Vec<(String, String)>,
    /// The settings.
    pub config: Config,
    /// Every sample, by scenario and target, in round order.
    pub samples: BTreeMap<(Scenario, Kind), Vec<Sample>>,
    /// Skipped targets, log-line counts.
    pub notes: Vec<String>,
}

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// What a ratio divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// One target's median.
    Of(Kind),
    /// The better median of the HAProxy targets, per scenario: the best L4 router here.
    BestHaproxy,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Base::Of(kind) => kind.name(),
            Base::BestHaproxy => "best haproxy",
        }
    }
}

impl Report {
    /// Median rate of `kind` in `scenario`.
    pub fn median_rate(&self, scenario: Scenario, kind: Kind) -> Option<f64> {
        median(self.samples.get(&(scenario, kind))?.iter().map(|s| s.rate))
    }

    /// `a ÷ b` of the median rates.
    pub fn ratio(&self, scenario: Scenario, a: Kind, b: Kind) -> Option<f64> {
        self.ratio_to(scenario, a, Base::Of(b))
    }

    /// `a ÷ base` of the median rates.
    pub fn ratio_to(&self, scenario: Scenario, a: Kind, base: Base) -> Option<f64> {
        let a = self.median_rate(scenario, a)?;
        let b = self.base_rate(scenario, base)?;
        (b > 0.0).then_some(a / b)
    }

    fn base_rate(&self, scenario: Scenario, base: Base) -> Option<f64> {
        match base {
            Base::Of(kind) => self.median_rate(scenario, kind),
            Base::BestHaproxy => [Kind::Haproxy, Kind::Haproxy1T]
                .into_iter()
                .filter_map(|k| self.median_rate(scenario, k))
                .reduce(f64::max),
        }
    }

    /// Every error counted in any sample.
    pub fn total_errors(&self) -> u64 {
        self.samples.values().flatten().map(|s| s.errors).sum()
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.samples.keys().map(|(_, k)| *k).collect();
        kinds.dedup();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    fn scenario_table(&self, out: &mut String, scenario: Scenario) -> fmt::Result {
        let l = &self.config.load;
        let what = match scenario {
            Scenario::Throughput => {
                format!("`GET /1m` over {} keep-alive connections", l.connections)
            }
            Scenario::Small => {
                format!("`GET /small` over {} keep-alive connections", l.connections)
            }
            Scenario::NewConn => format!(
                "connect + full TLS 1.3 handshake + `GET /small` + close, {} in flight",
                l.new_conn_concurrency
            ),
        };
        writeln!(
            out,
            "### {} — {what} ({}, higher is better)\n",
            scenario.name(),
            scenario.unit()
        )?;
        writeln!(
            out,
            "| target | median | min – max | ÷ direct | ÷ best haproxy | proxy {} | machine busy | other load | errors |",
            scenario.cost_unit()
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for kind in self.kinds() {
            let Some(samples) = self.samples.get(&(scenario, kind)) else {
                continue;
            };
            let rates = samples.iter().map(|s| s.rate);
            let min = rates.clone().fold(f64::INFINITY, f64::min);
            let max = rates.clone().fold(0.0, f64::max);
            let med = median(rates).unwrap_or(0.0);
            let cost = median(samples.iter().filter_map(|s| s.cost(scenario)));
            let busy = median(samples.iter().filter_map(|s| s.machine_busy));
            // The worst round: one noisy window is what widens a spread.
            let other = samples.iter().filter_map(|s| s.other_busy).reduce(f64::max);
            let errors: u64 = samples.iter().map(|s| s.errors).sum();
            writeln!(
                out,
                "| {} | {} | {} – {} | {} | {} | {} | {} | {} | {errors} |",
                kind.name(),
                rate(scenario, med),
                rate(scenario, min),
                rate(scenario, max),
                opt(self.ratio(scenario, kind, Kind::Direct), 2),
                opt(self.ratio_to(scenario, kind, Base::BestHaproxy), 2),
                opt(
                    cost,
                    if scenario == Scenario::Throughput {
                        2
                    } else {
                        1
                    }
                ),
                percent(busy),
                percent(other),
            )?;
        }
        writeln!(out)
    }

    fn summary(&self, out: &mut String) -> fmt::Result {
        let pairs = [
            (Kind::Tollgate, Base::Of(Kind::Direct)),
            (Kind::Haproxy, Base::Of(Kind::Direct)),
            (Kind::Haproxy1T, Base::Of(Kind::Direct)),
            (Kind::Tollgate, Base::BestHaproxy),
            (Kind::TollgateNoLog, Base::Of(Kind::Direct)),
            (Kind::TollgateNoLog, Base::BestHaproxy),
            (Kind::Tollgate1T, Base::BestHaproxy),
            (Kind::Tollgate1T, Base::Of(Kind::Haproxy1TLog)),
            (Kind::Candidate, Base::Of(Kind::Tollgate)),
            (Kind::Candidate, Base::BestHaproxy),
        ];
        let kinds = self.kinds();
        let present = |base: Base| match base {
            Base::Of(kind) => kinds.contains(&kind),
            Base::BestHaproxy => kinds.contains(&Kind::Haproxy) || kinds.contains(&Kind::Haproxy1T),
        };
        let pairs: Vec<_> = pairs
            .into_iter()
            .filter(|(a, b)| kinds.contains(a) && present(*b))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        writeln!(out, "### Ratios of medians (1.00 = same rate)\n")?;
        write!(out, "| scenario |")?;
        for (a, b) in &pairs {
            write!(out, " {} ÷ {} |", a.name(), b.name())?;
        }
        writeln!(out)?;
        writeln!(out, "|---|{}", "---:|".repeat(pairs.len()))?;
        for &scenario in &self.config.scenarios {
            write!(out, "| {} |", scenario.name())?;
            for &(a, b) in &pairs {
                write!(out, " {} |", opt(self.ratio_to(scenario, a, b), 3))?;
            }
            writeln!(out)?;
        }
        writeln!(out)
    }
}

fn rate(scenario: Scenario, v: f64) -> String {
    match scenario {
        Scenario::Throughput => format!("{v:.1}"),
        Scenario::Small | Scenario::NewConn => format!("{v:.0}"),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        let c = &self.config;
        let mut out = String::new();
        writeln!(
            out,
            "- machine: {} cores, {}, {} memory, Linux {}",
            m.cores, m.cpu_model, m.memory, m.kernel
        )?;
        writeln!(
            out,
            "- load average (1/5/15 min): {} before, {} after",
            self.load_before, self.load_after
        )?;
        for (program, version) in &self.versions {
            writeln!(out, "- {program}: {version}")?;
        }
        writeln!(
            out,
            "- run: {} round(s) × {} scenario(s) × {} target(s), targets interleaved; each {} warm-up + {} window",
            c.rounds,
            c.scenarios.len(),
            self.kinds().len(),
            humantime::format_duration(c.load.warmup),
            humantime::format_duration(c.load.duration),
        )?;
        if self.kinds().iter().any(|k| k.is_haproxy()) {
            writeln!(
                out,
                "- haproxy: mode tcp, splice {}; `haproxy` nbthread {}, `haproxy-1t` nbthread 1 (`haproxy-1t-log`: also `option tcplog` to stdout)",
                if c.haproxy.splice { "auto" } else { "off" },
                c.haproxy.nbthread,
            )?;
        }
        for note in &self.notes {
            writeln!(out, "- {note}")?;
        }
        writeln!(out)?;
        for &scenario in &c.scenarios {
            self.scenario_table(&mut out, scenario)?;
        }
        self.summary(&mut out)?;
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::<f64>::new()), None);
    }
}
