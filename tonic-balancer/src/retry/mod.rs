//! Retries and hedging (gRFC A6): what limits them, and what lets a call be sent again.
//!
//! The attempt driver lives in the channel; this module holds its parts:
//! - `Replay`: the request body shared by a call's attempts, with a size limit past
//!   which the call commits (is no longer retried).
//! - `Throttle`: gRPC's `retryThrottling` token bucket, per channel.
//! - [`RetryBudget`]: a percentage budget in the style of Finagle and tower.
//! - `pushback`: the server's `grpc-retry-pushback-ms` instruction.
//!
//! # Throttling or a budget?
//! Both stop retries from multiplying load when a backend fleet is failing. gRPC's
//! throttling is a token bucket: each failed attempt costs one token, each success earns
//! back `tokenRatio`, and retries stop while fewer than half the tokens are left. It
//! reacts to a *streak* of failures, and recovers slowly, which suits a fleet that is
//! entirely down. A budget instead caps retries at a *percentage* of recent calls (plus
//! a small floor per second), whatever else happens. Under a partial outage (a few
//! backends failing while most succeed) throttling keeps earning tokens from the
//! successes and keeps allowing retries; a budget still bounds the extra load to its
//! percentage. Use throttling to match other gRPC clients' behaviour from a shared
//! service config; use a budget when the bound on amplification is what matters. Both
//! can be on: a retry then needs both to allow it.

mod framing;
mod replay;

#[cfg(feature = "opentelemetry")]
pub(crate) use framing::Framing;
pub(crate) use framing::MessageLimit;

pub use replay::DEFAULT_REPLAY_BUFFER;
pub(crate) use replay::Replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What the server said about retrying, in `grpc-retry-pushback-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// No pushback: use the backoff.
    None,
    /// Retry exactly this much later (at most
    /// [`MAX_PUSHBACK`](crate::defaults::MAX_PUSHBACK)), and restart the backoff
    /// sequence.
    After(Duration),
    /// Do not retry (a negative, malformed or repeated value).
    Stop,
}

/// Reads `grpc-retry-pushback-ms` from response metadata (trailers, or the headers of a
/// Trailers-Only response).
pub(crate) fn pushback(metadata: &http::HeaderMap) -> Pushback {
    let mut values = metadata.get_all("grpc-retry-pushback-ms").iter();
    let Some(value) = values.next() else {
        return Pushback::None;
    };
    if values.next().is_some() {
        return Pushback::Stop;
    }
    let text = value.to_str().unwrap_or("");
    // A non-negative decimal integer, nothing else.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Pushback::Stop;
    }
    match text.parse::<u64>() {
        // A server cannot put a call to sleep for years: beyond the bound, "not now"
        // means the bound.
        Ok(ms) => Pushback::After(Duration::from_millis(ms).min(crate::defaults::MAX_PUSHBACK)),
        Err(_) => Pushback::Stop,
    }
}

// === impl Throttle ===

/// gRPC retry throttling (gRFC A6), shared by every call of a channel.
///
/// Tokens start at `max_tokens`. A failed attempt with a retryable (or non-fatal) code
/// costs one token, floored at zero; a successful call earns `token_ratio`, capped at
/// `max_tokens`. No retry or hedge starts while tokens ≤ `max_tokens / 2`.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// Thousandths of a token, so updates stay single atomics.
    milli_tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

impl Throttle {
    /// The config accepts any finite `token_ratio` > 0 (gRPC sets no upper bound), so
    /// both values are clamped to what the bucket can hold: a ratio above `max_tokens`
    /// refills the bucket in one success either way, and no sum below can overflow.
    pub(crate) fn new(max_tokens: f64, token_ratio: f64) -> Self {
        let milli = |value: f64| {
            let value = (value * 1000.0).round();
            // `as` saturates (and maps NaN to 0); the clamp keeps `2 × max` in range.
            (if value.is_nan() { 0.0 } else { value.max(0.0) }) as u64
        };
        let max = milli(max_tokens).min(u64::MAX / 2);
        Self {
            milli_tokens: AtomicU64::new(max),
            max,
            // gRPC keeps three decimals of the ratio.
            ratio: milli(token_ratio).min(max),
        }
    }

    pub(crate) fn allows_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Relaxed).saturating_mul(2) > self.max
    }

    pub(crate) fn on_failure(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    pub(crate) fn on_success(&self) {
        let (max, ratio) = (self.max, self.ratio);
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(ratio).min(max))
            });
    }

    #[cfg(test)]
    fn tokens(&self) -> f64 {
        self.milli_tokens.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

// === impl RetryBudget ===

pub use crate::defaults::DEFAULT_BUDGET_MIN_PER_SEC;
pub use crate::defaults::DEFAULT_BUDGET_RATIO;
pub use crate::defaults::DEFAULT_BUDGET_TTL;

/// A retry budget: retries (and hedges) may add at most `retry_ratio` of the calls made
/// in the last `ttl`, plus `min_retries_per_sec`. See the [module docs](self) for when to
/// use it instead of gRPC's throttling.
///
/// ```
/// # use tonic_balancer::retry::RetryBudget;
/// let mut budget = RetryBudget::default();
/// budget.retry_ratio = 0.1; // retries add at most 10 % load
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// How long a call counts toward the budget. Default [`DEFAULT_BUDGET_TTL`].
    pub ttl: Duration,
    /// Retries always allowed per second. Default [`DEFAULT_BUDGET_MIN_PER_SEC`].
    pub min_retries_per_sec: u32,
    /// Retries allowed per call made, 0 to 1000. Default [`DEFAULT_BUDGET_RATIO`].
    pub retry_ratio: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_BUDGET_TTL,
            min_retries_per_sec: DEFAULT_BUDGET_MIN_PER_SEC,
            retry_ratio: DEFAULT_BUDGET_RATIO,
        }
    }
}

