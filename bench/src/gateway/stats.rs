//! Latency percentiles of one sample, and medians across rounds.

use std::time::Duration;

/// The latency distribution of one sample, in µs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Exchanges timed.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

impl Stats {
    /// Summarises `latencies` (sorted in place); all zero when empty.
    pub fn of(latencies: &mut [Duration]) -> Stats {
        if latencies.is_empty() {
            return Stats::default();
        }
        latencies.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Stats {
            n: latencies.len(),
            p50: us(percentile(latencies, 0.50)),
            p99: us(percentile(latencies, 0.99)),
            p999: us(percentile(latencies, 0.999)),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `sorted` (`q` in 0–1).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    // The epsilon keeps 0.99 × 1000 at rank 990 whatever the float rounding.
    let rank = (q * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (mean of the middle two for an even count); None when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The smallest and largest value; None when empty.
pub fn range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|x| x.is_finite())
        .fold(None, |acc, x| match acc {
            None => Some((x, x)),
            Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let s = Stats::of(&mut l);
        let rounded = |us: f64| us.round() as u64;
        assert_eq!(s.n, 1000);
        assert_eq!([s.p50, s.p99, s.p999].map(rounded), [500, 990, 999]);
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(range([2.0, -1.0, 5.0]), Some((-1.0, 5.0)));
        assert_eq!(median([]), None);
    }
}
