//! Fuzzes `tollgate_policy::money`, both grammars, on any UTF-8 text: never a panic; an amount
//! either grammar accepts prints as a plain decimal that reads back to itself; rounding up and
//! down differ by at most one unit; what the operator grammar accepts, the upstream one reads
//! to the same value without rounding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_policy::money::{Micros, Rounding, UnitPrice};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let up = Micros::parse_upstream(text, Rounding::Up);
    let down = Micros::parse_upstream(text, Rounding::Down);
    if let (Ok(up), Ok(down)) = (up, down) {
        assert!(
            down <= up && up.0 - down.0 <= 1,
            "{text:?}: {down:?} {up:?}"
        );
    }
    for m in [up, down].into_iter().flatten() {
        assert_eq!(Micros::parse_upstream(&m.to_string(), Rounding::Up), Ok(m));
    }
    if let Ok(m) = Micros::parse_usd(text) {
        assert_eq!(Micros::parse_usd(&m.to_string()), Ok(m), "{text:?}");
        assert_eq!(up, Ok(m), "{text:?}");
        assert_eq!(down, Ok(m), "{text:?}");
    }
    let price = UnitPrice::parse_upstream(text, Rounding::Up);
    if let Ok(p) = price {
        assert_eq!(
            UnitPrice::parse_upstream(&p.to_string(), Rounding::Down),
            Ok(p)
        );
    }
    if let Ok(p) = UnitPrice::parse_usd(text) {
        assert_eq!(UnitPrice::parse_usd(&p.to_string()), Ok(p), "{text:?}");
        assert_eq!(price, Ok(p), "{text:?}");
    }
});
