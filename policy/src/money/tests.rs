#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

#[test]
fn operator_amounts_are_exact() {
    let m = |s| Micros::parse_usd(s).map(|m| m.0);
    assert_eq!(m("5"), Ok(5_000_000));
    assert_eq!(m("5.00"), Ok(5_000_000));
    assert_eq!(m("2.5"), Ok(2_500_000));
    assert_eq!(m("0.000001"), Ok(1));
    assert_eq!(m("0"), Ok(0));
    assert_eq!(
        m("0.1000000"),
        Ok(100_000),
        "trailing zeros are not precision"
    );
    assert_eq!(m("0000012.50"), Ok(12_500_000));
    assert_eq!(m("1000000"), Ok(1_000_000_000_000));
    let p = |s| UnitPrice::parse_usd(s).map(|p| p.0);
    assert_eq!(p("0.0000025"), Ok(2_500_000));
    assert_eq!(p("0.000000075"), Ok(75_000));
    assert_eq!(p("0.000000000001"), Ok(1));
    assert_eq!(p("1000000"), Ok(MAX_USD * PICOS_PER_USD));
}

#[test]
fn operator_refusals_name_the_reason() {
    for bad in [
        "", "five", "1,5", "1.2.3", "nan", "inf", "0x10", " 5", "5 ", "1e", "$5", "1_000", ".",
        "--1", "e5",
    ] {
        assert_eq!(Micros::parse_usd(bad), Err(MoneyError::Syntax), "{bad:?}");
    }
    // Numbers, but not what an operator means to write: each could be a typo.
    for odd in [
        ".5", "5.", "+2.5", "-0", "-0.00", "1e3", "2.5e-6", "25E-1", "1e-6",
    ] {
        assert_eq!(Micros::parse_usd(odd), Err(MoneyError::NotPlain), "{odd:?}");
        assert_eq!(
            UnitPrice::parse_usd(odd),
            Err(MoneyError::NotPlain),
            "{odd:?}"
        );
    }
    assert_eq!(Micros::parse_usd("-1"), Err(MoneyError::Negative));
    assert_eq!(
        UnitPrice::parse_usd("-0.0000025"),
        Err(MoneyError::Negative)
    );
    assert_eq!(
        Micros::parse_usd("0.0000001"),
        Err(MoneyError::TooPrecise {
            decimals: 6,
            unit: "micro-usd"
        })
    );
    assert!(matches!(
        UnitPrice::parse_usd("0.0000000000001"),
        Err(MoneyError::TooPrecise { decimals: 12, .. })
    ));
    let too_large = Err(MoneyError::TooLarge { max_usd: MAX_USD });
    assert_eq!(Micros::parse_usd("1000000.000001"), too_large);
    assert_eq!(
        UnitPrice::parse_usd("1000001").map(|p| p.0),
        too_large.map(|m| m.0)
    );
    assert_eq!(
        Micros::parse_usd(&"9".repeat(100)),
        too_large,
        "no overflow"
    );
    assert_eq!(
        Micros::parse_usd(&format!("1.{}1", "0".repeat(100_000))),
        Err(MoneyError::TooPrecise {
            decimals: 6,
            unit: "micro-usd"
        }),
        "a long fraction is not mistaken for a large number"
    );
}

#[test]
fn messages_compose_with_found() {
    for e in [
        MoneyError::Syntax,
        MoneyError::NotPlain,
        MoneyError::Negative,
        MoneyError::TooLarge { max_usd: MAX_USD },
        MoneyError::TooPrecise {
            decimals: 6,
            unit: "micro-usd",
        },
    ] {
        assert!(e.to_string().starts_with("expected "), "{e}");
    }
    assert_eq!(
        MoneyError::TooLarge { max_usd: MAX_USD }.to_string(),
        "expected at most 1000000 usd"
    );
}

