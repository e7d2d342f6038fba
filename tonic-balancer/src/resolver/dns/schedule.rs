//! When the DNS resolver looks up, and what it reports: the network-free state machine.
//!
//! A [`Schedule`] owns one [`Lookup`] (hickory in production, a script in the tests
//! below) and decides when to run it:
//!
//! - at once on the first poll;
//! - after a successful lookup, when its shortest TTL runs out, clamped to
//!   `[min_refresh, max_refresh]`;
//! - after a failed or empty lookup, after the next delay of a backoff sequence (reset by
//!   the next success);
//! - on [`Schedule::re_resolve`], as soon as the rate limit allows: no earlier than
//!   `min_re_resolve_interval` after the start of the previous lookup. Requests made
//!   while one is pending (or while a lookup runs) are coalesced into one lookup.
//!
//! It reports an address set only when it differs from the last one it reported (as a
//! set: a reordering by the DNS server is not a change), and every failure as an error;
//! the channel keeps the last good set through failures.

use super::super::{Address, Resolution, ResolveError};
use crate::backoff::{Backoff, BackoffParams};
use crate::deadline::saturating_add;
use rand::{SeedableRng, rngs::SmallRng};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// What one successful lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// The addresses, in the order the answer gave them.
    pub(crate) addrs: Vec<Address>,
    /// The shortest TTL among the records the addresses came from.
    pub(crate) ttl: Duration,
}

pub(crate) type LookupFuture = Pin<Box<dyn Future<Output = Result<Found, ResolveError>> + Send>>;

/// One DNS lookup, started on demand. Errors carry the message the user will see.
pub(crate) trait Lookup: Send + 'static {
    fn lookup(&mut self) -> LookupFuture;
}

impl<F> Lookup for F
where
    F: FnMut() -> LookupFuture + Send + 'static,
{
    fn lookup(&mut self) -> LookupFuture {
        self()
    }
}

/// The timing rules of a [`Schedule`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Timing {
    pub(crate) min_refresh: Duration,
    pub(crate) max_refresh: Duration,
    pub(crate) min_re_resolve_interval: Duration,
    pub(crate) retry: BackoffParams,
}

pub(crate) struct Schedule {
    lookup: Box<dyn Lookup>,
    timing: Timing,
    backoff: Backoff,
    rng: SmallRng,
    in_flight: Option<LookupFuture>,
    /// When the next lookup is due on its own (refresh or retry); `None`: now.
    next: Option<Instant>,
    /// When the last lookup started, for the re-resolve rate limit.
    last_start: Option<Instant>,
    /// A re-resolve was asked for and no lookup has started since.
    re_resolve: bool,
    /// Created on the first poll, so a schedule can be built outside a runtime.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last set reported, sorted, to tell whether a new answer changed anything.
    reported: Option<Vec<(SocketAddr, Option<u32>)>>,
    waker: Option<Waker>,
}

impl Schedule {
    pub(crate) fn new(lookup: Box<dyn Lookup>, timing: Timing, seed: u64) -> Self {
        Self {
            lookup,
            timing,
            backoff: Backoff::new(timing.retry),
            rng: SmallRng::seed_from_u64(seed),
            in_flight: None,
            next: None,
            last_start: None,
            re_resolve: false,
            timer: None,
            reported: None,
            waker: None,
        }
    }

