//! Every default and limit of the crate, in one place, each with the reason for its value.
//!
//! The types that use them link here from their field docs, and their own modules
//! re-export them under the names they have always had there (for example
//! [`balance::DEFAULT_CHOICE_COUNT`](crate::balance::DEFAULT_CHOICE_COUNT)). Values that
//! come from a gRFC or from grpc-go say so; a value of this crate's own says why.

use std::time::Duration;
use tonic::Code;

// === Connections (grpc/grpc doc/connection-backoff.md) ===

/// Default [`ConnectionBackoff::base_delay`](crate::ConnectionBackoff::base_delay): gRPC
/// waits 1 s before the first reconnect.
pub const DEFAULT_BACKOFF_BASE_DELAY: Duration = Duration::from_secs(1);
/// Default [`ConnectionBackoff::multiplier`](crate::ConnectionBackoff::multiplier):
/// gRPC's 1.6.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 1.6;
/// Default [`ConnectionBackoff::jitter`](crate::ConnectionBackoff::jitter): ±20 %, so
/// clients that lost a backend together do not reconnect in lockstep.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.2;
/// Default [`ConnectionBackoff::max_delay`](crate::ConnectionBackoff::max_delay): gRPC's
/// 120 s.
pub const DEFAULT_BACKOFF_MAX_DELAY: Duration = Duration::from_secs(120);
/// Default [`ConnectionBackoff::min_connect_timeout`](crate::ConnectionBackoff::min_connect_timeout):
/// gRPC gives every attempt 20 s.
pub const DEFAULT_MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection that has answered a call, or stayed up this long, has proved itself:
/// when it ends, its subchannel reconnects at once with a fresh backoff. One that ends
/// sooner without answering anything (a server that accepts, sends its SETTINGS and
/// closes) counts as a failed attempt and waits out the backoff, so a flapping server
/// gets a handful of connections in five seconds, not hundreds.
pub const CONNECTION_PROVEN_AFTER: Duration = Duration::from_secs(10);

// === Liveness and keepalive (gRFC A8) ===

/// The built-in liveness check's shortest silence: a connection with calls outstanding
/// that has read nothing for this long (and at least [`LIVENESS_RTT_FACTOR`] smoothed
/// round trips) gets one PING, and is declared dead if no ACK comes within as long
/// again. 1 s keeps a frozen backend (a hung process, a partition) from failing calls
/// for more than about 2.5 s, while a loopback or in-cluster round trip (≤ 10 ms) is a
/// hundred times shorter, so a busy but live server is never mistaken for a dead one.
pub const DEFAULT_LIVENESS_FLOOR: Duration = Duration::from_secs(1);
/// The liveness silence in smoothed round trips (RTT sampled from the connect handshake,
/// then from each PING): over a 100 ms WAN link the check waits 1 s, over 300 ms 3 s.
pub const LIVENESS_RTT_FACTOR: u32 = 10;
/// The shortest keepalive time accepted (gRFC A8): shorter values are raised to it.
pub const MIN_KEEPALIVE_TIME: Duration = Duration::from_secs(10);
/// Default keepalive timeout (gRFC A8): no PING ACK within 20 s closes the connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

// === Timers ===

/// About 30 years, tokio's own "far future": where a timer or deadline set further away
/// than the clock can add (`Duration::MAX`, which would panic in `Instant + Duration`)
/// is put instead. Settings accept any `Duration`; past this, nothing observable differs.
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

// === Targets ===

/// The port gRPC assumes when a target names none.
pub const DEFAULT_PORT: u16 = 443;
/// The port of an `http://host` target that names none: http's own, as tonic's
/// `Endpoint` has it (`https://host` keeps 443).
pub const DEFAULT_HTTP_PORT: u16 = 80;

// === Policies ===

