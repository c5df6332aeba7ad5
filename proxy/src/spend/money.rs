//! Money as integers: [`Micros`] (micro-USD) for amounts, [`UnitPrice`] (pico-USD per unit) for
//! prices, and an exact decimal parser for the USD strings and numbers OpenRouter sends.
//!
//! Why two units: amounts are charged in whole micro-USD (the budget, reservations, settled
//! costs), but per-token prices are often far below one micro-USD (`"0.00000015"` USD/token is
//! 0.15 µUSD), so prices keep 12 decimals (pico-USD). A cost is `Σ units × price` in pico-USD
//! (u128, no overflow), converted to micro-USD once, rounding *up* for a worst case
//! ([`Micros::from_picos_ceil`]). Real costs come from the provider as decimal numbers and are
//! rounded *up* to the micro-USD too ([`Rounding::Up`]): the ledger never charges less than the
//! bill. No f64 ever carries money; f64
//! appears only when rendering reference-compatible JSON ([`Micros::as_usd_f64`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Micro-USD in one USD.
pub const MICROS_PER_USD: u64 = 1_000_000;
/// Pico-USD in one micro-USD.
pub const PICOS_PER_MICRO: u128 = 1_000_000;

/// How to round a decimal that has more digits than the target unit keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Toward zero (a budget: never grant more than was written).
    Down,
    /// Away from zero (a price or a worst case: never under-estimate).
    Up,
    /// To the nearest unit, halves up.
    Nearest,
}

/// Why a USD value could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// Not a plain decimal number (`12.5`, `0.000003`, `1e-7`).
    #[error("expected a decimal number of usd, found {0:?}")]
    Invalid(String),
    /// A minus sign: money here is never negative.
    #[error("expected a non-negative amount of usd, found {0:?}")]
    Negative(String),
    /// Does not fit the integer unit.
    #[error("amount of usd too large: {0:?}")]
    TooLarge(String),
    /// More decimals than the unit keeps, where exactness was asked for.
    #[error("at most 6 decimals of usd (one micro-usd), found {0:?}")]
    TooPrecise(String),
}

/// An amount of money in micro-USD (10⁻⁶ USD).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub u64);

impl Micros {
    /// Nothing.
    pub const ZERO: Micros = Micros(0);
    /// The largest amount (used as "unbounded").
    pub const MAX: Micros = Micros(u64::MAX);

    /// Reads a USD decimal string exactly; more than 6 non-zero decimals is an error.
    pub fn parse_usd(s: &str) -> Result<Self, MoneyError> {
        let down = scale_decimal(s, 6, Rounding::Down)?;
        let up = scale_decimal(s, 6, Rounding::Up)?;
        if down == up {
            Ok(Micros(down))
        } else {
            Err(MoneyError::TooPrecise(clip(s)))
        }
    }

    /// Reads a USD decimal string, rounding sub-micro digits as asked.
    pub fn parse_usd_rounded(s: &str, rounding: Rounding) -> Result<Self, MoneyError> {
        scale_decimal(s, 6, rounding).map(Micros)
    }

    /// Reads a JSON number of USD (e.g. `usage.cost`), rounding sub-micro digits as asked.
    ///
    /// serde_json hands floats over as f64; its shortest round-trip rendering is the literal the
    /// provider wrote whenever that literal has at most 15 significant digits, and that decimal
    /// text is what gets parsed, so no binary-float error reaches the amount.
    pub fn from_json_number(
        n: &serde_json::Number,
        rounding: Rounding,
    ) -> Result<Self, MoneyError> {
        Self::parse_usd_rounded(&n.to_string(), rounding)
    }