    /// Asks for a lookup as soon as the rate limit allows.
    pub(crate) fn re_resolve(&mut self) {
        self.re_resolve = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The next change to report: a new address set or a failure. Never finishes.
    ///
    /// # Cancel safety
    /// Nothing is lost when a poll returns `Pending`: a running lookup stays in place.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Resolution> {
        self.waker = Some(cx.waker().clone());
        loop {
            if let Some(lookup) = self.in_flight.as_mut() {
                let result = ready!(lookup.as_mut().poll(cx));
                self.in_flight = None;
                match self.finish(result) {
                    Some(report) => return Poll::Ready(report),
                    None => continue,
                }
            }
            let now = Instant::now();
            let due = self.due(now);
            if due <= now {
                self.last_start = Some(now);
                self.re_resolve = false;
                self.in_flight = Some(self.lookup.lookup());
                continue;
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            ready!(timer.as_mut().poll(cx));
        }
    }

    /// When the next lookup should start.
    fn due(&self, now: Instant) -> Instant {
        let scheduled = self.next.unwrap_or(now);
        if !self.re_resolve {
            return scheduled;
        }
        let allowed = match self.last_start {
            Some(start) => saturating_add(start, self.timing.min_re_resolve_interval),
            None => now,
        };
        scheduled.min(allowed)
    }

    /// Schedules the next lookup after one ends; returns what to report, if anything.
    fn finish(&mut self, result: Result<Found, ResolveError>) -> Option<Resolution> {
        let now = Instant::now();
        match result {
            Ok(found) if !found.addrs.is_empty() => {
                self.backoff.reset();
                let wait = found
                    .ttl
                    .clamp(self.timing.min_refresh, self.timing.max_refresh);
                self.next = Some(saturating_add(now, wait));
                let addrs = dedup(found.addrs);
                let mut key: Vec<_> = addrs.iter().map(|a| (a.addr, a.weight)).collect();
                key.sort_unstable();
                if self.reported.as_ref() == Some(&key) {
                    return None;
                }
                self.reported = Some(key);
                Some(Ok(addrs))
            }
            Ok(_) => {
                self.next = Some(saturating_add(now, self.backoff.next_delay(&mut self.rng)));
                Some(Err(ResolveError::new("the DNS lookup found no addresses")))
            }
            Err(error) => {
                self.next = Some(saturating_add(now, self.backoff.next_delay(&mut self.rng)));
                Some(Err(error))
            }
        }
    }
}

/// Drops repeated socket addresses, keeping the first of each.
fn dedup(addrs: Vec<Address>) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::with_capacity(addrs.len());
    for address in addrs {
        if !out.iter().any(|a| a.addr == address.addr) {
            out.push(address);
        }
    }
    out
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("timing", &self.timing)
            .field("next", &self.next)
            .field("last_start", &self.last_start)
            .field("re_resolve", &self.re_resolve)
            .field("looking_up", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing {
            min_refresh: SEC,
            max_refresh: 600 * SEC,
            min_re_resolve_interval: 30 * SEC,
            retry: BackoffParams {
                initial: SEC,
                multiplier: 2.0,
                max: 8 * SEC,
                jitter: 0.0,
            },
        }
    }

    fn addrs(ports: &[u16]) -> Vec<Address> {
        ports
            .iter()
            .map(|&p| Address::new(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect()
    }

    fn found(ports: &[u16], ttl: Duration) -> Result<Found, ResolveError> {
        Ok(Found {
            addrs: addrs(ports),
            ttl,
        })
    }

    /// A scripted DNS: each lookup takes the next answer (the last one repeats) after
    /// `latency`, and records when it started.
    #[derive(Clone, Default)]
    struct Script {
        answers: Arc<Mutex<VecDeque<Result<Found, ResolveError>>>>,
        starts: Arc<Mutex<Vec<Instant>>>,
        latency: Duration,
    }

    impl Script {
        fn new(latency: Duration) -> Self {
            Self {
                latency,
                ..Default::default()
            }
        }

        fn then(&self, answer: Result<Found, ResolveError>) -> &Self {
            self.answers.lock().unwrap().push_back(answer);
            self
        }

        fn lookups(&self) -> usize {
            self.starts.lock().unwrap().len()
        }

        fn schedule(&self, timing: Timing) -> Schedule {
            let script = self.clone();
            let lookup = move || -> LookupFuture {
                script.starts.lock().unwrap().push(Instant::now());
                let mut answers = script.answers.lock().unwrap();
                let answer = match answers.len() {
                    0 => Err(ResolveError::new("script is empty")),
                    1 => answers[0].clone(),
                    _ => answers.pop_front().unwrap(),
                };
                let latency = script.latency;
                Box::pin(async move {
                    tokio::time::sleep(latency).await;
                    answer
                })
            };
            Schedule::new(Box::new(lookup), timing, 7)
        }
    }

    fn poll(schedule: &mut Schedule) -> Poll<Resolution> {
        schedule.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    /// Lets timers that are due fire, then polls once.
    async fn poll_after(schedule: &mut Schedule, elapsed: Duration) -> Poll<Resolution> {
        tokio::time::advance(elapsed).await;
        poll(schedule)
    }

    #[tokio::test(start_paused = true)]
    async fn looks_up_at_once_then_when_the_ttl_runs_out() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1, 2], 10 * SEC))
            .then(found(&[2, 1], 10 * SEC))
            .then(found(&[3], 10 * SEC));
        let mut s = script.schedule(timing());
        assert_eq!(poll(&mut s), Poll::Ready(Ok(addrs(&[1, 2]))));
        assert_eq!(script.lookups(), 1);