#[test]
fn upstream_amounts_accept_any_notation_and_round_as_asked() {
    let up = |s| Micros::parse_upstream(s, Rounding::Up).map(|m| m.0);
    let down = |s| Micros::parse_upstream(s, Rounding::Down).map(|m| m.0);
    assert_eq!(up("0.000123"), Ok(123));
    assert_eq!(up(".5"), Ok(500_000));
    assert_eq!(up("5."), Ok(5_000_000));
    assert_eq!(up("+1"), Ok(1_000_000));
    assert_eq!(up("-0"), Ok(0));
    assert_eq!(up("1.2e-5"), Ok(12));
    assert_eq!(up("2.5E+1"), Ok(25_000_000));
    assert_eq!(up("0.0001234"), Ok(124), "123.4 µUSD is charged as 124");
    assert_eq!(down("0.0001234"), Ok(123));
    assert_eq!(up("1e-300"), Ok(1));
    assert_eq!(down("1e-300"), Ok(0));
    assert_eq!(
        up("1e-99999999999"),
        Ok(1),
        "exponents are clamped, not overflowed"
    );
    assert_eq!(up("0.000000"), Ok(0));
    assert_eq!(up("18446744073709.551615"), Ok(u64::MAX));
    let too_large = Err(MoneyError::TooLarge {
        max_usd: 18_446_744_073_709,
    });
    assert_eq!(up("18446744073709.551616"), too_large);
    assert_eq!(
        up("18446744073709.5516151"),
        too_large,
        "rounding up overflows"
    );
    assert_eq!(down("18446744073709.5516151"), Ok(u64::MAX));
    assert_eq!(up("1e99999"), too_large);
    assert_eq!(up("-0.1"), Err(MoneyError::Negative));
    for bad in [
        "", ".", "abc", "1.2.3", "1e", "e5", " 1", "NaN", "inf", "0x10", "1e+",
    ] {
        assert_eq!(up(bad), Err(MoneyError::Syntax), "{bad:?}");
    }
}

/// Price strings as OpenRouter's `GET /api/v1/models` writes them (per token, image or request),
/// and the numbers a JSON encoder may turn them into.
#[test]
fn real_upstream_price_strings() {
    let table: &[(&str, Result<u64, MoneyError>)] = &[
        ("0", Ok(0)),
        ("0.000003", Ok(3_000_000)),   // anthropic/claude-sonnet-4 prompt
        ("0.000015", Ok(15_000_000)),  // its completion
        ("0.00000375", Ok(3_750_000)), // its input_cache_write
        ("0.0000003", Ok(300_000)),    // its input_cache_read
        ("0.0000025", Ok(2_500_000)),  // openai/gpt-4o prompt
        ("0.00001", Ok(10_000_000)),   // its completion
        ("0.003613", Ok(3_613_000_000)), // its image
        ("0.00000015", Ok(150_000)),   // openai/gpt-4o-mini prompt
        ("0.0000006", Ok(600_000)),    // its completion
        ("0.00000002", Ok(20_000)),    // a small open model
        ("0.0000000375", Ok(37_500)),  // a cache read at a quarter of 0.00000015
        ("0.01", Ok(10_000_000_000)),  // web_search, per request
        ("1e-7", Ok(100_000)),         // exponent form
        ("2E-6", Ok(2_000_000)),       //
        ("0.000000000000001", Ok(1)),  // below a pico-USD: rounded up
        ("-1", Err(MoneyError::Negative)), // openrouter/auto: variable pricing
        ("", Err(MoneyError::Syntax)), //
        ("0.000003 ", Err(MoneyError::Syntax)), // callers trim
    ];
    for (text, want) in table {
        assert_eq!(
            UnitPrice::parse_upstream(text, Rounding::Up).map(|p| p.0),
            *want,
            "{text:?}"
        );
    }
}

#[test]
fn formats_and_converts() {
    assert_eq!(Micros(5_000_000).to_string(), "5");
    assert_eq!(Micros(2_500_000).to_string(), "2.5");
    assert_eq!(Micros(1).to_string(), "0.000001");
    assert_eq!(Micros(0).to_string(), "0");
    assert_eq!(UnitPrice(150_000).to_string(), "0.00000015");
    assert_eq!(UnitPrice(3 * PICOS_PER_USD).to_string(), "3");
    assert_eq!(UnitPrice(150_000).usd_per_million(), "0.15");
    assert_eq!(
        UnitPrice(u64::MAX).usd_per_million(),
        "18446744073709.551615"
    );
    assert_eq!(Micros(123).as_usd_f64(), 0.000123);
    assert_eq!(Micros::from_picos_ceil(0), Micros(0));
    assert_eq!(Micros::from_picos_ceil(1), Micros(1));
    assert_eq!(Micros::from_picos_ceil(1_000_000), Micros(1));
    assert_eq!(Micros::from_picos_ceil(1_000_001), Micros(2));
    assert_eq!(Micros::from_picos_ceil(u128::MAX), Micros::MAX);
    assert_eq!(
        Micros::from_picos_ceil(UnitPrice(150_000).cost_picos(1000)),
        Micros(150),
        "1000 tokens at 0.15 µUSD are 150 µUSD exactly"
    );
}