impl RetryBudget {
    /// Checks the settings; the error names the offending one.
    pub fn validate(&self) -> Result<(), crate::InvalidSetting> {
        use crate::InvalidSetting;
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(60) {
            return Err(InvalidSetting::new(
                "retry_budget.ttl",
                "must be between 1 s and 60 s",
            ));
        }
        if !(0.0..=1000.0).contains(&self.retry_ratio) {
            return Err(InvalidSetting::new(
                "retry_budget.retry_ratio",
                "must be in [0, 1000]",
            ));
        }
        Ok(())
    }
}

/// Buckets the budget's window is cut into.
const BUCKETS: usize = 10;

/// The running state of a [`RetryBudget`]: deposits and withdrawals in a sliding window
/// of [`BUCKETS`] time slices, all atomics.
#[derive(Debug)]
pub(crate) struct Budget {
    config: RetryBudget,
    epoch: Instant,
    slice: Duration,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice (counted from `epoch`) the counts belong to.
    slice: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

impl Budget {
    pub(crate) fn new(config: RetryBudget) -> Self {
        Self {
            slice: config.ttl / BUCKETS as u32,
            epoch: Instant::now(),
            config,
            buckets: Default::default(),
        }
    }

    fn current(&self) -> (u64, &Bucket) {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        let slice = (elapsed.as_nanos() / self.slice.as_nanos().max(1)) as u64 + 1;
        let bucket = &self.buckets[slice as usize % BUCKETS];
        let seen = bucket.slice.load(Ordering::Acquire);
        if seen != slice
            && bucket
                .slice
                .compare_exchange(seen, slice, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This bucket's counts are a whole window old.
            bucket.deposits.store(0, Ordering::Relaxed);
            bucket.withdrawals.store(0, Ordering::Relaxed);
        }
        (slice, bucket)
    }

