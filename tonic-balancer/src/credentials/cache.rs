//! The token a layer's calls share, and the one background task that fetches it.

use super::{RefreshPolicy, Token, TokenSource};
use crate::deadline::saturating_add;
use crate::error::{catch_panic, chain};
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;
use tower::BoxError;

type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send + 'a>>;

/// [`TokenSource`] with its future boxed, so the cache need not be generic.
trait DynSource: Send + Sync {
    fn fetch(&self) -> FetchFuture<'_>;
}

impl<T: TokenSource> DynSource for T {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(TokenSource::fetch(self))
    }
}

/// A usable token: the header value, ready to clone onto calls.
struct Current {
    header: HeaderValue,
    expires_at: Option<Instant>,
    refresh_at: Option<Instant>,
}

impl Current {
    fn valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// How fetching went, for calls waiting on it.
#[derive(Clone, Default)]
struct Outcome {
    /// Fetches finished, failed or not.
    fetches: u64,
    /// A fetch is under way.
    fetching: bool,
    /// Why the last fetch failed, and when; cleared by a success.
    failure: Option<(Arc<str>, Instant)>,
    /// Why the refresh task stopped, if it did (a bug: it runs while the cache lives).
    stopped: Option<Arc<str>>,
}

struct Shared {
    source: Box<dyn DynSource>,
    policy: RefreshPolicy,
    /// Read on every call without a lock.
    current: ArcSwapOption<Current>,
    outcome: watch::Sender<Outcome>,
    /// A call found no valid token.
    demand: Notify,
}

impl Shared {
    fn valid(&self, now: Instant) -> Option<Arc<Current>> {
        self.current.load_full().filter(|c| c.valid(now))
    }
}

/// The state a [`BearerLayer`](super::BearerLayer) and its services share. Dropping the
/// last handle stops the background task.
pub(super) struct Cache {
    shared: Arc<Shared>,
    /// Taken by the first call that needs the task, which starts it.
    start: Mutex<Option<oneshot::Receiver<()>>>,
    _stop: oneshot::Sender<()>,
}

impl Cache {
    pub(super) fn new<T: TokenSource>(source: T, policy: RefreshPolicy) -> Self {
        let (stop, start) = oneshot::channel();
        Self {
            shared: Arc::new(Shared {
                source: Box::new(source),
                policy,
                current: ArcSwapOption::empty(),
                outcome: watch::Sender::new(Outcome::default()),
                demand: Notify::new(),
            }),
            start: Mutex::new(Some(start)),
            _stop: stop,
        }
    }

    pub(super) fn policy(&self) -> &RefreshPolicy {
        &self.shared.policy
    }

    /// The header for a call made now, if a valid token is at hand.
    pub(super) fn header(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.shared.current.load();
        match &*current {
            Some(current) if current.valid(now) => Some(current.header.clone()),
            _ => None,
        }
    }

    /// Waits for a valid token: at most the policy's fetch timeout, and not past the
    /// call's `deadline`. Must be polled within a tokio runtime.
    pub(super) fn wait(
        &self,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<HeaderValue, Status>> + Send + 'static {
        let shared = self.shared.clone();
        let mut slot = self.start.lock().unwrap_or_else(PoisonError::into_inner);
        // Start the refresh task now rather than when the future is first polled: a
        // future dropped unpolled must not take the only chance to start it with it.
        if let Some(stop) = slot.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(supervise(shared.clone(), stop))),
                // No runtime here: leave it for the next call.
                Err(_) => *slot = Some(stop),
            }
        }
        drop(slot);
        async move { wait(&shared, deadline).await }
    }
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(format!("no token for the call: {why}"))
}

async fn wait(shared: &Shared, deadline: Option<Instant>) -> Result<HeaderValue, Status> {
    let policy = &shared.policy;
    let mut outcome = shared.outcome.subscribe();
    let seen = {
        let now = Instant::now();
        let outcome = outcome.borrow_and_update();
        // Subscribed first, so a fetch that ends from here on wakes this call.
        if let Some(current) = shared.valid(now) {
            return Ok(current.header.clone());
        }
        if let Some(why) = &outcome.stopped {
            return Err(unauthenticated(why));
        }
        if let Some((why, at)) = &outcome.failure
            && !outcome.fetching
            && now < saturating_add(*at, policy.retry_delay)
        {
            return Err(unauthenticated(why));
        }
        outcome.fetches
    };
    shared.demand.notify_one();
    let limit = crate::deadline::after(policy.fetch_timeout);
    let until = deadline.map_or(limit, |d| d.min(limit));
    let done = |o: &Outcome| o.fetches > seen || o.stopped.is_some();
    match tokio::time::timeout_at(until, outcome.wait_for(done)).await {
        Ok(Ok(outcome)) => match shared.valid(Instant::now()) {
            Some(current) => Ok(current.header.clone()),
            None if outcome.stopped.is_some() => Err(unauthenticated(
                outcome
                    .stopped
                    .as_deref()
                    .unwrap_or("the token task has stopped"),
            )),
            None => Err(unauthenticated(
                outcome
                    .failure
                    .as_ref()
                    .map_or("token expired", |(why, _)| why),
            )),
        },
        Ok(Err(_)) => Err(unauthenticated("the token task has stopped")),
        Err(_) if until < limit => Err(Status::deadline_exceeded(
            "deadline exceeded waiting for a token",
        )),
        Err(_) => Err(unauthenticated(&format!(
            "fetching a token took longer than {:?}",
            policy.fetch_timeout
        ))),
    }
}

