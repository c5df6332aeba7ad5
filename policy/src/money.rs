//! Money as integers, never `f64`: [`Micros`] (micro-USD, 10⁻⁶) for amounts (budgets,
//! reservations, costs) and [`UnitPrice`] (pico-USD, 10⁻¹², per token, image or request) for
//! prices, which are far below one micro-USD (`"0.0000025"` USD per token is 2,500,000 pUSD).
//!
//! This is the one module that reads and writes USD in the workspace: the policy, the proxy and
//! the launcher all use it. It has two grammars, on purpose:
//!
//! - **Written by an operator** ([`Micros::parse_usd`], [`UnitPrice::parse_usd`]: the policy's
//!   `max_cost_usd` and prices, `MAX_COST_USD`, the launcher's `--budget-usd`): a plain decimal,
//!   `digits[.digits]`, exact to the unit and at most [`MAX_USD`]. No sign, exponent, `".5"` or
//!   `"5."`: a person writes those by accident more often than on purpose (`1e6` for `1e-6`), and
//!   nothing is rounded silently.
//! - **Sent by the upstream** ([`Micros::parse_upstream`], [`UnitPrice::parse_upstream`]:
//!   OpenRouter's `/api/v1/models` price strings, `usage.cost`, generation costs): any decimal
//!   OpenRouter or a JSON encoder writes (`"0.000003"`, `".5"`, `"1e-7"`, `1.2E-5`), read digit by
//!   digit so nothing is lost to binary floating point, bounded only by `u64`, and rounded in
//!   the direction the caller names. Charges and prices round [`Rounding::Up`]: the ledger never
//!   charges less than the bill, and a worst case is never below the real one.
//!
//! Both print as the shortest plain decimal ([`Micros`]' and [`UnitPrice`]'s `Display`), which
//! both grammars read back to the same value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Micro-USD in one USD.
pub const MICROS_PER_USD: u64 = 1_000_000;
/// Pico-USD in one micro-USD.
pub const PICOS_PER_MICRO: u64 = 1_000_000;
/// Pico-USD in one USD.
pub const PICOS_PER_USD: u64 = MICROS_PER_USD * PICOS_PER_MICRO;
/// The largest amount an operator may write (a budget, a price): 1,000,000 USD.
pub const MAX_USD: u64 = 1_000_000;

/// Why a USD amount was refused. Each message starts with "expected" so a caller can add
/// ", found <text>".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number at all (`"five"`, `"1,5"`, `"nan"`, `""`).
    #[error("expected an amount in usd such as \"5.00\" or \"0.0000025\"")]
    Syntax,
    /// A number an operator should not write: a sign, an exponent, `".5"` or `"5."`.
    #[error(
        "expected a plain decimal amount of usd such as \"5.00\" or \"0.0000025\" \
         (no sign, no exponent, digits on both sides of the point)"
    )]
    NotPlain,
    /// Below zero.
    #[error("expected an amount of zero or more")]
    Negative,
    /// Finer than the unit where exactness is required (an operator's amount).
    #[error("expected at most {decimals} decimal places (1 {unit})")]
    TooPrecise {
        /// Decimal places the unit holds.
        decimals: u32,
        /// The unit's name, `micro-usd` or `pico-usd`.
        unit: &'static str,
    },
    /// Larger than the grammar allows ([`MAX_USD`], or what fits the unit in a `u64`).
    #[error("expected at most {max_usd} usd")]
    TooLarge {
        /// The largest whole number of USD accepted.
        max_usd: u64,
    },
}