    /// Counts a call.
    pub(crate) fn deposit(&self) {
        self.current().1.deposits.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it has one.
    pub(crate) fn withdraw(&self) -> bool {
        let (now, bucket) = self.current();
        let live = |b: &Bucket| {
            let s = b.slice.load(Ordering::Acquire);
            s + (BUCKETS as u64) > now && s <= now
        };
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for b in self.buckets.iter().filter(|b| live(b)) {
            deposits += b.deposits.load(Ordering::Relaxed);
            withdrawals += b.withdrawals.load(Ordering::Relaxed);
        }
        let floor = f64::from(self.config.min_retries_per_sec) * self.config.ttl.as_secs_f64();
        let allowed = floor + self.config.retry_ratio * deposits as f64;
        if (withdrawals as f64) + 1.0 <= allowed {
            bucket.withdrawals.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_is_bounded() {
        let metadata = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-retry-pushback-ms",
                http::HeaderValue::from_static(value),
            );
            headers
        };
        let max = crate::defaults::MAX_PUSHBACK;
        assert_eq!(
            pushback(&metadata("700")),
            Pushback::After(Duration::from_millis(700))
        );
        assert_eq!(pushback(&metadata("31536000000000")), Pushback::After(max));
        assert_eq!(pushback(&metadata("-1")), Pushback::Stop);
    }
    use http::HeaderValue;
    use proptest::collection::vec;
    use proptest::prelude::{any, prop_assert_eq};

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append("grpc-retry-pushback-ms", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn pushback_values() {
        assert_eq!(pushback(&headers(&[])), Pushback::None);
        assert_eq!(
            pushback(&headers(&["700"])),
            Pushback::After(Duration::from_millis(700))
        );
        assert_eq!(pushback(&headers(&["0"])), Pushback::After(Duration::ZERO));
        for bad in ["-1", "abc", "1.5", " 7", "", "99999999999999999999999"] {
            assert_eq!(pushback(&headers(&[bad])), Pushback::Stop, "{bad:?}");
        }
        assert_eq!(pushback(&headers(&["1", "2"])), Pushback::Stop);
    }

    /// What `pushback` must say about these header values: a delay for one
    /// non-negative decimal integer that fits in u64 milliseconds (bounded by
    /// `MAX_PUSHBACK`), else stop.
    fn expected_pushback(map: &http::HeaderMap) -> Pushback {
        let values: Vec<_> = map.get_all("grpc-retry-pushback-ms").iter().collect();
        match values.as_slice() {
            [] => Pushback::None,
            [one] => {
                let bytes = one.as_bytes();
                let digits = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
                let ms = std::str::from_utf8(bytes).ok().filter(|_| digits);
                match ms.map(str::parse::<u64>) {
                    Some(Ok(ms)) => Pushback::After(
                        Duration::from_millis(ms).min(crate::defaults::MAX_PUSHBACK),
                    ),
                    _ => Pushback::Stop,
                }
            }
            _ => Pushback::Stop,
        }
    }

    proptest::proptest! {
        #[test]
        fn pushback_never_panics_on_arbitrary_header_bytes(
            values in vec(vec(any::<u8>(), 0..24), 1..3),
        ) {
            let mut map = http::HeaderMap::new();
            for value in &values {
                // Bytes HTTP/2 could not deliver as a header value are skipped.
                if let Ok(value) = http::HeaderValue::from_bytes(value) {
                    map.append("grpc-retry-pushback-ms", value);
                }
            }
            prop_assert_eq!(pushback(&map), expected_pushback(&map));
        }

        #[test]
        fn pushback_reads_digit_strings_exactly(text in "[-+ ]?[0-9]{0,24}[ms]?") {
            let map = headers(&[&text]);
            prop_assert_eq!(pushback(&map), expected_pushback(&map));
        }
    }

    #[test]
    fn throttle_follows_the_grpc_example() {
        // maxTokens 4, constant failure: the first call gets 2 attempts, later ones 1.
        let t = Throttle::new(4.0, 0.1);
        assert!(t.allows_retry());
        t.on_failure(); // call 1, attempt 1
        assert!(t.allows_retry()); // 3 > 2
        t.on_failure(); // call 1, attempt 2
        assert!(!t.allows_retry()); // 2 ≤ 2
        t.on_failure(); // call 2
        assert!(!t.allows_retry());
        for _ in 0..10 {
            t.on_failure();
        }
        assert_eq!(t.tokens(), 0.0);
        // Successes earn tokens back, up to the cap.
        for _ in 0..21 {
            t.on_success();
        }
        assert!((t.tokens() - 2.1).abs() < 1e-9);
        assert!(t.allows_retry());
        for _ in 0..100 {
            t.on_success();
        }
        assert_eq!(t.tokens(), 4.0);
    }

    #[test]
    fn throttle_arithmetic_holds_for_any_accepted_ratio() {
        // The service config accepts any finite tokenRatio > 0 and maxTokens up to 1000.
        for ratio in [1e-12, 0.001, 0.5, 999.0, 1e6, 1.8e16, 1e300, f64::MAX] {
            for max_tokens in [0.001, 1.0, 4.0, 1000.0] {
                let t = Throttle::new(max_tokens, ratio);
                t.on_success(); // at the cap already: must not overflow
                assert!(t.tokens() <= max_tokens + 1e-9, "{max_tokens} {ratio}");
                for _ in 0..3 {
                    t.on_failure();
                }
                t.on_success();
                t.on_success();
                assert!(t.tokens() <= max_tokens + 1e-9, "{max_tokens} {ratio}");
                let _ = t.allows_retry();
            }
        }
        // A ratio above the bucket refills it in one success.
        let t = Throttle::new(4.0, 1e300);
        (0..4).for_each(|_| t.on_failure());
        assert!(!t.allows_retry());
        t.on_success();
        assert_eq!(t.tokens(), 4.0);
        assert!(t.allows_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_its_floor_and_its_ratio() {
        let config = RetryBudget {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 1,
            retry_ratio: 0.5,
        };
        let budget = Budget::new(config);
        // Floor: 1/s over 10 s.
        let floor = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(floor, 10);
        // 100 calls earn 50 more.
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 50);
        // After a full window everything has expired: the floor again.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 10);
    }

    #[test]
    fn budget_settings_are_checked() {
        let mut b = RetryBudget::default();
        assert!(b.validate().is_ok());
        b.ttl = Duration::from_millis(10);
        assert!(b.validate().is_err());
    }
}
