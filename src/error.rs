//! The crate's error type for everything that is not a call (building a channel, parsing).
//!
//! What a *call* returns is always a [`tonic::Status`]; this type is for set-up mistakes.

use std::fmt;

/// An error building a [`BalancedChannel`](crate::BalancedChannel) or parsing its inputs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What went wrong, for code that wants to branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The target string is not valid gRPC target syntax.
    InvalidTarget,
    /// The target is valid but names a scheme this build cannot resolve.
    UnsupportedTarget,
    /// A builder setting is out of range.
    InvalidConfig,
    /// `build()` was called outside a tokio runtime.
    NoRuntime,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Formats an error with its whole `source()` chain: `outer: middle: root cause`.
///
/// Transport errors say little at the top ("transport error"); the cause a user needs
/// ("Connection refused") sits at the bottom of the chain.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's text; print each piece once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_prints_every_cause_once() {
        let err = Outer(std::io::Error::other("refused"));
        assert_eq!(chain(&err), "outer: refused");
        let io = std::io::Error::other("refused");
        assert_eq!(chain(&io), "refused");
    }
}