/// `whole.fraction` (fraction up to 24 digits) as an exact rational `n / 10^len`.
fn exact(whole: u64, fraction: &str) -> (u128, u32) {
    let len = fraction.len() as u32;
    let f: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().unwrap()
    };
    (u128::from(whole) * 10u128.pow(len) + f, len)
}

proptest! {
    #[test]
    fn operator_amounts_round_trip(m in 0..=MAX_USD * MICROS_PER_USD) {
        prop_assert_eq!(Micros::parse_usd(&Micros(m).to_string()), Ok(Micros(m)));
    }

    #[test]
    fn operator_prices_round_trip(p in 0..=MAX_USD * PICOS_PER_USD) {
        prop_assert_eq!(UnitPrice::parse_usd(&UnitPrice(p).to_string()), Ok(UnitPrice(p)));
    }

    #[test]
    fn upstream_values_round_trip_whichever_the_rounding(v: u64, up: bool) {
        let r = if up { Rounding::Up } else { Rounding::Down };
        prop_assert_eq!(Micros::parse_upstream(&Micros(v).to_string(), r), Ok(Micros(v)));
        prop_assert_eq!(UnitPrice::parse_upstream(&UnitPrice(v).to_string(), r), Ok(UnitPrice(v)));
    }

    /// Up is the least number of µUSD at or above the exact value (never under-charges, never
    /// over-charges by a whole unit); down the greatest at or below.
    #[test]
    fn rounding_brackets_the_exact_value(whole in 0u64..1_000_000, fraction in "[0-9]{0,24}") {
        let text = if fraction.is_empty() { whole.to_string() } else { format!("{whole}.{fraction}") };
        let (n, len) = exact(whole, &fraction);
        // value = n / 10^len USD; k µUSD = k × 10^len / 10^(len+6) — compare at 10^(len+6).
        let at = |k: u64| u128::from(k) * 10u128.pow(len);
        let n = n * u128::from(MICROS_PER_USD);
        let up = Micros::parse_upstream(&text, Rounding::Up).unwrap().0;
        let down = Micros::parse_upstream(&text, Rounding::Down).unwrap().0;
        prop_assert!(at(up) >= n, "{text} up {up}");
        prop_assert!(up == 0 || at(up - 1) < n, "{text} up {up}");
        prop_assert!(at(down) <= n && at(down + 1) > n, "{text} down {down}");
        prop_assert!(up - down <= 1);
        // The operator grammar takes it exactly or refuses it as too precise.
        match Micros::parse_usd(&text) {
            Ok(m) => prop_assert!(m.0 == up && up == down),
            Err(e) => {
                let too_precise = matches!(e, MoneyError::TooPrecise { .. });
                prop_assert!(up != down && too_precise, "{} {:?}", text, e);
            }
        }
    }

    /// An exponent moves the point and nothing else: `D.DDDe-K` reads as the plain decimal with
    /// the point moved K places.
    #[test]
    fn exponents_move_the_point(digits in "[1-9][0-9]{0,15}", k in 0usize..20) {
        let plain = format!("0.{}{digits}", "0".repeat(k));
        let exp = format!("{}.{}e-{}", &digits[..1], &digits[1..], k + 1);
        let exp = exp.replace(".e", "e");
        for r in [Rounding::Up, Rounding::Down] {
            prop_assert_eq!(
                UnitPrice::parse_upstream(&exp, r),
                UnitPrice::parse_upstream(&plain, r),
                "{} vs {}", exp, plain
            );
        }
    }

    /// Hostile text never panics, and what is accepted is accepted by the lenient grammar too.
    #[test]
    fn any_text_is_refused_or_read(text in "[-+0-9.eE]{0,30}") {
        if let Ok(m) = Micros::parse_usd(&text) {
            prop_assert_eq!(Micros::parse_upstream(&text, Rounding::Up), Ok(m));
        }
        let _ = UnitPrice::parse_upstream(&text, Rounding::Up);
    }
}
