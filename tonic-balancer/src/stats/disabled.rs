//! Stand-ins for the OpenTelemetry hooks when the `opentelemetry` feature is off: types
//! with no values, so every `Option` of them is `None` and the hooks compile away.

use std::time::Duration;
use tonic::Code;

/// No channel telemetry.
#[derive(Debug)]
pub(crate) enum Telemetry {}

/// No call trace.
#[derive(Debug)]
pub(crate) enum CallTrace {}

/// No attempt trace.
#[derive(Debug)]
pub(crate) enum AttemptTrace {}

impl Telemetry {
    pub(crate) fn connected(&self, _: bool) {
        match *self {}
    }

    pub(crate) fn disconnected(&self) {
        match *self {}
    }

    pub(crate) fn ejected(&self) {
        match *self {}
    }

    pub(crate) fn panic_mode(&self, _: bool) {
        match *self {}
    }

    pub(crate) fn queued(&self, _: Duration, _: bool) {
        match *self {}
    }
}

impl CallTrace {
    pub(crate) fn attempt(&self, _: super::AttemptKind, _: u32, _: &str) -> AttemptTrace {
        match *self {}
    }

    pub(crate) fn backoff(&self, _: Duration) {
        match *self {}
    }
}

impl AttemptTrace {
    pub(crate) fn sent(
        &mut self,
        _: &crate::resolver::Peer,
        _: &mut http::HeaderMap,
        _: Option<&[u8]>,
    ) {
        match *self {}
    }

    pub(crate) fn count_sent(&mut self, _: tonic::body::Body) -> tonic::body::Body {
        match *self {}
    }

    pub(crate) fn received(&mut self, _: &[u8]) {
        match *self {}
    }

    pub(crate) fn finish(&mut self, _: Code) {
        match *self {}
    }
}
