//! The in-flight body budget: bytes of request bodies the gateway holds across all requests.
//!
//! `max_body` bounds one request and the concurrency cap bounds how many are read at once, but
//! their product (and the parsed JSON, which can be many times the raw bytes: `[0,0,0,...]`
//! costs a 32-byte `Value` per 2 bytes) is what must fit the Pod's memory limit. Each request
//! therefore holds budget for what it costs while its body is read, parsed and forwarded: the
//! bytes as they arrive (the declared `Content-Length` up front), then an estimate of the parse
//! before parsing. Over the budget a request waits up to [`WAIT`], then is refused with 503; a
//! body whose cost exceeds the whole budget can never fit and is refused with 413.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for budget before it is refused (503, Retry-After).
pub const WAIT: Duration = Duration::from_secs(5);
/// Budget charged per JSON value the body may parse into: a `serde_json::Value`, twice over
/// for `Vec` growth, plus an object key's `String` and map node share.
const BYTES_PER_VALUE: usize = 3 * std::mem::size_of::<serde_json::Value>() + 32;
/// Besides the raw bytes: the parsed strings and the re-serialised body, each at most as large.
const COPIES: usize = 2;

/// The shared budget.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
    in_use: IntGauge,
}

/// Why a body could not be held.
#[derive(Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// No budget freed within [`WAIT`] (many large bodies in flight): 503, retry.
    Busy,
    /// The body's cost (`needed` bytes) exceeds the whole budget: 413, never retry.
    TooCostly {
        /// The estimated cost.
        needed: usize,
        /// The whole budget.
        total: usize,
    },
}

/// Why reading a body failed.
#[derive(Debug)]
pub enum ReadError {
    /// The budget refused it.
    Budget(BudgetError),
    /// More than the limit arrived.
    TooLarge,
    /// The client's stream failed.
    Body(hyper::Error),
}

impl BodyBudget {
    /// A budget of `total` bytes; `in_use` follows what is held.
    pub fn new(total: usize, budget_gauge: &IntGauge, in_use: IntGauge) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        budget_gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            in_use,
        }
    }

    /// Takes `n` more bytes of budget into `held`, waiting up to [`WAIT`].
    async fn grow(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        n: usize,
    ) -> Result<(), BudgetError> {
        if n == 0 {
            return Ok(());
        }
        let already = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let needed = already.saturating_add(n);
        if needed > self.total {
            return Err(BudgetError::TooCostly {
                needed,
                total: self.total,
            });
        }
        let n32 = u32::try_from(n).map_err(|_| BudgetError::TooCostly {
            needed,
            total: self.total,
        })?;
        let permit = tokio::time::timeout(WAIT, self.permits.clone().acquire_many_owned(n32))
            .await
            .map_err(|_| BudgetError::Busy)?
            .map_err(|_| BudgetError::Busy)?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let used = self.total.saturating_sub(self.permits.available_permits());
        self.in_use.set(i64::try_from(used).unwrap_or(i64::MAX));
    }

    /// Reads `body` (at most `limit` bytes; `declared` is its Content-Length, if any) holding
    /// budget for every byte, then for the estimated parse. The caller bounds the time.
    pub async fn read(
        &self,
        body: &mut Incoming,
        limit: usize,
        declared: Option<usize>,
    ) -> Result<Held, ReadError> {
        let mut held = None;
        let mut buf = BytesMut::new();
        let result = async {
            if let Some(n) = declared {
                self.grow(&mut held, n.min(limit))
                    .await
                    .map_err(ReadError::Budget)?;
                buf.reserve(n.min(limit));
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(ReadError::Body)?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if buf.len() + data.len() > limit {
                    return Err(ReadError::TooLarge);
                }
                let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
                let want = buf.len() + data.len();
                if want > have {
                    self.grow(&mut held, want - have)
                        .await
                        .map_err(ReadError::Budget)?;
                }
                buf.extend_from_slice(&data);
            }
            let extra = parse_cost(&buf);
            self.grow(&mut held, extra)
                .await
                .map_err(ReadError::Budget)?;
            Ok(())
        }
        .await;
        let held = Held {
            bytes: buf.freeze(),
            permit: held,
            budget: self.clone(),
        };
        result.map(|()| held)
    }
}

/// What parsing and forwarding `body` may cost beyond its raw bytes: copies of its strings and
/// of the re-serialised body, and one tree node per JSON value (counted from the structural
/// characters outside strings, an upper bound on the values).
pub fn parse_cost(body: &[u8]) -> usize {
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => values += 1,
                _ => {}
            }
        }
    }
    body.len()
        .saturating_mul(COPIES)
        .saturating_add(values.saturating_mul(BYTES_PER_VALUE))
}

/// A body read under the budget; the budget is returned when this is dropped.
pub struct Held {
    bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    budget: BodyBudget,
}

impl Deref for Held {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cost_counts_values_outside_strings() {
        let small = parse_cost(br#"{"model":"a","messages":[{"role":"user","content":"hi"}]}"#);
        let dense = parse_cost(&[b"[0".as_slice(), &b",0".repeat(1000), b"]"].concat());
        let quoted = parse_cost(format!("[\"{}\"]", ",[{".repeat(667)).as_bytes());
        assert!(small < 1024, "{small}");
        // Same size, very different trees: a thousand values against one string.
        assert!(dense > 1000 * BYTES_PER_VALUE, "{dense}");
        assert!(quoted < 3 * 2004 + 3 * BYTES_PER_VALUE, "{quoted}");
        // An escaped quote does not end the string.
        assert!(parse_cost(br#"["a\",,,,"]"#) < parse_cost(br#"["a",,,,""]"#));
    }

    #[tokio::test]
    async fn budget_is_returned_on_drop_and_refuses_what_cannot_fit() {
        let gauge = IntGauge::new("b", "b").unwrap_or_else(|_| unreachable!());
        let in_use = IntGauge::new("u", "u").unwrap_or_else(|_| unreachable!());
        let budget = BodyBudget::new(100, &gauge, in_use.clone());
        let mut held = None;
        budget
            .grow(&mut held, 60)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(in_use.get(), 60);
        assert_eq!(
            budget.grow(&mut None, 101).await,
            Err(BudgetError::TooCostly {
                needed: 101,
                total: 100
            })
        );
        drop(held);
        budget.publish();
        assert_eq!(in_use.get(), 0);
    }
}
