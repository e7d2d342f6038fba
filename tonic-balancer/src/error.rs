//! The crate's error type for everything that is not a call (building a channel, parsing).
//!
//! What a *call* returns is always a [`tonic::Status`]; this type is for set-up mistakes.

use std::fmt;

/// A boxed cause, as `source()` returns it.
type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error building a [`BalancedChannel`](crate::BalancedChannel) or parsing its inputs.
///
/// Its message names what was wrong; [`source()`](std::error::Error::source) gives the
/// typed cause where there is one (an [`InvalidSetting`], a
/// [`config::InvalidConfig`](crate::config::InvalidConfig), a TLS library error).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Cause>,
}

/// A builder setting out of range: which one, and why. The typed cause of an
/// [`ErrorKind::InvalidConfig`] error from `build()`.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
#[non_exhaustive]
pub struct InvalidSetting {
    /// The setting, as a path from the builder: `policy.choice_count`,
    /// `outlier_detection.interval`, `tls.ca_certificate #1`.
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
    #[source]
    source: Option<Cause>,
}

impl InvalidSetting {
    pub(crate) fn new(setting: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.to_string(),
            source: None,
        }
    }

    /// The same, caused by `source` (whose text is already in `reason`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn caused_by(
        setting: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            setting: setting.into(),
            reason: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// The same setting, seen from one level up: `prefix.setting`.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.setting = format!("{prefix}{}", self.setting);
        self
    }
}

impl From<InvalidSetting> for Error {
    fn from(invalid: InvalidSetting) -> Self {
        Error::caused_by(ErrorKind::InvalidConfig, invalid.to_string(), invalid)
    }
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
    /// No backend became READY in the time given to
    /// [`BalancedChannel::ready`](crate::BalancedChannel::ready) or
    /// [`Builder::connect`](crate::Builder::connect), or the channel shut down first.
    NotReady,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
            source: None,
        }
    }

    /// An error whose message says what `source` says, with `source` kept as its cause.
    pub(crate) fn caused_by(
        kind: ErrorKind,
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Formats an error with its whole `source()` chain: `outer: middle: root cause`.
///
/// What a caught panic says: its `&str` or `String` payload, as `panic!` makes them.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs a background task's future, turning a panic inside it into `Err` with the
/// panic's message, so the task's owner can tell calls why it stopped.
///
/// Not an `async fn`: one would keep `future` as its argument and again inside the
/// unwind guard, holding the task's largest state twice for the task's whole life.
pub(crate) fn catch_panic<F: std::future::Future>(
    future: F,
) -> impl std::future::Future<Output = Result<F::Output, String>> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .map(|result| result.map_err(|panic| format!("panicked: {}", panic_message(&*panic))))
}

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
    #[test]
    fn catch_panic_holds_its_future_once() {
        let large = async {
            let state = [7u8; 4096];
            std::future::ready(()).await;
            std::hint::black_box(state);
        };
        let alone = size_of_val(&large);
        assert!(alone >= 4096);
        assert!(size_of_val(&catch_panic(large)) < alone + 64);
    }

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn set_up_errors_keep_their_cause() {
        use std::error::Error as _;
        let err = Error::from(InvalidSetting::new(
            "policy.choice_count",
            "must be at least 2",
        ));
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert_eq!(err.to_string(), "policy.choice_count: must be at least 2");
        let cause = err.source().expect("a cause");
        let setting = cause.downcast_ref::<InvalidSetting>().expect("typed");
        assert_eq!(setting.setting, "policy.choice_count");
    }

    #[test]
    fn chain_prints_every_cause_once() {
        let err = Outer(std::io::Error::other("refused"));
        assert_eq!(chain(&err), "outer: refused");
        let io = std::io::Error::other("refused");
        assert_eq!(chain(&io), "refused");
    }
}
