//! Turning transport failures into the `tonic::Status` a caller should see.
//!
//! A broken or refused connection is UNAVAILABLE (the backend could not be reached:
//! retry elsewhere), and an HTTP/2 reset code
//! maps as grpc/grpc's PROTOCOL-HTTP2.md says.

use crate::error::chain;
use crate::resolver::Peer;
use std::error::Error as StdError;
use tonic::{Code, Status};

/// Every error in a chain, outermost first.
///
/// `io::Error::source()` skips the error an `io::Error` wraps and returns *that* error's
/// source, so a marker wrapped in an `io::Error` (as connectors must return) would never
/// be seen; this walk steps into the wrapped error instead.
fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e: &&'a (dyn StdError + 'static)| match e
        .downcast_ref::<std::io::Error>()
    {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

/// An h2 error that refused the stream for a GOAWAY: the stream's id was above the
/// last one the server said it would process, so it was not processed.
fn refused_by_goaway(e: &(dyn StdError + 'static)) -> bool {
    e.downcast_ref::<h2::Error>()
        .is_some_and(|h2| h2.is_go_away() && h2.is_remote())
}

/// The status for an error returned while sending a call to `addr`.
pub(crate) fn from_send_error(err: &(dyn StdError + 'static), addr: &Peer) -> Status {
    for e in causes(err) {
        if let Some(status) = e.downcast_ref::<Status>() {
            return Status::new(status.code(), status.message());
        }
        if refused_by_goaway(e) {
            return Status::unavailable(format!("{addr} is going away: {}", chain(err)));
        }
        if let Some(code) = e
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::reason)
            .and_then(code_from_h2)
        {
            return Status::new(code, format!("{addr}: {}", chain(err)));
        }
    }
    // Anything else failed at the transport: the backend could not be reached.
    Status::unavailable(format!("error sending to {addr}: {}", chain(err)))
}

/// PROTOCOL-HTTP2.md's table. `None` for reasons that say nothing specific (the
/// connection-level cause decides).
fn code_from_h2(reason: h2::Reason) -> Option<Code> {
    Some(match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        h2::Reason::NO_ERROR
        | h2::Reason::PROTOCOL_ERROR
        | h2::Reason::INTERNAL_ERROR
        | h2::Reason::FLOW_CONTROL_ERROR
        | h2::Reason::SETTINGS_TIMEOUT
        | h2::Reason::FRAME_SIZE_ERROR
        | h2::Reason::COMPRESSION_ERROR
        | h2::Reason::CONNECT_ERROR => Code::Internal,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Peer {
        Peer::from("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap())
    }

    #[test]
    fn h2_reasons_follow_the_protocol_table() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(from_send_error(&refused, &addr()).code(), Code::Unavailable);
        let calm = h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM);
        assert_eq!(
            from_send_error(&calm, &addr()).code(),
            Code::ResourceExhausted
        );
        let proto = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(from_send_error(&proto, &addr()).code(), Code::Internal);
    }

    #[test]
    fn unknown_transport_errors_are_unavailable_and_statuses_pass_through() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = from_send_error(&io, &addr());
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("reset"));
        assert!(status.message().contains("127.0.0.1:9"), "{status:?}");
        // A Unix socket is named by its path.
        let unix = Peer::from(&crate::resolver::Address::unix("/run/orders.sock"));
        let status = from_send_error(&io, &unix);
        assert!(
            status.message().contains("unix:/run/orders.sock"),
            "{status:?}"
        );
        let inner = Status::permission_denied("no");
        assert_eq!(
            from_send_error(&inner, &addr()).code(),
            Code::PermissionDenied
        );
    }
}
