//! The gateway's request-body policy: any body is either refused or rewritten into a JSON object
//! that names only allowed models, carries only allowlisted fields and the forced provider.
#![no_main]

use std::sync::LazyLock;

use tollgate_policy::{Endpoint, GatewaySettings, Policy};

static SETTINGS: LazyLock<GatewaySettings> = LazyLock::new(|| {
    let text = "version = 1\n[intercept]\nhosts = [\"openrouter.ai\"]\n\
                [intercept.models]\nallow = [\"openai/*\", \"anthropic/*\"]\ndeny = [\"openai/gpt-4o\"]\n";
    Policy::parse(text, "fuzz.toml").expect("the fuzz policy parses").gateway
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let settings = &*SETTINGS;
    for endpoint in [Endpoint::Chat, Endpoint::Embeddings] {
        let Ok(admitted) = tollgate::fuzz::admit_body(endpoint, data, settings) else { continue };
        for model in &admitted.models {
            assert!(settings.models.check(model).is_ok(), "admitted a denied model {model:?}");
        }
        for field in admitted.body.keys() {
            assert!(field == "provider" || settings.fields.allows(endpoint, field), "kept field {field:?}");
        }
        assert_eq!(admitted.body["provider"]["zdr"], serde_json::Value::Bool(true));
    }
});