/// Default `least_request` sample size: two choices already give most of the benefit of
/// comparing all (gRFC A48).
pub const DEFAULT_CHOICE_COUNT: usize = 2;
/// The largest `least_request` sample size gRPC accepts; larger values are clamped
/// (gRFC A48).
pub const MAX_CHOICE_COUNT: usize = 10;
/// Default `peak_ewma` decay: how slowly a backend that answered slowly is trusted again.
/// At 10 s (Finagle's and linkerd's choice) one slow answer keeps traffic away for
/// seconds, while a backend that recovers is back to its fast estimate within ~30 s.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
/// Default `peak_ewma` RTT of a backend not yet measured. Its first successful answer
/// replaces it outright. 30 ms sits above typical in-cluster RPC times, so a new backend
/// is not flooded before its first answer, and below the slow outliers peak EWMA exists
/// to avoid, so it is not starved either.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The codes that count as a backend failing a call (rather than answering it) unless
/// configured otherwise: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN and
/// RESOURCE_EXHAUSTED. Outlier detection counts them, and a fast failure of this kind
/// never makes a backend look fast to peak EWMA.
pub const DEFAULT_FAILURE_CODES: [Code; 5] = [
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::Unknown,
    Code::ResourceExhausted,
];

// === Retries and hedging (gRFC A6) ===

/// `maxAttempts` (retry or hedging) above this is treated as this (gRFC A6; grpc-go and
/// C-core cap at 5).
pub const MAX_ATTEMPTS: u32 = 5;
/// Jitter of the retry backoff: each delay is spread uniformly over ±20 % (gRFC A6 as
/// amended in 2024; grpcio's measured gaps match).
pub const RETRY_JITTER: f64 = 0.2;
/// Default [`replay buffer`](crate::Builder::retry_buffer_size) per call: 256 KiB, as
/// grpc-go. Unary requests are far smaller; a stream that sends more than this commits
/// (is not retried) rather than hold its whole history in memory.
pub const DEFAULT_REPLAY_BUFFER: usize = 256 * 1024;
/// The replay budget of a whole channel: the request bytes all its calls together may
/// hold for retries and hedges (grpc-java's 16 MiB). A call whose body would take the
/// channel past it is committed from the start: it is sent once, plus transparent
/// retries, but not retried by its policy. The bytes are given back when the call ends.
pub const DEFAULT_CHANNEL_REPLAY_BUFFER: usize = 16 * 1024 * 1024;
/// The longest delay a server's `grpc-retry-pushback-ms` can impose before the next
/// attempt: 120 s, gRPC's longest connection backoff. Without a bound a server could
/// put a call that has no deadline to sleep for years; with it, a longer pushback still
/// says "not now" and is honoured as "2 minutes".
pub const MAX_PUSHBACK: Duration = Duration::from_secs(120);
/// Default [`RetryBudget::ttl`](crate::retry::RetryBudget::ttl): how long a call counts
/// toward the budget (Finagle's 10 s).
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Default [`RetryBudget::min_retries_per_sec`](crate::retry::RetryBudget::min_retries_per_sec):
/// lets a quiet channel still retry (10/s).
pub const DEFAULT_BUDGET_MIN_PER_SEC: u32 = 10;
/// Default [`RetryBudget::retry_ratio`](crate::retry::RetryBudget::retry_ratio): retries
/// may add 20 % to the calls made.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;

// === Statistics ===

/// Default [`Builder::stats_method_limit`](crate::Builder::stats_method_limit): 256
/// methods get figures (and exported label sets) of their own per channel. A client of a
/// few services calls tens of methods; the bound is for channels whose method paths
/// come from outside (a gateway), where each new path would otherwise add a map entry
/// and up to 17 `grpc_client_calls_total` series for ever.
pub const DEFAULT_STATS_METHOD_LIMIT: usize = 256;

// === Resolution ===

/// The most addresses a channel takes from one resolver update; the rest are dropped
/// with a warning. Each address is a subchannel with a task and a connection, so a
/// resolver (or a DNS answer) listing millions must not make millions of them.
pub const MAX_ADDRESSES: usize = 10_000;
/// The most SRV records of one answer whose targets are looked up; the rest are
/// ignored. RFC 2782 answers list a handful; this bounds the work a hostile or broken
/// DNS server can cause.
pub const MAX_SRV_TARGETS: usize = 256;
/// How many SRV target lookups run at once.
pub const MAX_CONCURRENT_SRV_LOOKUPS: usize = 8;

// === Outlier detection (gRFC A50) and health ===

