/// Which stage the Pod is in; decides whether unlisted hosts are tunnelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The agent runs: only allow-listed hosts are tunnelled.
    Agent,
    /// Verification runs: everything not denied is tunnelled.
    Verification,
}

impl Phase {
    /// The label value: `"agent"` or `"verification"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Agent => "agent",
            Phase::Verification => "verification",
        }
    }

    /// Reads a label value; trims whitespace and surrounding double quotes, ignores case.
    pub fn from_label(v: &str) -> Option<Phase> {
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v)
            .trim();
        if v.eq_ignore_ascii_case("agent") {
            Some(Phase::Agent)
        } else if v.eq_ignore_ascii_case("verification") {
            Some(Phase::Verification)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_tolerate_quotes_case_and_space() {
        for phase in [Phase::Agent, Phase::Verification] {
            assert_eq!(Phase::from_label(phase.as_str()), Some(phase));
        }
        assert_eq!(
            Phase::from_label("\"verification\"\n"),
            Some(Phase::Verification)
        );
        assert_eq!(Phase::from_label("  AGENT "), Some(Phase::Agent));
        assert_eq!(Phase::from_label(" \" Agent \" "), Some(Phase::Agent));
    }

    #[test]
    fn unknown_labels_are_none() {
        for v in ["", "\"\"", "agents", "verify", "\"agent", "open"] {
            assert_eq!(Phase::from_label(v), None, "{v:?}");
        }
    }
}
