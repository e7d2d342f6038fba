//! Deadlines: the `grpc-timeout` wire format, and deadlines that follow a request from
//! service to service.
//!
//! gRPC carries a call's remaining time in the `grpc-timeout` request header: at most
//! eight ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
//!
//! # Why propagate
//! A front service with 300 ms left on its own request gains nothing from a back-end
//! call that runs for 2 s: the caller is gone by then. Propagation makes every call made
//! while handling a request inherit what is left of that request's deadline, so work
//! stops everywhere at once.
//!
//! # How
//! On the server, [`DeadlineLayer`] reads each inbound request's `grpc-timeout` and makes
//! it the *inherited deadline* while the handler runs (a tokio task-local). A
//! [`BalancedChannel`](crate::BalancedChannel) call made inside the handler uses the
//! earliest of: the inherited deadline, the call's own `grpc-timeout`
//! (`tonic::Request::set_timeout`) and its method's configured timeout; it sends the time
//! left as `grpc-timeout`, and fails at once with DEADLINE_EXCEEDED, without sending, if
//! none is left.
//!
//! A task-local does not cross `tokio::spawn`: wrap spawned work in [`scope`] with
//! [`current`] to carry the deadline along.
//!
//! ```
//! # async fn handler() {
//! use tonic_balancer::deadline;
//! let inherited = deadline::current();
//! tokio::spawn(async move {
//!     let work = async { /* calls here see the same deadline */ };
//!     match inherited {
//!         Some(d) => deadline::scope(d, work).await,
//!         None => work.await,
//!     }
//! });
//! # }
//! ```

mod layer;

pub use layer::{DeadlineLayer, DeadlineService};

use http::HeaderValue;
use std::future::Future;
use std::time::Duration;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

tokio::task_local! {
    static INHERITED: Option<Instant>;
}

pub(crate) use crate::defaults::FAR_FUTURE;

/// `instant + duration`, saturating where the sum would overflow `Instant` (which
/// panics): any duration a user can set, up to `Duration::MAX`, is then a valid (if
/// distant) point in time.
pub(crate) fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(FAR_FUTURE))
        .unwrap_or(instant)
}

/// `Instant::now() + duration`, saturating (see [`saturating_add`]).
pub(crate) fn after(duration: Duration) -> Instant {
    saturating_add(Instant::now(), duration)
}

/// The deadline inherited from the request being handled, if any.
pub fn current() -> Option<Instant> {
    INHERITED.try_with(|d| *d).ok().flatten()
}

/// Runs `future` with `deadline` as its inherited deadline, or the one already inherited
/// if that is earlier: a scope can shorten a deadline, never extend it.
pub fn scope<F: Future>(deadline: Instant, future: F) -> TaskLocalFuture<Option<Instant>, F> {
    let deadline = current().map_or(deadline, |outer| outer.min(deadline));
    INHERITED.scope(Some(deadline), future)
}

/// Runs `future` with this inherited deadline (`None`: none), replacing any outer one.
pub(crate) fn scope_exact<F: Future>(
    deadline: Option<Instant>,
    future: F,
) -> TaskLocalFuture<Option<Instant>, F> {
    INHERITED.scope(deadline, future)
}

/// The header that carries a call's timeout.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The largest value the header can carry: eight digits.
const MAX_VALUE: u128 = 99_999_999;

/// Units from finest to coarsest, with their length in nanoseconds.
const UNITS: [(u8, u128); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// A `grpc-timeout` value that does not follow the wire format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid grpc-timeout {value:?}: {reason}")]
pub struct InvalidTimeout {
    value: String,
    reason: &'static str,
}

/// Encodes a timeout with the finest unit whose value fits in eight digits, rounding up
/// so the peer never sees less time than there is (1.5 s → `1500000u`, 100 h → `360000S`).
///
/// A zero timeout encodes as `0n`; one beyond the format's range (about 11 400 years)
/// is clamped to `99999999H`.
pub fn encode_timeout(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    let (unit, value) = UNITS
        .iter()
        .find_map(|&(unit, len)| {
            let value = nanos.div_ceil(len);
            (value <= MAX_VALUE).then_some((unit, value))
        })
        .unwrap_or((b'H', MAX_VALUE));
    let mut text = value.to_string();
    text.push(char::from(unit));
    HeaderValue::try_from(text).expect("digits and an ASCII unit are a valid header value")
}

/// Decodes a `grpc-timeout` value. Anything but 1 to 8 ASCII digits followed by one unit
/// is rejected: no sign, no spaces, no missing unit.
///
/// # Errors
/// [`InvalidTimeout`] naming the value and what is wrong with it.
pub fn decode_timeout(value: &[u8]) -> Result<Duration, InvalidTimeout> {
    let invalid = |reason| InvalidTimeout {
        value: String::from_utf8_lossy(value).into_owned(),
        reason,
    };
    let Some((&unit, digits)) = value.split_last() else {
        return Err(invalid("empty"));
    };
    let Some(&(_, unit_nanos)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(invalid(
            "the last character must be a unit: H, M, S, m, u or n",
        ));
    };
    if digits.is_empty() {
        return Err(invalid("no digits before the unit"));
    }
    if digits.len() > 8 {
        return Err(invalid("more than 8 digits"));
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid("only ASCII digits may precede the unit"));
    }
    let number = digits
        .iter()
        .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'));
    let nanos = number * unit_nanos;
    // At most 99_999_999 hours: fits a Duration (u64 seconds) with room to spare.
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| invalid("out of range"))?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| invalid("out of range"))?;
    Ok(Duration::new(secs, subsec))
}

