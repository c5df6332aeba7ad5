//! Exact amounts of US dollars as integers of a fixed unit, never `f64`: micro-USD (10⁻⁶) for
//! budgets and spend, pico-USD (10⁻¹²) for per-token prices, which are far below one micro-USD
//! (`"0.0000025"` USD per token is 2,500,000 pUSD).
//!
//! The parsers read decimal text as OpenRouter writes it (`"5"`, `"5.00"`, `"0.0000025"`, also
//! `"2.5e-6"`) digit by digit, so nothing is lost to binary floating point. They are public because
//! the proxy must read the upstream's own price strings (`GET /api/v1/models`) and `usage.cost`
//! exactly the same way.

/// Micro-USD in one USD.
pub const MICROS_PER_USD: u64 = 1_000_000;
/// Pico-USD in one USD.
pub const PICOS_PER_USD: u64 = 1_000_000_000_000;
/// Pico-USD in one micro-USD.
pub const PICOS_PER_MICRO: u64 = 1_000_000;
/// The largest amount accepted anywhere (a budget or a price): 1,000,000 USD. In pico-USD that is
/// 10¹⁸, so every amount fits a `u64` with room to spare.
pub const MAX_USD: u64 = 1_000_000;

/// Why a decimal amount was refused. Each message starts with "expected" so that a caller can add
/// ", found <text>".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number (`"five"`, `"1,5"`, `".5"`, `"nan"`).
    #[error("expected an amount in usd such as \"5.00\" or \"0.0000025\"")]
    Syntax,
    /// Below zero.
    #[error("expected an amount of zero or more")]
    Negative,
    /// Finer than the unit (more than 6 decimals for micro-USD, 12 for pico-USD).
    #[error("expected at most {decimals} decimal places (1 {unit})")]
    TooPrecise {
        /// Decimal places the unit can hold.
        decimals: u32,
        /// The unit's name, `micro-usd` or `pico-usd`.
        unit: &'static str,
    },
    /// Above [`MAX_USD`].
    #[error("expected at most 1000000 usd")]
    TooLarge,
}

/// Exact USD → micro-USD: `"5.00"` → 5,000,000. More than 6 decimals is an error, not rounded.
pub fn usd_to_micros(text: &str) -> Result<u64, MoneyError> {
    parse(text, Unit::Micro, Rounding::Exact)
}

/// USD → micro-USD rounded up, for amounts finer than a micro-USD that must not be under-counted
/// (an upstream `usage.cost` of `"0.0000001"` settles as 1 µUSD).
pub fn usd_to_micros_ceil(text: &str) -> Result<u64, MoneyError> {
    parse(text, Unit::Micro, Rounding::Up)
}

/// Exact USD → pico-USD: `"0.0000025"` → 2,500,000. More than 12 decimals is an error.
pub fn usd_to_picos(text: &str) -> Result<u64, MoneyError> {
    parse(text, Unit::Pico, Rounding::Exact)
}

/// Pico-USD → micro-USD, rounded up (a cost is never under-counted); saturates at `u64::MAX`.
pub fn picos_to_micros_ceil(picos: u128) -> u64 {
    let micros = picos.div_ceil(u128::from(PICOS_PER_MICRO));
    u64::try_from(micros).unwrap_or(u64::MAX)
}

/// The shortest decimal for an amount of micro-USD, in USD: `5`, `2.5`, `0.000001`.
pub fn format_micros(micros: u64) -> String {
    format_scaled(u128::from(micros), Unit::Micro.decimals())
}

/// The shortest decimal for an amount of pico-USD, in USD: `0.0000025`.
pub fn format_picos(picos: u64) -> String {
    format_scaled(u128::from(picos), Unit::Pico.decimals())
}

#[derive(Clone, Copy)]
enum Unit {
    Micro,
    Pico,
}

