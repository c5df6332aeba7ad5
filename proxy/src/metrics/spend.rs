//! The spend stage's series, part of the one catalog in `crate::metrics` (kept as a block
//! because the ledger updates them from exact integer state). Model labels are bounded: a model the policy does not name is
//! counted as `other`.

use std::sync::Arc;

use prometheus::{CounterVec, Gauge, IntCounter, IntCounterVec, Opts, Registry};

use crate::metrics::OTHER;
use crate::spend::money::Micros;
use crate::spend::source::SettlementSource;

/// Decides whether a model may appear as a label (the policy names it).
pub type ModelNamed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Spend, token, budget and settlement series.
#[derive(Clone)]
pub struct SpendMetrics {
    /// `tollgate_llm_spend_usd_total{model}`: settled spend.
    pub spend_usd: CounterVec,
    /// `tollgate_llm_tokens_total{model,kind}`: tokens by kind (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// `tollgate_budget_usd`: the budget.
    pub budget_usd: Gauge,
    /// `tollgate_budget_remaining_usd`: what new requests may still reserve.
    pub budget_remaining_usd: Gauge,
    /// `tollgate_budget_reserved_usd`: reserved for requests in flight.
    pub budget_reserved_usd: Gauge,
    /// `tollgate_llm_settlements_total{source}`: settlements by source.
    pub settlements: IntCounterVec,
    /// `tollgate_llm_overcharges_total`: settlements above their reservation (provider error).
    pub overcharges: IntCounter,
    /// `tollgate_ledger_write_errors_total`: journal or log writes that failed.
    pub ledger_write_errors: IntCounter,
    named: ModelNamed,
}

impl SpendMetrics {
    /// Declares the series; `named` bounds the model label.
    pub fn new(named: ModelNamed) -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        Self {
            spend_usd: CounterVec::new(
                opts("tollgate_llm_spend_usd_total", "Settled LLM spend in USD by requested model."),
                &["model"],
            )
            .expect("static metric definition is valid"),
            tokens: IntCounterVec::new(
                opts("tollgate_llm_tokens_total", "LLM tokens by requested model and kind (prompt, completion)."),
                &["model", "kind"],
            )
            .expect("static metric definition is valid"),
            budget_usd: Gauge::new("tollgate_budget_usd", "The LLM budget in USD.")
                .expect("static metric definition is valid"),
            budget_remaining_usd: Gauge::new(
                "tollgate_budget_remaining_usd",
                "Budget new requests may still reserve: budget minus settled minus reserved, in USD.",
            )
            .expect("static metric definition is valid"),
            budget_reserved_usd: Gauge::new(
                "tollgate_budget_reserved_usd",
                "Worst-case cost reserved for LLM requests in flight, in USD.",
            )
            .expect("static metric definition is valid"),
            settlements: IntCounterVec::new(
                opts(
                    "tollgate_llm_settlements_total",
                    "Settled LLM requests by what the charge came from (usage, generation, worst-case).",
                ),
                &["source"],
            )
            .expect("static metric definition is valid"),
            overcharges: IntCounter::new(
                "tollgate_llm_overcharges_total",
                "Settlements whose real cost exceeded the reserved worst case (charged in full).",
            )
            .expect("static metric definition is valid"),
            ledger_write_errors: IntCounter::new(
                "tollgate_ledger_write_errors_total",
                "Failed writes to the ledger journal or the usage files.",
            )
            .expect("static metric definition is valid"),
            named,
        }
    }

    /// Registers every series in `registry` (e.g. `Metrics::registry()`).
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(self.spend_usd.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.budget_usd.clone()),
            Box::new(self.budget_remaining_usd.clone()),
            Box::new(self.budget_reserved_usd.clone()),
            Box::new(self.settlements.clone()),
            Box::new(self.overcharges.clone()),
            Box::new(self.ledger_write_errors.clone()),
        ];
        collectors
            .into_iter()
            .try_for_each(|c| registry.register(c))
    }

    /// The label for `model`: itself when the policy names it, else `other`.
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if (self.named)(model) { model } else { OTHER }
    }

    /// Sets the budget gauges from exact integer state.
    pub(crate) fn set_budget(&self, budget: Micros, remaining: Micros, reserved: Micros) {
        self.budget_usd.set(budget.as_usd_f64());
        self.budget_remaining_usd.set(remaining.as_usd_f64());
        self.budget_reserved_usd.set(reserved.as_usd_f64());
    }

    /// Counts one settlement.
    pub(crate) fn settled(
        &self,
        model: &str,
        cost: Micros,
        source: SettlementSource,
        prompt: u64,
        completion: u64,
    ) {
        let label = self.model_label(model);
        self.spend_usd
            .with_label_values(&[label])
            .inc_by(cost.as_usd_f64());
        self.tokens
            .with_label_values(&[label, "prompt"])
            .inc_by(prompt);
        self.tokens
            .with_label_values(&[label, "completion"])
            .inc_by(completion);
        self.settlements.with_label_values(&[source.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use prometheus::Encoder;

    #[test]
    fn registers_and_bounds_model_labels() {
        let named: ModelNamed = Arc::new(|m| m == "openai/gpt-4o");
        let m = SpendMetrics::new(named);
        let registry = Registry::new();
        m.register(&registry).unwrap();
        m.settled(
            "openai/gpt-4o",
            Micros(1_500_000),
            SettlementSource::Usage,
            10,
            20,
        );
        m.settled(
            "agent/invented-model-123",
            Micros(1),
            SettlementSource::WorstCase,
            1,
            0,
        );
        m.set_budget(Micros(5_000_000), Micros(3_000_000), Micros(500_000));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("tollgate_llm_spend_usd_total{model=\"openai/gpt-4o\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "tollgate_llm_tokens_total{kind=\"completion\",model=\"openai/gpt-4o\"} 20"
            )
        );
        assert!(text.contains("tollgate_llm_spend_usd_total{model=\"other\"}"));
        assert!(!text.contains("invented"));
        assert!(text.contains("tollgate_budget_usd 5"));
        assert!(text.contains("tollgate_budget_remaining_usd 3"));
        assert!(text.contains("tollgate_budget_reserved_usd 0.5"));
        assert!(text.contains("tollgate_llm_settlements_total{source=\"worst-case\"} 1"));
        assert!(m.register(&registry).is_err(), "each series registers once");
    }
}