/// Which way an upstream amount finer than the unit is rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Away from zero: charges, costs and prices (never under-count money spent).
    Up,
    /// Toward zero: an amount that may be granted (never grant more than was stated).
    Down,
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

    /// An operator's amount: a plain decimal, exact to the micro-USD, at most [`MAX_USD`]
    /// (`"5"`, `"2.50"`, `"0.000001"`).
    pub fn parse_usd(text: &str) -> Result<Micros, MoneyError> {
        parse_operator(text, Unit::Micro).map(Micros)
    }

    /// An amount the upstream sent (`usage.cost`, a generation's `total_cost`): any decimal
    /// notation, digits below the micro-USD rounded as asked; at most `u64::MAX` µUSD.
    pub fn parse_upstream(text: &str, rounding: Rounding) -> Result<Micros, MoneyError> {
        parse_upstream(text, Unit::Micro, rounding).map(Micros)
    }

    /// Pico-USD to micro-USD, rounded up (a cost is never under-counted); saturates at
    /// [`Micros::MAX`].
    pub fn from_picos_ceil(picos: u128) -> Micros {
        let micros = picos.div_ceil(u128::from(PICOS_PER_MICRO));
        Micros(u64::try_from(micros).unwrap_or(u64::MAX))
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
    /// The shortest plain decimal of USD: `5`, `2.5`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_scaled(u128::from(self.0), Unit::Micro))
    }
}

/// A price per unit (token, image, request) in pico-USD (10⁻¹² USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitPrice(pub u64);

impl UnitPrice {
    /// Free.
    pub const ZERO: UnitPrice = UnitPrice(0);

    /// An operator's price per unit: a plain decimal, exact to the pico-USD, at most
    /// [`MAX_USD`] (`"0.0000025"`).
    pub fn parse_usd(text: &str) -> Result<UnitPrice, MoneyError> {
        parse_operator(text, Unit::Pico).map(UnitPrice)
    }

    /// A price the upstream sent (`"0.000003"`, `"1e-7"`): any decimal notation, digits below
    /// the pico-USD rounded as asked; at most `u64::MAX` pUSD (about 18 million USD per unit).
    /// `"-1"` (OpenRouter's "variable pricing") is [`MoneyError::Negative`], like any price
    /// below zero: the caller leaves such a model unpriced.
    pub fn parse_upstream(text: &str, rounding: Rounding) -> Result<UnitPrice, MoneyError> {
        parse_upstream(text, Unit::Pico, rounding).map(UnitPrice)
    }

    /// The price of a million units as the shortest plain decimal of USD (OpenRouter states
    /// token prices per million in `provider.max_price`), e.g. `0.15` for `0.00000015`.
    pub fn usd_per_million(self) -> String {
        format_scaled(self.cost_picos(1_000_000), Unit::Pico)
    }

    /// The price of `units` units, in pico-USD (cannot overflow: u64 × u64 < u128::MAX).
    pub fn cost_picos(self, units: u64) -> u128 {
        u128::from(self.0) * u128::from(units)
    }
}

impl fmt::Display for UnitPrice {
    /// The shortest plain decimal of USD per unit, e.g. `0.00000015`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_scaled(u128::from(self.0), Unit::Pico))
    }
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

    fn per_usd(self) -> u64 {
        10u64.pow(self.decimals())
    }
}

/// A decimal number as read: `digits × 10^exponent`, digits without leading or trailing zeros
/// (empty for zero).
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
    /// Written as `digits[.digits]` with nothing else: no sign, exponent or bare point.
    plain: bool,
}

/// Far beyond any meaningful exponent: `1e99999` is "too large" and `1e-99999` rounds, without
/// the position arithmetic below overflowing.
const MAX_EXPONENT: i64 = 10_000;

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, the union of what OpenRouter,
/// JSON encoders and operators write.
fn read(text: &str) -> Result<Decimal, MoneyError> {
    let (negative, signed, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, true, &text[1..]),
        Some(b'+') => (false, true, &text[1..]),
        _ => (false, false, text),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(read_exponent(e)?)),
        None => (rest, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !is_digits(whole) || !is_digits(fraction) {
        return Err(MoneyError::Syntax);
    }
    let bare_point = mantissa.contains('.') && (whole.is_empty() || fraction.is_empty());
    let mut digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let mut exponent = exponent.unwrap_or(0).saturating_sub(fraction_len);
    let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    digits.drain(..first);
    while digits.last() == Some(&0) {
        digits.pop();
        exponent += 1;
    }
    Ok(Decimal {
        negative,
        plain: !signed && !bare_point && !rest.contains(['e', 'E']),
        digits,
        exponent,
    })
}

