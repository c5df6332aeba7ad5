//! The report on stderr when CMD is done: connections by decision, the hosts refused, DNS, LLM
//! requests, spend against the budget, where the files are. Counts come from the metrics
//! catalog; the refused hosts from the per-connection decision log lines (the metrics label
//! hosts only by policy pattern, so a refused name is in the log line alone).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prometheus::proto::MetricFamily;
use tollgate_policy::money::Micros;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::metrics::Metrics;

/// Distinct refused hosts remembered; the rest are counted together (CMD chooses the names).
const MAX_HOSTS: usize = 64;

/// Refused destinations seen in the decision log lines, counted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Refused(Arc<Mutex<RefusedInner>>);

#[derive(Debug, Default)]
struct RefusedInner {
    hosts: BTreeMap<String, u64>,
    others: u64,
}

impl Refused {
    fn add(&self, host: String) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = inner.hosts.get_mut(&host) {
            *n += 1;
        } else if inner.hosts.len() < MAX_HOSTS {
            inner.hosts.insert(host, 1);
        } else {
            inner.others += 1;
        }
    }
}

/// A layer that watches `tollgate::connection` events with `route=reject`.
#[derive(Debug)]
pub(crate) struct DecisionLayer(pub Refused);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DecisionLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "tollgate::connection" {
            return;
        }
        let mut fields = ConnectionFields::default();
        event.record(&mut fields);
        if fields.route.as_deref() != Some("reject") {
            return;
        }
        let host = match (fields.sni, fields.orig_dst) {
            (Some(sni), _) if sni != "-" => sni,
            (_, Some(dst)) => dst,
            _ => "-".to_owned(),
        };
        self.0.add(host);
    }
}

#[derive(Default)]
struct ConnectionFields {
    route: Option<String>,
    sni: Option<String>,
    orig_dst: Option<String>,
}

impl Visit for ConnectionFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

impl ConnectionFields {
    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "route" => self.route = Some(value),
            "sni" => self.sni = Some(value),
            "orig_dst" => self.orig_dst = Some(value),
            _ => {}
        }
    }
}

/// Writes the summary to stderr.
pub(crate) fn print(metrics: &Metrics, refused: &Refused, budget: Option<Micros>, data: &Path) {
    let families = metrics.registry().gather();
    let text = render(&families, refused, budget, data);
    eprint!("{text}");
}

fn render(
    families: &[MetricFamily],
    refused: &Refused,
    budget: Option<Micros>,
    data: &Path,
) -> String {
    let mut out = String::from("tollgate run: summary\n");
    let by = |name: &str, labels: &[&str]| -> BTreeMap<Vec<String>, f64> {
        let mut sums = BTreeMap::new();
        for family in families.iter().filter(|f| f.name() == name) {
            for metric in family.get_metric() {
                let key = labels
                    .iter()
                    .map(|l| {
                        metric
                            .get_label()
                            .iter()
                            .find(|p| p.name() == *l)
                            .map(|p| p.value().to_owned())
                            .unwrap_or_default()
                    })
                    .collect();
                // A metric is a counter or a gauge; the other reads 0.
                let value = metric.get_counter().get_value() + metric.get_gauge().get_value();
                *sums.entry(key).or_insert(0.0) += value;
            }
        }
        sums
    };
    let sum = |m: &BTreeMap<Vec<String>, f64>| m.values().fold(0.0, |a, b| a + b);
    let connections = by("tollgate_connections_total", &["route", "reason"]);
    let total = sum(&connections);
    let _ = writeln!(out, "  connections: {total}");
    for (key, n) in &connections {
        let _ = writeln!(out, "    {:<9} {:<22} {n}", key[0], key[1]);
    }
    {
        let inner = refused.0.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.hosts.is_empty() {
            let mut hosts: Vec<_> = inner.hosts.iter().collect();
            hosts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = hosts.iter().map(|(h, n)| format!("{h} ×{n}")).collect();
            let _ = write!(out, "  refused: {}", list.join(", "));
            if inner.others > 0 {
                let _ = write!(out, ", {} more", inner.others);
            }
            out.push('\n');
        }
    }
    let dns = by("tollgate_dns_queries_total", &["result"]);
    let list: Vec<String> = dns
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(k, n)| format!("{} {n}", k[0]))
        .collect();
    if !list.is_empty() {
        let _ = writeln!(out, "  dns queries: {}", list.join(", "));
    }
    let requests = sum(&by("tollgate_llm_requests_total", &[]));
    let denials = sum(&by("tollgate_llm_denials_total", &[]));
    let spend = sum(&by("tollgate_llm_spend_usd_total", &[]));
    let budget = match budget {
        Some(b) => format!("${:.6}", b.as_usd_f64()),
        None => "no budget (priced requests refused)".to_owned(),
    };
    let _ = writeln!(
        out,
        "  llm: {requests} request(s) forwarded, {denials} refused; spend ${spend:.6} of {budget}"
    );
    let _ = writeln!(
        out,
        "  files: {} (tollgate.log, proxy_usage.json, proxy_ledger.jsonl, certs/)",
        data.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_decisions_refused_hosts_and_spend() {
        let metrics = Metrics::new();
        metrics
            .connections
            .with_label_values(&["reject", "not-allow-listed", "-"])
            .inc_by(3);
        metrics
            .connections
            .with_label_values(&["tunnel", "allow-listed", "allowed.test"])
            .inc();
        let refused = Refused::default();
        refused.add("evil.test".into());
        refused.add("evil.test".into());
        refused.add("192.0.2.2:22".into());
        for i in 0..MAX_HOSTS + 5 {
            refused.add(format!("h{i}.test"));
        }
        let text = render(
            &metrics.registry().gather(),
            &refused,
            Some(Micros(1_500_000)),
            Path::new("/data"),
        );
        assert!(text.contains("connections: 4"), "{text}");
        assert!(
            text.contains("reject    not-allow-listed       3"),
            "{text}"
        );
        assert!(
            text.contains("refused: evil.test ×2, 192.0.2.2:22 ×1"),
            "{text}"
        );
        // CMD chooses the names: the list is bounded, the rest counted.
        assert!(text.contains(", 7 more"), "{text}");
        assert!(text.contains("spend $0.000000 of $1.500000"), "{text}");
        assert!(text.contains("files: /data"), "{text}");
        assert!(!text.contains("-0"), "{text}");
    }
}
