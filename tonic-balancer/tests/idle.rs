//! gRFC A62 idleness: a channel with no call for its idle timeout lets go of its
//! connections and stops resolving; the next call wakes it. Real servers on 127.0.0.1;
//! the timeout passes on paused tokio time, the reconnection on real time.

mod support;

use std::time::Duration;
use support::*;
use tonic_balancer::resolver::Manual;
use tonic_balancer::{BalancedChannel, ConnectivityState, ErrorKind};
use tonic_balancer_testkit::faults::{RawBehaviour, RawH2Server};
use tonic_balancer_testkit::pb::Empty;
use tonic_balancer_testkit::{Backend, Latency};

const IDLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_unused_channel_goes_idle_and_the_next_call_reconnects_it() {
    let server = RawH2Server::start(RawBehaviour::RefuseStreams(0))
        .await
        .unwrap();
    let (resolver, handle) = Manual::new();
    let channel = BalancedChannel::builder_with_resolver(resolver)
        .idle_timeout(IDLE)
        .build()
        .unwrap();
    handle.update([server.addr()]);
    let mut client =
        tonic_balancer_testkit::pb::test_service_client::TestServiceClient::new(channel.clone());
    within(client.empty_call(Empty {})).await.unwrap();
    assert_eq!(server.connections(), 1);

    tokio::time::pause();
    let took = advance_until_idle(&channel, Duration::from_secs(200))
        .await
        .expect("the channel never went IDLE");
    // The check runs four times per timeout: IDLE between 1 and 1.25 timeouts.
    assert!(took >= IDLE, "IDLE after {took:?}, before the timeout");
    assert!(
        took <= IDLE * 5 / 4 + Duration::from_secs(1),
        "IDLE only after {took:?}"
    );
    assert!(channel.subchannels().is_empty(), "IDLE keeps no subchannel");
    assert_eq!(channel.stats().endpoints.len(), 0);
    tokio::time::resume();

    // The resolver kept its last address set; the next call brings the channel back.
    within(client.empty_call(Empty {})).await.unwrap();
    assert_eq!(server.connections(), 2, "waking up opens a new connection");
    assert_eq!(channel.state(), ConnectivityState::Ready);
}

#[tokio::test]
async fn waiting_for_ready_wakes_an_idle_channel_and_takes_new_addresses() {
    let first = Backend::start("first").await.unwrap();
    let second = Backend::start("second").await.unwrap();
    let (resolver, handle) = Manual::new();
    let channel = BalancedChannel::builder_with_resolver(resolver)
        .idle_timeout(IDLE)
        .build()
        .unwrap();
    handle.update([first.addr()]);
    within(channel.ready(Duration::from_secs(10)))
        .await
        .unwrap();

    tokio::time::pause();
    advance_until_idle(&channel, Duration::from_secs(200))
        .await
        .expect("the channel never went IDLE");
    // While IDLE the resolver is not read; what it says meanwhile is taken on waking.
    handle.update([second.addr()]);
    tokio::time::resume();
    within(channel.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut client = Client::new(channel.clone());
    assert_eq!(within(call(&mut client)).await.unwrap(), "second");
    assert_eq!(first.calls(), 0);
}

#[tokio::test]
async fn a_call_in_flight_keeps_the_channel_out_of_idle() {
    let backend = Backend::builder("slow")
        .latency(Latency::Fixed(Duration::from_secs(3600)))
        .start()
        .await
        .unwrap();
    let channel = BalancedChannel::builder(&target([backend.addr()]))
        .idle_timeout(IDLE)
        .build()
        .unwrap();
    let mut caller = Client::new(channel.clone());
    let long_call = tokio::spawn(async move { call(&mut caller).await });
    within(backend.wait_in_flight(1)).await;

    tokio::time::pause();
    let idle = advance_until_idle(&channel, Duration::from_secs(200)).await;
    assert_eq!(idle, None, "went IDLE with a call in flight");
    assert_eq!(channel.state(), ConnectivityState::Ready);
    long_call.abort();
}

#[tokio::test]
async fn an_idle_timeout_of_zero_never_idles() {
    let backend = Backend::start("a").await.unwrap();
    let channel = BalancedChannel::builder(&target([backend.addr()]))
        .idle_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    within(call(&mut client)).await.unwrap();
    tokio::time::pause();
    let idle = advance_until_idle(&channel, Duration::from_secs(3 * 3600)).await;
    assert_eq!(idle, None);
    assert_eq!(channel.state(), ConnectivityState::Ready);
}

#[tokio::test]
async fn zero_concurrent_connects_is_refused() {
    let error = BalancedChannel::builder("ipv4:127.0.0.1:1")
        .max_concurrent_connects(0)
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(
        error.to_string().contains("max_concurrent_connects"),
        "{error}"
    );
}