/// The exponent after `e`: `[+-]digits`, clamped to ±[`MAX_EXPONENT`].
fn read_exponent(text: &str) -> Result<i64, MoneyError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MoneyError::Syntax);
    }
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX).min(MAX_EXPONENT);
    Ok(if negative { -magnitude } else { magnitude })
}

/// The operator grammar: plain, non-negative, exact, at most [`MAX_USD`].
fn parse_operator(text: &str, unit: Unit) -> Result<u64, MoneyError> {
    let d = read(text)?;
    if d.negative && !d.digits.is_empty() {
        return Err(MoneyError::Negative);
    }
    if !d.plain {
        return Err(MoneyError::NotPlain);
    }
    let too_large = MoneyError::TooLarge { max_usd: MAX_USD };
    match scale(&d, unit) {
        Scaled::Exact(v) if v <= u128::from(MAX_USD * unit.per_usd()) => {
            u64::try_from(v).map_err(|_| too_large)
        }
        Scaled::Exact(_) | Scaled::TooLarge => Err(too_large),
        Scaled::Inexact { .. } => Err(MoneyError::TooPrecise {
            decimals: unit.decimals(),
            unit: unit.name(),
        }),
    }
}

/// The upstream grammar: any notation, non-negative, rounded as asked, at most `u64::MAX` units.
fn parse_upstream(text: &str, unit: Unit, rounding: Rounding) -> Result<u64, MoneyError> {
    let d = read(text)?;
    if d.negative && !d.digits.is_empty() {
        return Err(MoneyError::Negative);
    }
    let value = match (scale(&d, unit), rounding) {
        (Scaled::Exact(v), _) => Some(v),
        (Scaled::Inexact { below }, Rounding::Down) => Some(below),
        (Scaled::Inexact { below }, Rounding::Up) => below.checked_add(1),
        (Scaled::TooLarge, _) => None,
    };
    value
        .and_then(|v| u64::try_from(v).ok())
        .ok_or(MoneyError::TooLarge {
            max_usd: u64::MAX / unit.per_usd(),
        })
}

/// A decimal in whole units of the target unit.
enum Scaled {
    /// Exactly this many units.
    Exact(u128),
    /// Strictly between `below` and `below + 1` units.
    Inexact { below: u128 },
    /// Beyond any `u64` of the unit.
    TooLarge,
}

/// More digits than any `u64` has (20): longer is too large, and stopping there keeps the
/// arithmetic inside `u128`.
const MAX_DIGITS: i64 = 21;

fn scale(d: &Decimal, unit: Unit) -> Scaled {
    if d.digits.is_empty() {
        return Scaled::Exact(0);
    }
    // value = digits × 10^shift units.
    let shift = d.exponent.saturating_add(i64::from(unit.decimals()));
    let len = i64::try_from(d.digits.len()).unwrap_or(i64::MAX);
    // Digits kept above the unit; the rest (never all zeros: trailing zeros are gone) are a
    // fraction of one unit.
    let kept = len.saturating_add(shift);
    if kept > MAX_DIGITS {
        return Scaled::TooLarge;
    }
    let int = |digits: &[u8]| digits.iter().fold(0u128, |n, &d| n * 10 + u128::from(d));
    if shift >= 0 {
        // shift ≤ MAX_DIGITS by the check above.
        return Scaled::Exact(int(&d.digits) * 10u128.pow(shift as u32));
    }
    let kept = usize::try_from(kept.max(0)).unwrap_or(0);
    Scaled::Inexact {
        below: int(&d.digits[..kept]),
    }
}

/// `value` units as the shortest plain decimal of USD.
fn format_scaled(value: u128, unit: Unit) -> String {
    let per_usd = u128::from(unit.per_usd());
    let (whole, fraction) = (value / per_usd, value % per_usd);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:0width$}", width = unit.decimals() as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests;