    /// Converts pico-USD to micro-USD rounding up, saturating at [`Micros::MAX`].
    pub fn from_picos_ceil(picos: u128) -> Self {
        let micros = picos.div_ceil(PICOS_PER_MICRO);
        Micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The amount in pico-USD.
    pub fn as_picos(self) -> u128 {
        u128::from(self.0) * PICOS_PER_MICRO
    }

    /// The amount as an f64 of USD, for reference-compatible JSON and metrics only.
    pub fn as_usd_f64(self) -> f64 {
        // u64 → f64 is exact below 2^53 µUSD (≈ 9 billion USD) and the division is correctly
        // rounded, so this is the f64 nearest to the exact decimal.
        self.0 as f64 / MICROS_PER_USD as f64
    }

    /// `self + rhs`, saturating.
    pub fn saturating_add(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, floored at zero.
    pub fn saturating_sub(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Micros {
    /// Six decimals of USD, e.g. `0.000123`, `12.500000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}",
            self.0 / MICROS_PER_USD,
            self.0 % MICROS_PER_USD
        )
    }
}

/// A price per unit (token, image, request) in pico-USD (10⁻¹² USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitPrice(pub u64);

impl UnitPrice {
    /// Free.
    pub const ZERO: UnitPrice = UnitPrice(0);

    /// Reads a USD-per-unit decimal string; digits past 12 decimals round *up* (prices only
    /// ever feed upper bounds). The largest price is about 18 million USD per unit.
    pub fn parse_usd(s: &str) -> Result<Self, MoneyError> {
        scale_decimal(s, 12, Rounding::Up).map(UnitPrice)
    }

    /// The price of a million units as a USD decimal without trailing zeros (OpenRouter states
    /// token prices per million in `provider.max_price`), e.g. `0.15` for `0.00000015`.
    pub fn usd_per_million(self) -> String {
        usd_decimal(self.cost_picos(1_000_000))
    }

    /// The price of `units` units, in pico-USD (cannot overflow: u64 × u64 < u128::MAX).
    pub fn cost_picos(self, units: u64) -> u128 {
        u128::from(self.0) * u128::from(units)
    }
}

impl fmt::Display for UnitPrice {
    /// The USD decimal without trailing zeros, e.g. `0.00000015`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&usd_decimal(u128::from(self.0)))
    }
}

/// pico-USD as a USD decimal without trailing zeros.
fn usd_decimal(picos: u128) -> String {
    const PICOS_PER_USD: u128 = 1_000_000_000_000;
    let frac = format!("{:012}", picos % PICOS_PER_USD);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", picos / PICOS_PER_USD)
    } else {
        format!("{}.{}", picos / PICOS_PER_USD, frac)
    }
}