/// Runs the background task; if it ever panics, calls waiting for a token (and every
/// later one) fail at once with UNAUTHENTICATED naming the panic, instead of each waiting
/// out the fetch timeout.
async fn supervise(shared: Arc<Shared>, stop: oneshot::Receiver<()>) {
    if let Err(why) = catch_panic(run(shared.clone(), stop)).await {
        let why = format!("the token refresh task {why}");
        tracing::error!(error = %why, "bearer token task stopped");
        shared.outcome.send_modify(|o| {
            o.fetching = false;
            o.stopped = Some(why.into());
        });
    }
}

/// The background task: fetches when a call finds no valid token, and refreshes the
/// token while it is still valid. Ends when the cache is dropped.
async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let policy = &shared.policy;
    // After a failed refresh of a token that is still valid.
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let due = shared
            .valid(now)
            .and_then(|current| current.refresh_at)
            .map(|at| retry_at.map_or(at, |retry| retry.max(at)));
        if due.is_none_or(|due| due > now) {
            let sleep = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = shared.demand.notified() => {
                    let now = Instant::now();
                    let failed_recently = shared.outcome.borrow().failure.as_ref()
                        .is_some_and(|(_, at)| now < saturating_add(*at, policy.retry_delay));
                    // Calls answered by the last fetch may have asked again meanwhile.
                    if shared.valid(now).is_some() || failed_recently {
                        continue;
                    }
                }
                () = sleep => continue,
            }
        }
        shared.outcome.send_modify(|o| o.fetching = true);
        let fetched = tokio::select! {
            biased;
            _ = &mut stop => return,
            // A source that panics fails this fetch; the task lives on to retry.
            fetched = tokio::time::timeout(
                policy.fetch_timeout,
                catch_panic(async { shared.source.fetch().await }),
            ) => fetched.map(|caught| caught.unwrap_or_else(|why| Err(format!("token source {why}").into()))),
        };
        let now = Instant::now();
        let result = match fetched {
            Ok(Ok(token)) => accept(policy, token, now),
            Ok(Err(error)) => Err(format!("token source failed: {}", chain(&*error))),
            Err(_) => Err(format!(
                "token source did not answer within {:?}",
                policy.fetch_timeout
            )),
        };
        match result {
            Ok(current) => {
                tracing::debug!(
                    expires_in = ?current.expires_at.map(|at| at.saturating_duration_since(now)),
                    "bearer token fetched"
                );
                retry_at = None;
                shared.current.store(Some(Arc::new(current)));
                shared.outcome.send_modify(|o| {
                    o.fetches += 1;
                    o.fetching = false;
                    o.failure = None;
                });
            }
            Err(why) => {
                tracing::warn!(error = %why, "bearer token fetch failed");
                retry_at = Some(saturating_add(now, policy.retry_delay));
                shared.outcome.send_modify(|o| {
                    o.fetches += 1;
                    o.fetching = false;
                    o.failure = Some((why.into(), now));
                });
            }
        }
    }
}

/// Checks a fetched token and makes its header.
fn accept(policy: &RefreshPolicy, token: Token, now: Instant) -> Result<Current, String> {
    if token.expires_at.is_some_and(|at| at <= now) {
        return Err("token source returned a token that has already expired".to_owned());
    }
    let mut header = HeaderValue::try_from(format!("Bearer {}", token.value))
        .map_err(|_| "token source returned a token that is not a valid header value")?;
    header.set_sensitive(true);
    Ok(Current {
        header,
        expires_at: token.expires_at,
        refresh_at: token.expires_at.map(|at| policy.refresh_at(now, at)),
    })
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        let current = self.shared.current.load();
        let outcome = self.shared.outcome.borrow();
        let mut f = f.debug_struct("Token");
        match &*current {
            Some(current) => f.field("valid", &current.valid(now)).field(
                "expires_in",
                &current
                    .expires_at
                    .map(|at| at.saturating_duration_since(now)),
            ),
            None => f.field("valid", &false),
        };
        f.field("fetches", &outcome.fetches)
            .field("last_error", &outcome.failure.as_ref().map(|(why, _)| why))
            .finish()
    }
}
