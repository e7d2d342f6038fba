//! The test backends' `grpc.health.v1.Health` service: one status for the whole server
//! and the test service, changed synchronously, with Watch streams a test can break.

use futures_core::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::pb::test_service_server::SERVICE_NAME;

/// What the health service reports, shared with the backend's handle.
#[derive(Debug)]
pub(super) struct HealthState {
    /// SERVING (true) or NOT_SERVING (false).
    pub(super) serving: watch::Sender<bool>,
    /// Bumped to end every open Watch stream with an error.
    pub(super) breaks: watch::Sender<u64>,
    /// Watch streams opened so far.
    pub(super) watches: AtomicU64,
    /// Watch messages handed to the transport so far, over every stream.
    pub(super) sent: watch::Sender<u64>,
    /// Set when the server is shutting down: Watch streams end (cleanly).
    pub(super) ended: watch::Sender<bool>,
}

impl HealthState {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            serving: watch::Sender::new(true),
            breaks: watch::Sender::new(0),
            watches: AtomicU64::new(0),
            sent: watch::Sender::new(0),
            ended: watch::Sender::new(false),
        })
    }

    fn status(&self, service: &str) -> Option<ServingStatus> {
        let known = service.is_empty() || service == SERVICE_NAME;
        known.then(|| match *self.serving.borrow() {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        })
    }
}

pub(super) struct HealthService(pub(super) Arc<HealthState>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// What woke a Watch stream.
enum Wake {
    /// The status changed (false: the backend is gone).
    Changed(bool),
    Broken,
    Ended,
}

/// One Watch stream's state.
struct Watch {
    service: String,
    serving: watch::Receiver<bool>,
    breaks: watch::Receiver<u64>,
    ended: watch::Receiver<bool>,
    state: Arc<HealthState>,
    first: bool,
    done: bool,
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.0.status(&request.get_ref().service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.0.watches.fetch_add(1, Ordering::Relaxed);
        let watch = Watch {
            service: request.into_inner().service,
            serving: self.0.serving.subscribe(),
            breaks: self.0.breaks.subscribe(),
            ended: self.0.ended.subscribe(),
            state: self.0.clone(),
            first: true,
            done: false,
        };
        // Sends the current status, then every change, until the stream is broken.
        let stream = futures_util::stream::unfold(watch, |mut watch| async move {
            if watch.done || *watch.ended.borrow() {
                return None;
            }
            if !watch.first {
                let wake = tokio::select! {
                    changed = watch.serving.changed() => Wake::Changed(changed.is_ok()),
                    _ = watch.breaks.changed() => Wake::Broken,
                    _ = watch.ended.wait_for(|ended| *ended) => Wake::Ended,
                };
                match wake {
                    Wake::Changed(true) => {}
                    Wake::Changed(false) | Wake::Ended => return None,
                    Wake::Broken => {
                        watch.done = true;
                        let broken = Status::unavailable("health stream broken by the test");
                        return Some((Err(broken), watch));
                    }
                }
            }
            watch.first = false;
            watch.serving.borrow_and_update();
            let status = watch
                .state
                .status(&watch.service)
                .unwrap_or(ServingStatus::ServiceUnknown);
            watch.state.sent.send_modify(|n| *n += 1);
            Some((Ok(response(status)), watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
