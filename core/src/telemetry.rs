//! Traces across processes, exported with OpenTelemetry (OTLP) when a process was given an
//! endpoint (`--otlp-endpoint`); without one these do nothing. A job's planning span on the
//! scheduler is its trace's root: its W3C `traceparent` travels with every task launch, so the
//! executors' task spans join the same trace, and the scheduler adds a span per stage when the
//! job ends (from the driver's launch and report times).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as a W3C `traceparent` (`00-TRACE-SPAN-FLAGS`); empty when no
/// trace is being exported.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return String::new();
    }
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The remote parent a `traceparent` names; `None` for an empty or malformed one.
pub fn parse_traceparent(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace), Some(span), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
}

/// Makes `span` a child of the span `traceparent` names (a task's, of its job's planning).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = parse_traceparent(traceparent) {
        let _ = span.set_parent(cx);
    }
}

/// One stage of a finished job, for its span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpan {
    pub stage: u32,
    pub tasks: u32,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
}

/// Exports a span per stage, children of the job's span, timed as the stages ran.
pub fn export_stage_spans(job_id: &str, traceparent: &str, stages: &[StageSpan]) {
    let Some(parent) = parse_traceparent(traceparent) else {
        return;
    };
    let tracer = opentelemetry::global::tracer("ember");
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    for s in stages {
        let span = tracer
            .span_builder("stage")
            .with_start_time(at(s.start_unix_ms))
            .with_attributes([
                KeyValue::new("job_id", job_id.to_string()),
                KeyValue::new("stage", i64::from(s.stage)),
                KeyValue::new("tasks", i64::from(s.tasks)),
            ])
            .start_with_context(&tracer, &parent);
        opentelemetry::trace::Span::end_with_timestamp(
            &mut { span },
            at(s.end_unix_ms).max(SystemTime::UNIX_EPOCH),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_refuse_what_is_not_one() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parse_traceparent(good).expect("a traceparent");
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-zz-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // Without an exporter installed there is no trace to join.
        assert_eq!(current_traceparent(), "");
    }
}