/// Default [`OutlierDetection::interval`](crate::health::OutlierDetection::interval):
/// gRFC A50's 10 s.
pub const DEFAULT_EJECTION_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`OutlierDetection::base_ejection_time`](crate::health::OutlierDetection::base_ejection_time):
/// gRFC A50's 30 s.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Default [`OutlierDetection::max_ejection_time`](crate::health::OutlierDetection::max_ejection_time):
/// gRFC A50's 300 s.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Default [`OutlierDetection::max_ejection_percent`](crate::health::OutlierDetection::max_ejection_percent):
/// gRFC A50's 10 %.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Default [`OutlierDetection::consecutive_failures`](crate::health::OutlierDetection::consecutive_failures):
/// 5, as Envoy and Finagle.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default [`GracefulShutdown::drain`](crate::health::GracefulShutdown::drain): 5 s.
/// Clients watching health move away within a round trip; the rest is margin for
/// clients that only notice when a call is refused, and for calls already in flight.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

// === DNS ===

/// Default `DnsOptions::min_refresh`: 5 s, the shortest wait before looking a name up
/// again, whatever its TTL. Kubernetes' CoreDNS serves TTL 5 s, so that is honoured
/// exactly; a TTL 0 name (Consul's default) costs the DNS server one lookup per 5 s per
/// channel, not a busy loop.
pub const DEFAULT_DNS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// Default `DnsOptions::max_refresh`: 5 min, the longest wait, so a record changed
/// before its long TTL ran out is noticed within minutes, not hours.
pub const DEFAULT_DNS_MAX_REFRESH: Duration = Duration::from_secs(300);
/// Default `DnsOptions::min_re_resolve_interval`: 30 s, gRPC's
/// `dns_min_time_between_resolutions` (grpc-go's `MinResolutionInterval`).
pub const DEFAULT_DNS_MIN_RE_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default `DnsOptions::retry_base_delay`: 1 s, gRPC's first backoff delay. Failed
/// lookups back off with the connection backoff's multiplier and jitter.
pub const DEFAULT_DNS_RETRY_BASE_DELAY: Duration = Duration::from_secs(1);
/// Default `DnsOptions::retry_max_delay`: 120 s, gRPC's longest backoff delay.
pub const DEFAULT_DNS_RETRY_MAX_DELAY: Duration = Duration::from_secs(120);
/// The longest `DnsOptions::query_timeout` accepted: 1 h. hickory adds the timeout to
/// the current instant, which overflows (a panic in its task) for values near
/// `Duration::MAX`; no DNS answer is worth waiting an hour for.
pub const MAX_DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);

// === Per-call credentials ===

/// Default [`RefreshPolicy::lifetime_fraction`](crate::credentials::RefreshPolicy::lifetime_fraction):
/// refresh once 80 % of a token's lifetime has passed, leaving a fifth of it for the
/// refresh to succeed or be retried.
pub const DEFAULT_TOKEN_LIFETIME_FRACTION: f64 = 0.8;
/// Default [`RefreshPolicy::before_expiry`](crate::credentials::RefreshPolicy::before_expiry):
/// refresh at least 10 s before expiry, time for a slow identity provider and for clock
/// skew between it and the servers (the Go oauth2 package treats tokens as expired 10 s
/// early for the same reason).
pub const DEFAULT_TOKEN_REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(10);
/// Default [`RefreshPolicy::fetch_timeout`](crate::credentials::RefreshPolicy::fetch_timeout):
/// 10 s, a generous round trip to an identity provider under load; the longest a call
/// waits for a token.
pub const DEFAULT_TOKEN_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`RefreshPolicy::retry_delay`](crate::credentials::RefreshPolicy::retry_delay):
/// 1 s, gRPC's first reconnect delay; keeps a failing token source from being asked by
/// every call.
pub const DEFAULT_TOKEN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// gRFC A62: a channel with no call for this long lets go of its connections and stops
/// resolving until the next call (gRPC's 30 minutes). [`Builder::idle_timeout`](crate::Builder::idle_timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Connection attempts one channel runs at once ([`Builder::max_concurrent_connects`](crate::Builder::max_concurrent_connects)).
/// Measured with the bench's `scale` scenario (2 000 new addresses at once, 2 cores):
/// unbounded, the calls on the connections already up waited up to 400 ms behind the
/// handshakes; 64 at a time (with the control task's other changes) the slowest took
/// 13 ms, and the 2 000 were READY in 258 ms. Over a WAN with 100 ms handshakes it
/// still opens 640 connections a second.
pub const DEFAULT_MAX_CONCURRENT_CONNECTS: usize = 64;