        assert!(poll_after(&mut s, 10 * SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 1);
        // Same set, reordered: looked up, nothing reported.
        assert!(poll_after(&mut s, MS).await.is_pending());
        assert_eq!(script.lookups(), 2);
        assert_eq!(
            poll_after(&mut s, 10 * SEC).await,
            Poll::Ready(Ok(addrs(&[3])))
        );
        assert_eq!(script.lookups(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn durations_at_max_saturate_instead_of_overflowing_the_clock() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], Duration::MAX))
            .then(Err(ResolveError::new("SERVFAIL")));
        let max = Timing {
            min_refresh: Duration::MAX,
            max_refresh: Duration::MAX,
            min_re_resolve_interval: Duration::MAX,
            retry: BackoffParams {
                initial: Duration::MAX,
                multiplier: 1.6,
                max: Duration::MAX,
                jitter: 0.2,
            },
        };
        let mut s = script.schedule(max);
        assert!(poll(&mut s).is_ready());
        // The next refresh is "never" (decades away), and a re-resolve request waits for
        // the rate limit, also "never": no panic, no lookup.
        s.re_resolve();
        assert!(poll_after(&mut s, 86_400 * SEC).await.is_pending());
        assert_eq!(script.lookups(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_re_resolve_interval_looks_up_at_once() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], 100 * SEC))
            .then(found(&[2], 100 * SEC));
        let mut t = timing();
        t.min_re_resolve_interval = Duration::ZERO;
        let mut s = script.schedule(t);
        assert!(poll(&mut s).is_ready());
        s.re_resolve();
        assert_eq!(poll(&mut s), Poll::Ready(Ok(addrs(&[2]))));
        assert_eq!(script.lookups(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_is_clamped_to_the_refresh_bounds() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], Duration::ZERO))
            .then(found(&[2], 86_400 * SEC))
            .then(found(&[3], SEC));
        let mut s = script.schedule(timing());
        assert!(poll(&mut s).is_ready());
        // TTL 0: refreshed after min_refresh (1 s), not in a busy loop.
        assert!(poll_after(&mut s, SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 1);
        assert!(poll_after(&mut s, MS).await.is_ready());
        // A day: refreshed after max_refresh (600 s).
        assert!(poll_after(&mut s, 600 * SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 2);
        assert!(poll_after(&mut s, MS).await.is_ready());
        assert_eq!(script.lookups(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_reported_and_retried_with_backoff_until_a_success() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], 100 * SEC))
            .then(Err(ResolveError::new("SERVFAIL")))
            .then(Ok(Found {
                addrs: Vec::new(),
                ttl: SEC,
            }))
            .then(Err(ResolveError::new("timed out")))
            .then(found(&[1], 100 * SEC))
            .then(Err(ResolveError::new("again")));
        let mut s = script.schedule(timing());
        assert!(poll(&mut s).is_ready());
        assert_eq!(
            poll_after(&mut s, 100 * SEC).await,
            Poll::Ready(Err(ResolveError::new("SERVFAIL")))
        );
        // Backoff 1 s, 2 s, 4 s (no jitter in this test); an empty answer is a failure.
        assert!(poll_after(&mut s, SEC - MS).await.is_pending());
        let empty = poll_after(&mut s, MS).await;
        assert!(
            matches!(&empty, Poll::Ready(Err(e)) if e.to_string().contains("no addresses")),
            "{empty:?}"
        );
        assert!(poll_after(&mut s, 2 * SEC - MS).await.is_pending());
        assert_eq!(
            poll_after(&mut s, MS).await,
            Poll::Ready(Err(ResolveError::new("timed out")))
        );
        // The set is unchanged from the last good one: nothing to report.
        assert!(poll_after(&mut s, 4 * SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 4);
        assert!(poll_after(&mut s, MS).await.is_pending());
        assert_eq!(script.lookups(), 5);
        // The success reset the backoff: the next failure waits 1 s again.
        assert!(poll_after(&mut s, 100 * SEC).await.is_ready());
        assert!(poll_after(&mut s, SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 6);
        assert!(poll_after(&mut s, MS).await.is_ready());
        assert_eq!(script.lookups(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolve_is_rate_limited_and_coalesced() {
        let script = Script::new(Duration::ZERO);
        script.then(found(&[1], 300 * SEC));
        let mut s = script.schedule(timing());
        assert!(poll(&mut s).is_ready());

        // A connection fails 1 s after the lookup: the next one waits for 30 s after it.
        tokio::time::advance(SEC).await;
        for _ in 0..5 {
            s.re_resolve();
            assert!(poll(&mut s).is_pending());
        }
        assert!(poll_after(&mut s, 29 * SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 1);
        assert!(poll_after(&mut s, MS).await.is_pending());
        assert_eq!(script.lookups(), 2, "five requests, one lookup");

        // Nothing more without a request: the TTL (300 s) is far away.
        assert!(poll_after(&mut s, 100 * SEC).await.is_pending());
        assert_eq!(script.lookups(), 2);
        // Long after the last lookup, a request is served at once.
        s.re_resolve();
        assert!(poll(&mut s).is_pending());
        assert_eq!(script.lookups(), 3);
        let starts = script.starts.lock().unwrap().clone();
        assert_eq!(starts[1] - starts[0], 30 * SEC);
        assert_eq!(starts[2] - starts[1], 100 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolve_during_a_lookup_is_served_after_the_interval() {
        let script = Script::new(2 * SEC);
        script
            .then(found(&[1], 300 * SEC))
            .then(found(&[1, 2], 300 * SEC));
        let mut s = script.schedule(timing());
        assert!(poll(&mut s).is_pending(), "the first lookup takes 2 s");
        s.re_resolve();
        assert_eq!(
            poll_after(&mut s, 2 * SEC).await,
            Poll::Ready(Ok(addrs(&[1])))
        );
        assert_eq!(script.lookups(), 1);
        // The request came after the lookup started, so it gets a lookup of its own,
        // 30 s after the start of the previous one.
        assert!(poll_after(&mut s, 28 * SEC - MS).await.is_pending());
        assert_eq!(script.lookups(), 1);
        assert!(poll_after(&mut s, MS).await.is_pending());
        assert_eq!(script.lookups(), 2);
        assert_eq!(
            poll_after(&mut s, 2 * SEC).await,
            Poll::Ready(Ok(addrs(&[1, 2])))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolve_cuts_a_retry_backoff_short_but_not_the_rate_limit() {
        let mut t = timing();
        t.retry.initial = 100 * SEC;
        t.retry.max = 100 * SEC;
        t.min_re_resolve_interval = 5 * SEC;
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], 300 * SEC))
            .then(Err(ResolveError::new("down")))
            .then(found(&[2], 300 * SEC));
        let mut s = script.schedule(t);
        assert!(poll(&mut s).is_ready());
        s.re_resolve();
        assert!(poll_after(&mut s, 5 * SEC).await.is_ready(), "the error");
        assert_eq!(script.lookups(), 2);
        // Backing off for 100 s; a request gets a lookup 5 s after the failed one started.
        s.re_resolve();
        assert!(poll_after(&mut s, 5 * SEC - MS).await.is_pending());
        assert_eq!(poll_after(&mut s, MS).await, Poll::Ready(Ok(addrs(&[2]))));
        assert_eq!(script.lookups(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolve_wakes_the_task_waiting_on_the_schedule() {
        let script = Script::new(Duration::ZERO);
        script
            .then(found(&[1], 300 * SEC))
            .then(found(&[2], 300 * SEC));
        let mut t = timing();
        t.min_re_resolve_interval = Duration::ZERO;
        let s = Arc::new(Mutex::new(script.schedule(t)));
        assert!(poll(&mut s.lock().unwrap()).is_ready());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { std::future::poll_fn(|cx| s.lock().unwrap().poll_next(cx)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.lock().unwrap().re_resolve();
        assert_eq!(waiter.await.unwrap(), Ok(addrs(&[2])));
    }

    #[test]
    fn duplicates_are_dropped_and_weights_kept() {
        let mut a = addrs(&[1, 2, 1]);
        a[0].weight = Some(5);
        let out = dedup(a);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].weight, Some(5));
    }
}
