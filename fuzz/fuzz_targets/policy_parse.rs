//! Fuzzes the policy parser and compiler: any UTF-8 text gives a policy or an error whose
//! message (with its line and column) can be formatted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Policy::parse(text, "fuzz.toml") {
        let _ = e.to_string();
    }
});
