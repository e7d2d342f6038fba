//! Request bodies that can be sent again: what lets a call be retried or hedged.

use super::MessageLimit;
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;

pub use crate::defaults::DEFAULT_REPLAY_BUFFER;

/// A request body shared by the attempts of one call.
///
/// The first attempt to need data reads it from the caller's body and records it (up to
/// the limit); later attempts replay the record, then continue from the caller's body
/// where the record ends. Once more than the limit has been read, the record is dropped
/// and no new attempt can start: the call is committed.
#[derive(Clone, Debug)]
pub(crate) struct Replay {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug)]
struct Shared {
    source: Body,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// The caller's body has ended (or failed).
    ended: bool,
    recorded: usize,
    limit: usize,
    /// More was read than recorded: no attempt can be replayed from the start.
    overflowed: bool,
    /// The method's `maxRequestMessageBytes`, followed over the caller's body.
    message_limit: Option<MessageLimit>,
    /// Why the body was refused, kept for the caller: the transport only reports that
    /// the stream was reset.
    rejected: Option<Status>,
    /// The channel's replay budget (bytes held by all its calls, and the most they
    /// may hold) and what this record takes of it.
    budget: Option<(Arc<AtomicUsize>, usize)>,
    counted: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some((held, _)) = &self.budget {
            held.fetch_sub(self.counted, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Takes `bytes` more of the channel's budget; false if that would exceed it.
    fn take_budget(&mut self, bytes: usize) -> bool {
        let Some((held, cap)) = &self.budget else {
            return true;
        };
        let before = held.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > *cap {
            held.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        self.counted += bytes;
        true
    }

    /// Drops the record: nothing can be replayed any more.
    fn overflow(&mut self) {
        self.overflowed = true;
        self.frames = Vec::new();
        if let Some((held, _)) = &self.budget {
            held.fetch_sub(self.counted, Ordering::Relaxed);
        }
        self.counted = 0;
    }
}

impl Replay {
    pub(crate) fn new(source: Body, limit: usize, message_limit: Option<MessageLimit>) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source,
                frames: Vec::new(),
                trailers: None,
                ended: false,
                recorded: 0,
                limit,
                overflowed: false,
                message_limit,
                rejected: None,
                budget: None,
                counted: 0,
            })),
        }
    }

    /// The same, counting what it records against a channel-wide budget: `held` bytes
    /// of at most `cap`. A record that would take the channel past it is dropped and
    /// the call commits (gRFC A6; grpc-java's per-channel limit).
    pub(crate) fn with_budget(self, held: Arc<AtomicUsize>, cap: usize) -> Self {
        lock(&self.shared).budget = Some((held, cap));
        self
    }

    /// The call has committed: drops what was recorded (giving the channel's replay
    /// budget back) and records nothing more; the attempt still streaming carries on.
    pub(crate) fn commit(&self) {
        let mut shared = lock(&self.shared);
        if !shared.overflowed {
            shared.overflow();
        }
    }

    /// Why the caller's body was refused (a message over the method's size limit).
    pub(crate) fn rejection(&self) -> Option<Status> {
        let shared = lock(&self.shared);
        let rejected = shared.rejected.as_ref()?;
        Some(Status::new(rejected.code(), rejected.message()))
    }

    /// Whether the caller's body has ended and is all recorded: a new attempt replays it
    /// without reading from the caller.
    pub(crate) fn is_complete(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended && !shared.overflowed
    }

    /// Whether a new attempt can still send the whole body.
    pub(crate) fn can_replay(&self) -> bool {
        !lock(&self.shared).overflowed
    }

    /// A body for one attempt, and a flag that tells whether it was ever read (a request
    /// whose body was never read never reached the server's handler).
    pub(crate) fn attempt_body(&self) -> (Body, Arc<AtomicBool>) {
        let polled = Arc::new(AtomicBool::new(false));
        let body = AttemptBody {
            shared: self.shared.clone(),
            position: 0,
            trailers_sent: false,
            polled: polled.clone(),
        };
        (Body::new(body), polled)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct AttemptBody {
    shared: Arc<Mutex<Shared>>,
    /// The next recorded frame this attempt sends.
    position: usize,
    trailers_sent: bool,
    polled: Arc<AtomicBool>,
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.polled.store(true, Ordering::Relaxed);
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if let Some(data) = shared.frames.get(this.position) {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let frame = match frame {
            None => {
                shared.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            Some(Err(status)) => {
                // The caller's body failed: nothing can be replayed.
                shared.ended = true;
                shared.overflowed = true;
                return Poll::Ready(Some(Err(status)));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if let Some(Err(status)) = shared.message_limit.as_mut().map(|l| l.check(data)) {
                // Too large to send: fail the call (not retryable: nothing to replay).
                shared.ended = true;
                shared.overflowed = true;
                shared.rejected = Some(Status::new(status.code(), status.message()));
                return Poll::Ready(Some(Err(status)));
            }
            shared.recorded += data.len();
            if !shared.overflowed
                && shared.recorded <= shared.limit
                && shared.take_budget(data.len())
            {
                shared.frames.push(data.clone());
                this.position += 1;
            } else if !shared.overflowed {
                shared.overflow();
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            shared.trailers = Some(trailers.clone());
            shared.ended = true;
            this.trailers_sent = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended
            && self.position >= shared.frames.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn every_attempt_sends_the_whole_body() {
        let replay = Replay::new(body(&[b"hello ", b"world"]), 1024, None);
        let (first, polled) = replay.attempt_body();
        assert!(!polled.load(Ordering::Relaxed));
        assert_eq!(collect(first).await, b"hello world");
        assert!(polled.load(Ordering::Relaxed));
        let (second, _) = replay.attempt_body();
        assert_eq!(collect(second).await, b"hello world");
        assert!(replay.can_replay());
    }

    #[tokio::test]
    async fn a_later_attempt_continues_where_the_record_ends() {
        let replay = Replay::new(body(&[b"a", b"b", b"c"]), 1024, None);
        let (mut first, _) = replay.attempt_body();
        // The first attempt reads one frame, then fails.
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        drop(first);
        let (second, _) = replay.attempt_body();
        assert_eq!(collect(second).await, b"abc");
    }

    #[tokio::test]
    async fn a_body_past_the_channel_budget_commits_and_gives_the_budget_back() {
        let held = Arc::new(AtomicUsize::new(0));
        // Another call already holds 6 of the channel's 12 bytes.
        held.fetch_add(6, Ordering::Relaxed);
        let small = Replay::new(body(&[b"1234"]), 1024, None).with_budget(held.clone(), 12);
        let (first, _) = small.attempt_body();
        assert_eq!(collect(first).await, b"1234");
        assert!(small.can_replay());
        assert_eq!(held.load(Ordering::Relaxed), 10);
        let big = Replay::new(body(&[b"12345"]), 1024, None).with_budget(held.clone(), 12);
        let (first, _) = big.attempt_body();
        // Sent whole, but not recorded: the call is committed, the budget untouched.
        assert_eq!(collect(first).await, b"12345");
        assert!(!big.can_replay());
        assert_eq!(held.load(Ordering::Relaxed), 10);
        // A call that ends gives its bytes back.
        drop(small);
        assert_eq!(held.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_committed_call_keeps_streaming_but_records_nothing() {
        let held = Arc::new(AtomicUsize::new(0));
        let replay = Replay::new(body(&[b"ab", b"cd"]), 1024, None).with_budget(held.clone(), 100);
        let (mut first, _) = replay.attempt_body();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert_eq!(held.load(Ordering::Relaxed), 2);
        replay.commit();
        assert_eq!(
            held.load(Ordering::Relaxed),
            0,
            "the record is given back at commit"
        );
        assert_eq!(collect(first).await, b"cd");
        assert_eq!(held.load(Ordering::Relaxed), 0);
        assert!(!replay.can_replay());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_commits() {
        let replay = Replay::new(body(&[b"12345", b"67890"]), 8, None);
        let (first, _) = replay.attempt_body();
        // The attempt itself still sends everything.
        assert_eq!(collect(first).await, b"1234567890");
        assert!(!replay.can_replay());
    }
}
