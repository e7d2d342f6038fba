//! Health: client-side health checking (gRFC A17), outlier ejection (gRFC A50), and the
//! server-side half of a rolling restart.
//!
//! # Health checking
//! With a health service name set (the service config's
//! `healthCheckConfig.serviceName`, or [`Builder::health_check`](crate::Builder::health_check);
//! `""` means the whole server), every connected subchannel opens a
//! `grpc.health.v1.Health/Watch` stream on its own connection. It counts as READY only
//! while the server says SERVING; NOT_SERVING or SERVICE_UNKNOWN take it out of the
//! picker within a round trip of the server's change, and SERVING brings it back. A
//! server that does not implement the health service is treated as healthy (logged once
//! at error level). A stream that ends is re-opened after a backoff.
//!
//! # Outlier detection
//! See [`OutlierDetection`]: backends that fail calls while passing health checks are
//! ejected for a while.
//!
//! # When every backend is unhealthy or ejected
//! The channel never sends calls into a black hole, and never hangs them: by default it
//! does what gRPC does and fails them at once with UNAVAILABLE naming the last health or
//! connection error. That is the safer default: a backend that reports NOT_SERVING is
//! asking for no traffic (it may be draining, or its own dependencies are down), and
//! sending it calls anyway hides the outage from callers' retries and alerts.
//! [`Builder::panic_threshold`](crate::Builder::panic_threshold) opts into Envoy's panic
//! mode instead: when fewer than that percentage of backends are usable, calls spread over
//! every *connected* backend, ignoring health and ejection. Choose it when a false
//! NOT_SERVING (a broken health check) is a likelier failure than a real one.
//!
//! # Rolling restarts without failed calls
//! A server going away should first say NOT_SERVING, keep serving while clients move
//! away, then stop accepting and finish what it has. [`GracefulShutdown`] does that for a
//! tonic server.

mod outlier;

pub use crate::defaults::DEFAULT_FAILURE_CODES;
pub use outlier::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_INTERVAL,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME, FailurePercentageEjection,
    OutlierDetection, SuccessRateEjection,
};
pub(crate) use outlier::{Ejection, Host, on_consecutive_failures, on_interval};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use crate::defaults::DEFAULT_DRAIN;

type CustomMarkDown = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How a server is marked NOT_SERVING.
enum MarkDown {
    /// tonic-health's reporter, for these services.
    Reporter(HealthReporter, Vec<String>),
    Custom(CustomMarkDown),
}

/// The shutdown signal for a tonic server that drains before it stops.
///
/// On `signal` it marks the server NOT_SERVING, keeps serving for the drain period so
/// clients that watch health stop sending, then resolves: tonic's `serve_with_shutdown`
/// stops accepting connections and finishes the calls in flight.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tonic_balancer::health::GracefulShutdown;
///
/// let (reporter, health_service) = tonic_health::server::health_reporter();
/// let shutdown = GracefulShutdown::new(reporter)
///     .service("orders.Orders")
///     .drain(Duration::from_secs(5))
///     .on(async { let _ = tokio::signal::ctrl_c().await; });
/// tonic::transport::Server::builder()
///     .add_service(health_service)
///     // .add_service(OrdersServer::new(orders))
///     .serve_with_shutdown("127.0.0.1:50051".parse()?, shutdown)
///     .await?;
/// # Ok(()) }
/// ```
pub struct GracefulShutdown {
    mark_down: MarkDown,
    drain: Duration,
}

impl GracefulShutdown {
    /// Drains through tonic-health's reporter: the whole server (`""`) and each
    /// [`service`](Self::service) are set NOT_SERVING.
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            mark_down: MarkDown::Reporter(reporter, vec![String::new()]),
            drain: DEFAULT_DRAIN,
        }
    }

    /// Drains with a function of your own that marks the server down (for a health
    /// service other than tonic-health's). That health service must end its open Watch
    /// streams once the drain is over: tonic's graceful shutdown waits for every open
    /// stream, and clients keep their health Watch open for as long as it lasts.
    pub fn with<F, Fut>(mark_down: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            mark_down: MarkDown::Custom(Box::new(move || Box::pin(mark_down()))),
            drain: DEFAULT_DRAIN,
        }
    }

    /// Also marks this service NOT_SERVING (with [`GracefulShutdown::new`]; a custom
    /// mark-down function decides for itself).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        if let MarkDown::Reporter(_, services) = &mut self.mark_down {
            services.push(name.into());
        }
        self
    }

    /// How long to keep serving after marking down. Default [`DEFAULT_DRAIN`].
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The future to give tonic's `serve_with_shutdown`: resolves `drain` after `signal`.
    ///
    /// With tonic-health's reporter, the drained services' statuses are cleared at the
    /// end, which ends clients' health Watch streams: tonic's graceful shutdown waits
    /// for every open stream, and would otherwise wait for those forever.
    pub async fn on<S: Future<Output = ()>>(self, signal: S) {
        signal.await;
        tracing::info!(drain = ?self.drain, "shutting down: marked NOT_SERVING, draining");
        match self.mark_down {
            MarkDown::Reporter(mut reporter, services) => {
                for service in &services {
                    reporter
                        .set_service_status(service, ServingStatus::NotServing)
                        .await;
                }
                tokio::time::sleep(self.drain).await;
                for service in &services {
                    reporter.clear_service_status(service).await;
                }
            }
            MarkDown::Custom(mark_down) => {
                mark_down().await;
                tokio::time::sleep(self.drain).await;
            }
        }
    }
}

impl fmt::Debug for GracefulShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulShutdown")
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}
