//! Trace context: how a message keeps one trace id from SMTP to IMAP FETCH.
//!
//! Spans are ordinary `tracing` spans. When the binary exports traces (`[tracing]
//! otlp_endpoint`), a `tracing-opentelemetry` layer turns them into OpenTelemetry spans and
//! these helpers read and set their W3C trace context; when it does not, they fall back so
//! that logs still correlate: [`traceparent_or_new`] mints a random id, which is kept with
//! the message and printed in every log line about it.
//!
//! A message's trace context is stored with it (`NewMessage::trace`, the outbound queue
//! entry's `trace`), as a W3C `traceparent` string, so work done later by another process
//! (the delivery attempt, an IMAP FETCH on another pod) joins the same trace.
//!
//! Why the `traceparent` parsing is written here rather than taken from
//! `opentelemetry_sdk`'s propagator: the value is ours (written by this module into our own
//! store), the format is four fixed-width hex fields, and the protocol crates would
//! otherwise depend on the SDK for it. HTTP requests use the same parser (a malformed
//! header is ignored, as the W3C recommendation says).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Called once by the binary when it installs the OpenTelemetry layer.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint is configured). Work done only for the
/// trace (reading stored trace contexts at FETCH) is skipped when not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The OpenTelemetry context of `span`, when it has a valid one (spans are exported and
/// `span` is enabled).
fn span_context(span: &Span) -> Option<SpanContext> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

fn format(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The W3C `traceparent` of `span`, or `None` when spans are not exported.
pub fn traceparent(span: &Span) -> Option<String> {
    span_context(span).map(|sc| format(&sc))
}

/// The `traceparent` to keep with a message received under `span`: the span's own, or,
/// when spans are not exported, a freshly minted one (random ids, not sampled) so that the
/// message's log lines still share a trace id.
pub fn traceparent_or_new(span: &Span) -> String {
    traceparent(span).unwrap_or_else(|| {
        let trace: u128 = rand::random::<u128>() | 1;
        let span: u64 = rand::random::<u64>() | 1;
        format!("00-{trace:032x}-{span:016x}-00")
    })
}

/// The trace id of `span`, for log lines: `None` when spans are not exported.
pub fn trace_id(span: &Span) -> Option<String> {
    span_context(span).map(|sc| sc.trace_id().to_string())
}

/// The trace id of the current span, for log lines (`""` when spans are not exported).
pub fn current_trace_id() -> String {
    if !exporting() {
        return String::new();
    }
    trace_id(&Span::current()).unwrap_or_default()
}

/// The trace id part of a `traceparent` (`""` if it is malformed).
pub fn trace_id_of(traceparent: &str) -> &str {
    match parse(traceparent) {
        Some(_) => &traceparent[3..35],
        None => "",
    }
}

/// Parses a W3C `traceparent` (version 00 and, per the recommendation, later versions'
/// first four fields). All-zero ids are invalid.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let t = traceparent.trim();
    let b = t.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = u8::from_str_radix(&t[0..2], 16).ok()?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (trace, span, flags) = (&t[3..35], &t[36..52], &t[53..55]);
    if !hex(trace) || !hex(span) || !hex(flags) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1);
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// Whether a `traceparent` says its trace is sampled (recorded and exported).
pub fn is_sampled(traceparent: &str) -> bool {
    parse(traceparent).is_some_and(|sc| sc.is_sampled())
}

/// Makes `span` (not yet entered) a child of the remote context in `traceparent`. Does
/// nothing when spans are not exported or the value is malformed.
pub fn set_parent(span: &Span, traceparent: &str) {
    if !exporting() || span.is_disabled() {
        return;
    }
    if let Some(sc) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Links `span` to the span `traceparent` names (work related to it in another trace,
/// such as the IMAP command that fetched a message).
pub fn link(span: &Span, traceparent: &str) {
    if !exporting() || span.is_disabled() {
        return;
    }
    if let Some(sc) = parse(traceparent) {
        span.add_link(sc);
    }
}

/// Links `span` to `other` (both local spans).
pub fn link_span(span: &Span, other: &Span) {
    if let Some(sc) = span_context(other) {
        if !span.is_disabled() {
            span.add_link(sc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_w3c_examples() {
        let sc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert!(is_sampled(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_sampled(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A later version may append fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
            assert_eq!(trace_id_of(bad), "");
        }
    }

    #[test]
    fn minted_ids_parse_and_differ() {
        let a = traceparent_or_new(&Span::none());
        let b = traceparent_or_new(&Span::none());
        assert!(parse(&a).is_some(), "{a}");
        assert_ne!(trace_id_of(&a), trace_id_of(&b));
    }
}
