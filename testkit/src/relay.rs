//! A front service that forwards calls to a back service: for showing deadline
//! propagation across a hop.

use super::pb::test_service_client::TestServiceClient;
use super::pb::test_service_server::{TestService, TestServiceServer};
use super::pb::{
    Empty, SimpleRequest, SimpleResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
};
use futures_core::Stream;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tonic_balancer::BalancedChannel;
use tonic_balancer::deadline::DeadlineLayer;

/// A `grpc.testing.TestService` server whose `UnaryCall` and `EmptyCall` forward to a
/// back service through a [`BalancedChannel`], served with [`DeadlineLayer`]: the
/// forwarded call carries what is left of the inbound call's deadline.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Serves on 127.0.0.1, forwarding through `back`.
    pub async fn start(back: BalancedChannel) -> io::Result<Relay> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let service = TestServiceServer::new(Forward {
            back: TestServiceClient::new(back),
        });
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .layer(DeadlineLayer::new())
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "relay stopped");
            }
        });
        Ok(Relay { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Forward {
    back: TestServiceClient<BalancedChannel>,
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TestService for Forward {
    async fn empty_call(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        // No deadline is passed by hand: the back call inherits what is left.
        self.back.clone().empty_call(Empty {}).await
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        self.back.clone().unary_call(request.into_inner()).await
    }

    type StreamingOutputCallStream = OutputStream;

    async fn streaming_output_call(
        &self,
        _: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<OutputStream>, Status> {
        Err(Status::unimplemented("the relay forwards unary calls only"))
    }
}