/// The timeout a request carries in its `grpc-timeout` header, if any.
///
/// A malformed header is reported rather than ignored: a caller that asked for a
/// deadline must not silently get none.
pub(crate) fn request_timeout(
    headers: &http::HeaderMap,
) -> Option<Result<Duration, InvalidTimeout>> {
    headers
        .get(GRPC_TIMEOUT)
        .map(|value| decode_timeout(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn scopes_nest_and_only_shorten() {
        assert_eq!(current(), None);
        let now = Instant::now();
        let (long, short) = (now + Duration::from_secs(10), now + Duration::from_secs(1));
        scope(long, async move {
            assert_eq!(current(), Some(long));
            scope(short, async move { assert_eq!(current(), Some(short)) }).await;
            // An inner scope cannot extend the outer deadline.
            scope(now + Duration::from_secs(60), async move {
                assert_eq!(current(), Some(long))
            })
            .await;
        })
        .await;
        assert_eq!(current(), None);
    }

    fn enc(d: Duration) -> String {
        encode_timeout(d).to_str().unwrap().to_owned()
    }

    #[test]
    fn encodes_with_the_finest_unit_that_fits() {
        assert_eq!(enc(Duration::from_millis(1500)), "1500000u");
        assert_eq!(enc(Duration::from_secs(360_000)), "360000S");
        assert_eq!(enc(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(enc(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(enc(Duration::ZERO), "0n");
        assert_eq!(enc(Duration::MAX), "99999999H");
    }

    #[test]
    fn decodes_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("4m", Duration::from_millis(4)),
            ("5u", Duration::from_micros(5)),
            ("6n", Duration::from_nanos(6)),
            ("0n", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, want) in cases {
            assert_eq!(decode_timeout(text.as_bytes()), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "S",
            "1",
            "123456789S",
            "-1S",
            "+1S",
            " 1S",
            "1S ",
            "1 S",
            "1s",
            "1.5S",
            "1x",
            "１S",
        ] {
            assert!(decode_timeout(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn round_trips_within_one_unit(nanos in 0u64..u64::MAX) {
            let d = Duration::from_nanos(nanos);
            let header = encode_timeout(d);
            let text = header.to_str().unwrap();
            prop_assert!(text.len() <= 9, "{text}");
            let back = decode_timeout(text.as_bytes()).unwrap();
            // Rounded up, and by less than one unit of the chosen size.
            let unit = UNITS.iter().find(|(u, _)| *u == *text.as_bytes().last().unwrap()).unwrap().1;
            prop_assert!(back >= d);
            prop_assert!(back.as_nanos() - d.as_nanos() < unit);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = decode_timeout(&bytes);
        }

        /// Near-valid values (signs, spaces, too many digits, other units, overflowing
        /// numbers): accepted exactly when the format allows, with the value it says.
        #[test]
        fn accepts_exactly_the_wire_format(text in "[0-9+ -]{0,11}[HMSmunhs ]?") {
            let bytes = text.as_bytes();
            let well_formed = bytes.split_last().is_some_and(|(unit, digits)| {
                UNITS.iter().any(|(u, _)| u == unit)
                    && (1..=8).contains(&digits.len())
                    && digits.iter().all(u8::is_ascii_digit)
            });
            match decode_timeout(bytes) {
                Ok(decoded) => {
                    prop_assert!(well_formed, "{text:?} accepted");
                    let (unit, digits) = bytes.split_last().unwrap();
                    let number: u128 = std::str::from_utf8(digits).unwrap().parse().unwrap();
                    let nanos = UNITS.iter().find(|(u, _)| u == unit).unwrap().1;
                    prop_assert_eq!(decoded.as_nanos(), number * nanos);
                }
                Err(error) => prop_assert!(!well_formed, "{text:?} rejected: {error}"),
            }
        }
    }
}
