//! Client-side health checking (gRFC A17): one `grpc.health.v1.Health/Watch` stream per
//! connected subchannel, on that subchannel's own connection.

use super::{ConnectivityState, ReadyConn, Update, Worker};
use crate::backoff::Backoff;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

impl Worker {
    /// Watches the health of a connected subchannel and reports READY or unhealthy as the
    /// server says, until the connection ends (the caller stops polling this then).
    ///
    /// - Until the first message the subchannel stays CONNECTING.
    /// - SERVING → READY; NOT_SERVING, SERVICE_UNKNOWN (or any other value) → unhealthy
    ///   (TRANSIENT_FAILURE), and back to READY on SERVING.
    /// - The server does not implement health (UNIMPLEMENTED): healthy, logged once at
    ///   error level, not asked again on this connection.
    /// - Any other end of the stream: unhealthy, re-opened after a backoff (reset by
    ///   every message received).
    /// - A message that repeats the status already reported on this stream reports
    ///   nothing: the control task would only rebuild the same picker.
    pub(super) async fn watch_health(&self, ready: ReadyConn, service: String) {
        let address = ready.subchannel.address.clone();
        let mut backoff = Backoff::new(self.settings.backoff);
        let mut rng = SmallRng::seed_from_u64(self.subchannel.id);
        loop {
            let mut client = HealthClient::new(ready.conn.service());
            let request = HealthCheckRequest {
                service: service.clone(),
            };
            let why = match client.watch(request).await {
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::error!(
                        %address,
                        "health checking is on but the server does not implement \
                         grpc.health.v1.Health; treating it as healthy"
                    );
                    self.report(ConnectivityState::Ready, Update::Ready(ready.clone()));
                    return std::future::pending().await;
                }
                Err(status) => format!("health watch failed: {}", status.message()),
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut current = None;
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                backoff.reset();
                                if current.replace(message.status) == Some(message.status) {
                                    continue;
                                }
                                let serving = message.status == ServingStatus::Serving as i32;
                                if serving {
                                    self.report(
                                        ConnectivityState::Ready,
                                        Update::Ready(ready.clone()),
                                    );
                                } else {
                                    let status = ServingStatus::try_from(message.status)
                                        .map_or("UNKNOWN_STATUS", |s| s.as_str_name());
                                    let why = format!("{address}: health check reports {status}");
                                    tracing::debug!(%address, status, "unhealthy");
                                    self.report(
                                        ConnectivityState::TransientFailure,
                                        Update::Unhealthy(ready.clone(), why),
                                    );
                                }
                            }
                            Ok(None) => break "health watch ended".to_owned(),
                            Err(status) => {
                                break format!("health watch ended: {}", status.message());
                            }
                        }
                    }
                }
            };
            let why = format!("{address}: {why}");
            tracing::debug!(%address, reason = %why, "health stream ended; re-opening after a backoff");
            self.report(
                ConnectivityState::TransientFailure,
                Update::Unhealthy(ready.clone(), why),
            );
            tokio::time::sleep(backoff.next_delay(&mut rng)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load::Accounting;
    use crate::resolver::Address;
    use crate::subchannel::{Update, new_subchannel, spawn};
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tonic_balancer_testkit::Backend;

    /// The next update that is not CONNECTING, as a word.
    async fn next(events: &mut mpsc::UnboundedReceiver<super::super::Event>) -> &'static str {
        loop {
            match events.recv().await.expect("the worker is running").update {
                Update::Connecting => continue,
                Update::Ready(_) => return "ready",
                Update::Unhealthy(..) => return "unhealthy",
                Update::Lost(_) => return "lost",
                Update::Failed(_) => return "failed",
                Update::Idle => return "idle",
            }
        }
    }

    #[tokio::test]
    async fn a_repeated_health_status_reports_nothing() {
        let backend = Backend::start("a").await.unwrap();
        let settings = crate::subchannel::test_settings(Some(String::new()), 1);
        let subchannel = new_subchannel(0, Address::from(backend.addr()), &Accounting::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let _worker = spawn(subchannel, std::sync::Arc::new(settings), true, 1, tx);
        let run = async {
            assert_eq!(next(&mut events).await, "ready");
            // SERVING again, three times, each sent before the next, then a real change:
            // the change must be the very next update (the stream keeps the order).
            for _ in 0..3 {
                let sent = backend.health_messages();
                backend.repeat_health_status();
                backend.wait_health_messages(sent + 1).await;
            }
            backend.set_serving(false);
            assert_eq!(next(&mut events).await, "unhealthy");
            let sent = backend.health_messages();
            backend.repeat_health_status();
            backend.wait_health_messages(sent + 1).await;
            backend.set_serving(true);
            assert_eq!(next(&mut events).await, "ready");
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("updates within 30 s");
    }
}