impl Unit {
    fn decimals(self) -> u32 {
        match self {
            Unit::Micro => 6,
            Unit::Pico => 12,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Micro => "micro-usd",
            Unit::Pico => "pico-usd",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    Exact,
    Up,
}

/// More digits than any accepted amount can have (10¹⁸ pUSD has 19): longer is too large, and
/// stopping here keeps the arithmetic inside `u128`.
const MAX_DIGITS: usize = 30;

/// `[+-]digits[.digits][(e|E)[+-]digits]`, read as an integer number of `unit`.
fn parse(text: &str, unit: Unit, rounding: Rounding) -> Result<u64, MoneyError> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, exponent(e)?),
        None => (rest, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((_, "")) => return Err(MoneyError::Syntax), // "5." reads as a typo
        Some((w, f)) => (w, f),
        None => (mantissa, ""),
    };
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) {
        return Err(MoneyError::Syntax);
    }
    // value = digits × 10^shift, in units.
    let mut digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    let mut shift = exponent + i64::from(unit.decimals()) - fraction.len() as i64;
    let Some(first) = digits.iter().position(|&d| d != b'0') else {
        return Ok(0); // zero, however written ("-0.00" included)
    };
    if negative {
        return Err(MoneyError::Negative);
    }
    digits.drain(..first);
    while digits.last() == Some(&b'0') {
        digits.pop();
        shift += 1;
    }
    let value = if shift >= 0 {
        if digits.len() as i64 + shift > MAX_DIGITS as i64 {
            return Err(MoneyError::TooLarge);
        }
        to_int(&digits) * 10u128.pow(shift as u32) // shift < MAX_DIGITS by the check above
    } else {
        // Trailing zeros are gone, so the digits below the unit are not all zero.
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
        if rounding == Rounding::Exact {
            return Err(MoneyError::TooPrecise {
                decimals: unit.decimals(),
                unit: unit.name(),
            });
        }
        let kept = &digits[..digits.len().saturating_sub(cut)];
        if kept.len() > MAX_DIGITS {
            return Err(MoneyError::TooLarge);
        }
        to_int(kept) + 1
    };
    let max = u128::from(MAX_USD) * 10u128.pow(unit.decimals());
    if value > max {
        return Err(MoneyError::TooLarge);
    }
    u64::try_from(value).map_err(|_| MoneyError::TooLarge)
}

/// The exponent after `e`: `[+-]digits`. Clamped far beyond anything meaningful, so `1e99999`
/// is "too large" rather than an overflow.
fn exponent(text: &str) -> Result<i64, MoneyError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MoneyError::Syntax);
    }
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX).min(10_000);
    Ok(if negative { -magnitude } else { magnitude })
}

/// ASCII digits (at most `MAX_DIGITS`) to an integer.
fn to_int(digits: &[u8]) -> u128 {
    digits
        .iter()
        .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'))
}

