//! gRPC message lengths, read from the 5-byte prefix of each message as bytes stream by:
//! how the channel enforces `maxRequestMessageBytes` and `maxResponseMessageBytes`.

use tonic::Status;

/// Finds gRPC message boundaries in a byte stream as it streams by: a 5-byte prefix
/// (compressed flag, big-endian length), then the message. Used to enforce message
/// size limits and to count message sizes for OpenTelemetry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Framing {
    /// Bytes of the current prefix seen so far (0..5).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    /// Feeds the next bytes; `message` gets the length of each message whose prefix
    /// ends in them, and an error from it stops the feeding.
    pub(crate) fn try_feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut message: impl FnMut(u64) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(bytes.len() as u64);
                self.remaining -= take;
                bytes = &bytes[take as usize..];
                continue;
            }
            let take = (5 - self.prefix_len).min(bytes.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take;
            bytes = &bytes[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                message(self.remaining)?;
            }
        }
        Ok(())
    }

    /// [`try_feed`](Self::try_feed) with a callback that cannot fail.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn feed(&mut self, bytes: &[u8], mut message: impl FnMut(u64)) {
        let _ = self.try_feed(bytes, |len| {
            message(len);
            Ok::<(), std::convert::Infallible>(())
        });
    }
}

/// Follows the gRPC framing of one direction of a call and rejects a message longer
/// than `limit` as soon as its prefix announces it.
#[derive(Debug, Clone)]
pub(crate) struct MessageLimit {
    limit: u64,
    what: &'static str,
    framing: Framing,
}

impl MessageLimit {
    /// `what` names the direction in the error: "request" or "response".
    pub(crate) fn new(limit: u64, what: &'static str) -> Self {
        Self {
            limit,
            what,
            framing: Framing::default(),
        }
    }

    /// Feeds the next bytes of the stream.
    pub(crate) fn check(&mut self, bytes: &[u8]) -> Result<(), Status> {
        let (limit, what) = (self.limit, self.what);
        self.framing.try_feed(bytes, |len| {
            if len > limit {
                return Err(Status::resource_exhausted(format!(
                    "{what} message of {len} bytes is larger than the method's limit of {limit} bytes"
                )));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, len as usize));
        bytes
    }

    #[test]
    fn accepts_messages_up_to_the_limit_and_rejects_longer_ones() {
        let mut limit = MessageLimit::new(10, "request");
        assert!(limit.check(&message(10)).is_ok());
        assert!(limit.check(&message(0)).is_ok());
        let err = limit.check(&message(11)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("request message of 11 bytes"),
            "{err:?}"
        );
    }

    proptest! {
        #[test]
        fn any_split_of_the_stream_gives_the_same_verdict(
            lens in proptest::collection::vec(0u32..40, 1..6),
            cuts in proptest::collection::vec(1usize..13, 1..40),
        ) {
            let stream: Vec<u8> = lens.iter().flat_map(|&l| message(l)).collect();
            let whole = MessageLimit::new(20, "response").check(&stream).is_ok();
            let mut split = MessageLimit::new(20, "response");
            let (mut rest, mut ok) = (&stream[..], true);
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                ok &= split.check(&rest[..n]).is_ok();
                if !ok {
                    break;
                }
                rest = &rest[n..];
            }
            prop_assert_eq!(ok, whole);
            prop_assert_eq!(whole, lens.iter().all(|&l| l <= 20));
        }
    }
}
