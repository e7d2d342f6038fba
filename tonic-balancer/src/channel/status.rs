//! Turning transport failures into the `tonic::Status` a caller should see.
//!
//! tonic reports many connection failures as UNKNOWN or CANCELLED; for a client-side load
//! balancer they are UNAVAILABLE (the backend could not be reached: retry elsewhere), and
//! a client-side timeout is DEADLINE_EXCEEDED. This mapping follows grpc/grpc's
//! PROTOCOL-HTTP2.md for HTTP/2 error codes.

use crate::error::chain;
use crate::subchannel::ConnectionClosed;
use std::error::Error as StdError;
use std::net::SocketAddr;
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
pub(crate) fn from_send_error(err: &(dyn StdError + 'static), addr: SocketAddr) -> Status {
    for e in causes(err) {
        if let Some(status) = e.downcast_ref::<Status>() {
            return Status::new(status.code(), status.message());
        }
        if e.is::<ConnectionClosed>() {
            return Status::unavailable(format!("connection to {addr} is closed"));
        }
        if e.is::<tonic::TimeoutExpired>() {
            return Status::deadline_exceeded(format!("deadline exceeded waiting for {addr}"));
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

/// Whether a send error shows the server never processed the request: the connection
/// no longer took requests when the call reached it, or the server refused the stream
/// (REFUSED_STREAM, or a GOAWAY below the stream's id: HTTP/2 defines both as "not
/// processed").
pub(crate) fn never_processed(err: &(dyn StdError + 'static)) -> bool {
    causes(err).any(|e| {
        e.is::<ConnectionClosed>()
            || refused_by_goaway(e)
            || e.downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// Maps an error status from a response body: tonic reports a broken connection under
/// a stream as UNKNOWN; the caller should see UNAVAILABLE.
pub(crate) fn from_body_error(status: Status, addr: SocketAddr) -> Status {
    match status.code() {
        Code::Unknown | Code::Cancelled | Code::Internal => {
            let Some(source) = std::error::Error::source(&status) else {
                return status;
            };
            if is_transport_error(source) {
                from_send_error(source, addr)
            } else {
                status
            }
        }
        _ => status,
    }
}

fn is_transport_error(err: &(dyn StdError + 'static)) -> bool {
    causes(err).any(|e| e.is::<hyper::Error>() || e.is::<h2::Error>() || e.is::<std::io::Error>())
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

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn closed_connection_is_unavailable_and_never_processed() {
        // As a connector returns it: the marker inside an io::Error, inside tonic's error.
        let err = std::io::Error::new(std::io::ErrorKind::NotConnected, ConnectionClosed(addr()));
        let status = from_send_error(&err, addr());
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "connection to 127.0.0.1:9 is closed");
        assert!(never_processed(&err));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!never_processed(&other));
    }

    #[test]
    fn client_timeout_is_deadline_exceeded() {
        let status = from_send_error(&tonic::TimeoutExpired(()), addr());
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn h2_reasons_follow_the_protocol_table() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(from_send_error(&refused, addr()).code(), Code::Unavailable);
        let calm = h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM);
        assert_eq!(
            from_send_error(&calm, addr()).code(),
            Code::ResourceExhausted
        );
        let proto = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(from_send_error(&proto, addr()).code(), Code::Internal);
    }

    #[test]
    fn unknown_transport_errors_are_unavailable_and_statuses_pass_through() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = from_send_error(&io, addr());
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("reset"));
        let inner = Status::permission_denied("no");
        assert_eq!(
            from_send_error(&inner, addr()).code(),
            Code::PermissionDenied
        );
    }

    #[test]
    fn body_errors_from_the_transport_become_unavailable() {
        // tonic wraps a broken connection under a body as UNKNOWN with the io error as source.
        let from_io = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert_eq!(from_io.code(), Code::Unknown);
        assert_eq!(from_body_error(from_io, addr()).code(), Code::Unavailable);
        // Statuses the server sent are left alone.
        let app = Status::internal("app said so");
        assert_eq!(from_body_error(app, addr()).code(), Code::Internal);
        let unknown = Status::unknown("no source");
        assert_eq!(from_body_error(unknown, addr()).code(), Code::Unknown);
    }
}