/// The first 40 characters of `s`, for error messages (input may be hostile and long).
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a non-negative decimal (`123`, `0.5`, `.5`, `5.`, `1e-7`, `2.5E+3`) and returns
/// `value × 10^scale` as an integer, rounded as asked. Exact: works digit by digit, so any number
/// of digits is fine as long as the result fits a u64.
pub(crate) fn scale_decimal(s: &str, scale: u32, rounding: Rounding) -> Result<u64, MoneyError> {
    let invalid = || MoneyError::Invalid(clip(s));
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(MoneyError::Negative(clip(s)));
    }
    let (mantissa, exp10) = match body.find(['e', 'E']) {
        Some(i) => {
            let exp: i64 = body[i + 1..].parse().map_err(|_| invalid())?;
            // Bounded so the position arithmetic below cannot overflow.
            if exp.abs() > 10_000 {
                return Err(invalid());
            }
            (&body[..i], exp)
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !digits_ok(int_part)
        || !digits_ok(frac_part)
    {
        return Err(invalid());
    }
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    // The result keeps the first `keep` digits; the rest decide the rounding.
    let keep = int_part.len() as i64 + exp10 + i64::from(scale);
    let too_large = || MoneyError::TooLarge(clip(s));
    let mut value: u128 = 0;
    for i in 0..keep.max(0) {
        let d = usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0);
        if value == 0 && d == 0 {
            continue; // leading zeros (or a long run of zeros padding a zero value)
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d)))
            .filter(|v| *v <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    let rest_start = usize::try_from(keep.max(0)).unwrap_or(usize::MAX);
    let rest = digits.get(rest_start..).unwrap_or(&[]);
    let round_up = match rounding {
        Rounding::Down => false,
        Rounding::Up => rest.iter().any(|d| *d != 0),
        // With keep < 0 the first dropped digit is a padding zero: below one half.
        Rounding::Nearest => keep >= 0 && rest.first().is_some_and(|d| *d >= 5),
    };
    if round_up {
        value = value
            .checked_add(1)
            .filter(|v| *v <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_exact_usd() {
        assert_eq!(Micros::parse_usd("12.5"), Ok(Micros(12_500_000)));
        assert_eq!(Micros::parse_usd("0.000003"), Ok(Micros(3)));
        assert_eq!(Micros::parse_usd("0"), Ok(Micros(0)));
        assert_eq!(Micros::parse_usd("7"), Ok(Micros(7_000_000)));
        assert_eq!(Micros::parse_usd(".5"), Ok(Micros(500_000)));
        assert_eq!(Micros::parse_usd("5."), Ok(Micros(5_000_000)));
        assert_eq!(Micros::parse_usd("+1"), Ok(Micros(1_000_000)));
        assert_eq!(Micros::parse_usd("1.2500000000"), Ok(Micros(1_250_000)));
        assert_eq!(Micros::parse_usd("1e-6"), Ok(Micros(1)));
        assert_eq!(Micros::parse_usd("2.5E+1"), Ok(Micros(25_000_000)));
        assert_eq!(
            Micros::parse_usd("000000000000000000000000000001"),
            Ok(Micros(1_000_000))
        );
    }

    #[test]
    fn refuses_bad_usd() {
        for bad in [
            "", ".", "abc", "1.2.3", "1e", "e5", " 1", "1 ", "NaN", "inf", "0x10", "1e99999",
        ] {
            assert!(
                matches!(Micros::parse_usd(bad), Err(MoneyError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Micros::parse_usd("-1"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Micros::parse_usd("-0"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Micros::parse_usd("0.0000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Micros::parse_usd("1e300"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Micros::parse_usd("18446744073709.551616"),
            Err(MoneyError::TooLarge(_))
        ));
        assert_eq!(
            Micros::parse_usd("18446744073709.551615"),
            Ok(Micros(u64::MAX))
        );
    }

    #[test]
    fn rounds_as_asked() {
        let r = |s, m| Micros::parse_usd_rounded(s, m).map(|m| m.0);
        assert_eq!(r("0.0000014", Rounding::Down), Ok(1));
        assert_eq!(r("0.0000014", Rounding::Up), Ok(2));
        assert_eq!(r("0.0000014", Rounding::Nearest), Ok(1));
        assert_eq!(r("0.0000015", Rounding::Nearest), Ok(2));
        assert_eq!(r("0.00000049", Rounding::Nearest), Ok(0));
        assert_eq!(r("0.0000005", Rounding::Nearest), Ok(1));
        assert_eq!(r("1e-30", Rounding::Up), Ok(1));
        assert_eq!(r("1e-30", Rounding::Nearest), Ok(0));
        assert_eq!(r("1e-7", Rounding::Nearest), Ok(0));
        assert_eq!(r("5e-7", Rounding::Nearest), Ok(1));
        assert_eq!(r("0.000000", Rounding::Up), Ok(0));
    }

    #[test]
    fn json_numbers_are_read_from_their_decimal_text() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(
            Micros::from_json_number(&n("0.000123"), Rounding::Nearest),
            Ok(Micros(123))
        );
        assert_eq!(
            Micros::from_json_number(&n("0.0001234"), Rounding::Nearest),
            Ok(Micros(123))
        );
        assert_eq!(
            Micros::from_json_number(&n("1.5e-5"), Rounding::Nearest),
            Ok(Micros(15))
        );
        assert_eq!(
            Micros::from_json_number(&n("3"), Rounding::Nearest),
            Ok(Micros(3_000_000))
        );
        // 0.1 + 0.2 style literals survive: the shortest rendering of the f64 is the literal.
        assert_eq!(
            Micros::from_json_number(&n("0.3"), Rounding::Nearest),
            Ok(Micros(300_000))
        );
        assert!(Micros::from_json_number(&n("-0.1"), Rounding::Nearest).is_err());
    }

    #[test]
    fn formats_usd() {
        assert_eq!(Micros(123).to_string(), "0.000123");
        assert_eq!(Micros(12_500_000).to_string(), "12.500000");
        assert_eq!(Micros(123).as_usd_f64(), 0.000123);
        assert_eq!(UnitPrice(150_000).to_string(), "0.00000015");
        assert_eq!(UnitPrice(3_000_000_000_000).to_string(), "3");
    }

    #[test]
    fn prices_keep_sub_micro_digits_and_round_up_past_pico() {
        assert_eq!(UnitPrice::parse_usd("0.00000015"), Ok(UnitPrice(150_000)));
        assert_eq!(UnitPrice::parse_usd("0.0000025"), Ok(UnitPrice(2_500_000)));
        assert_eq!(
            UnitPrice::parse_usd("0.003613"),
            Ok(UnitPrice(3_613_000_000))
        );
        assert_eq!(UnitPrice::parse_usd("0.0000000000001"), Ok(UnitPrice(1)));
        assert!(UnitPrice::parse_usd("-0.1").is_err());
    }

    #[test]
    fn pico_to_micro_rounds_up() {
        assert_eq!(Micros::from_picos_ceil(0), Micros(0));
        assert_eq!(Micros::from_picos_ceil(1), Micros(1));
        assert_eq!(Micros::from_picos_ceil(1_000_000), Micros(1));
        assert_eq!(Micros::from_picos_ceil(1_000_001), Micros(2));
        assert_eq!(Micros::from_picos_ceil(u128::MAX), Micros::MAX);
        // 1000 tokens at 0.15 µUSD = 150 µUSD exactly.
        assert_eq!(
            Micros::from_picos_ceil(UnitPrice(150_000).cost_picos(1000)),
            Micros(150)
        );
    }
}