fn format_scaled(value: u128, decimals: u32) -> String {
    let scale = 10u128.pow(decimals);
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:0width$}", width = decimals as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn micros_are_exact() {
        assert_eq!(usd_to_micros("5"), Ok(5_000_000));
        assert_eq!(usd_to_micros("5.00"), Ok(5_000_000));
        assert_eq!(usd_to_micros("0.000001"), Ok(1));
        assert_eq!(usd_to_micros("+2.5"), Ok(2_500_000));
        assert_eq!(usd_to_micros("1000000"), Ok(1_000_000_000_000));
        assert_eq!(usd_to_micros("0"), Ok(0));
        assert_eq!(usd_to_micros("-0.00"), Ok(0));
        assert_eq!(usd_to_micros("0.1000000"), Ok(100_000)); // trailing zeros are not precision
        assert_eq!(usd_to_micros("2.5e0"), Ok(2_500_000));
        assert_eq!(usd_to_micros("25E-1"), Ok(2_500_000));
        assert_eq!(usd_to_micros("1e-6"), Ok(1));
        assert_eq!(usd_to_micros("0000012.50"), Ok(12_500_000));
    }

    #[test]
    fn picos_are_exact_below_a_micro() {
        assert_eq!(usd_to_picos("0.0000025"), Ok(2_500_000));
        assert_eq!(usd_to_picos("0.00001"), Ok(10_000_000));
        assert_eq!(usd_to_picos("0.000000075"), Ok(75_000));
        assert_eq!(usd_to_picos("0.000000000001"), Ok(1));
        assert_eq!(usd_to_picos("2.5e-6"), Ok(2_500_000));
        assert_eq!(usd_to_picos("0"), Ok(0));
        assert_eq!(usd_to_picos("1000000"), Ok(1_000_000 * PICOS_PER_USD));
    }

    #[test]
    fn refusals_name_the_reason() {
        for bad in [
            "", "five", "1,5", ".5", "5.", "1.2.3", "nan", "inf", "0x10", " 5", "5 ", "1e", "1e+",
            "--1", "$5", "1_000",
        ] {
            assert_eq!(usd_to_micros(bad), Err(MoneyError::Syntax), "{bad:?}");
        }
        assert_eq!(usd_to_micros("-1"), Err(MoneyError::Negative));
        assert_eq!(usd_to_picos("-0.0000025"), Err(MoneyError::Negative));
        assert_eq!(
            usd_to_micros("0.0000001"),
            Err(MoneyError::TooPrecise {
                decimals: 6,
                unit: "micro-usd"
            })
        );
        assert!(matches!(
            usd_to_picos("0.0000000000001"),
            Err(MoneyError::TooPrecise { decimals: 12, .. })
        ));
        assert_eq!(usd_to_micros("1000000.000001"), Err(MoneyError::TooLarge));
        assert_eq!(usd_to_micros("1e7"), Err(MoneyError::TooLarge));
        assert_eq!(usd_to_micros("1e99999999999"), Err(MoneyError::TooLarge));
        assert_eq!(
            usd_to_micros(&"9".repeat(100)),
            Err(MoneyError::TooLarge),
            "long inputs do not overflow"
        );
        assert!(matches!(
            usd_to_micros("1e-99999999999"),
            Err(MoneyError::TooPrecise { .. })
        ));
    }

    #[test]
    fn ceil_rounds_finer_amounts_up() {
        assert_eq!(usd_to_micros_ceil("0.0000001"), Ok(1));
        assert_eq!(usd_to_micros_ceil("0.0000011"), Ok(2));
        assert_eq!(usd_to_micros_ceil("0.000123456789"), Ok(124));
        assert_eq!(usd_to_micros_ceil("1.5"), Ok(1_500_000));
        assert_eq!(usd_to_micros_ceil("1e-300"), Ok(1));
        assert_eq!(usd_to_micros_ceil("-0.1"), Err(MoneyError::Negative));
    }

    #[test]
    fn conversions_and_formatting() {
        assert_eq!(picos_to_micros_ceil(0), 0);
        assert_eq!(picos_to_micros_ceil(1), 1);
        assert_eq!(picos_to_micros_ceil(1_000_000), 1);
        assert_eq!(picos_to_micros_ceil(1_000_001), 2);
        assert_eq!(picos_to_micros_ceil(u128::MAX), u64::MAX);
        assert_eq!(format_micros(5_000_000), "5");
        assert_eq!(format_micros(2_500_000), "2.5");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_picos(2_500_000), "0.0000025");
        for text in ["0.0000025", "3", "0.000000000001", "12.5"] {
            assert_eq!(format_picos(usd_to_picos(text).unwrap()), text);
        }
    }

    #[test]
    fn messages_compose_with_found() {
        let e = MoneyError::TooPrecise {
            decimals: 6,
            unit: "micro-usd",
        };
        assert_eq!(
            e.to_string(),
            "expected at most 6 decimal places (1 micro-usd)"
        );
        for e in [
            MoneyError::Syntax,
            MoneyError::Negative,
            MoneyError::TooLarge,
        ] {
            assert!(e.to_string().starts_with("expected "), "{e}");
        }
    }
}
