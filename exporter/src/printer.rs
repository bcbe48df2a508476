//! The trace printer: gathers spans by trace for a moment, then prints each trace as a tree.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use seam_proto::msg::{AttrValue, SpanBatchView, SpanKind, SpanRecord, SpanStatus};
use serde_json::json;

use crate::config::PrinterMode;

#[derive(Debug, Clone)]
struct Printed {
    service: String,
    span: SpanRecord,
}

#[derive(Debug)]
struct Pending {
    spans: Vec<Printed>,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct TracePrinter {
    mode: PrinterMode,
    hold: Duration,
    traces: HashMap<[u8; 16], Pending>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr_str(s: &SpanRecord, k: &str) -> String {
    match s.attr(k) {
        Some(AttrValue::Str(v)) => v.clone(),
        Some(AttrValue::Ip(v)) => v.to_string(),
        Some(AttrValue::Known(v)) => v.as_str().to_string(),
        Some(AttrValue::Int(v)) => v.to_string(),
        Some(AttrValue::Bool(v)) => v.to_string(),
        None => String::new(),
    }
}

impl TracePrinter {
    pub fn new(mode: PrinterMode, hold: Duration) -> Self {
        Self {
            mode,
            hold,
            traces: HashMap::new(),
        }
    }

    /// Whether [`TracePrinter::add`] keeps anything: a disabled printer needs no spans read.
    pub fn wants_spans(&self) -> bool {
        self.mode != PrinterMode::Disabled
    }

    pub fn add(&mut self, batch: &SpanBatchView<'_>) {
        if !self.wants_spans() {
            return;
        }
        for s in batch.spans.iter().filter(|s| s.sampled()) {
            let p = self.traces.entry(s.trace_id).or_insert_with(|| Pending {
                spans: Vec::new(),
                last_seen: Instant::now(),
            });
            p.last_seen = Instant::now();
            p.spans.push(Printed {
                service: batch.service.service_name.clone(),
                span: s.to_owned_record(),
            });
        }
    }

    /// Prints traces that have been quiet for the hold time (all of them when `all`).
    pub fn flush(&mut self, out: &mut dyn Write, all: bool) {
        let hold = self.hold;
        let ready: Vec<[u8; 16]> = self
            .traces
            .iter()
            .filter(|(_, p)| all || p.last_seen.elapsed() >= hold)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(p) = self.traces.remove(&id) {
                let _ = match self.mode {
                    PrinterMode::Text => write_text(out, &id, p.spans),
                    PrinterMode::Json => write_json(out, &id, p.spans),
                    PrinterMode::Disabled => Ok(()),
                };
            }
        }
        let _ = out.flush();
    }
}

/// Orders spans as a tree: (depth, span) in depth-first order, children by start time.
fn tree(mut spans: Vec<Printed>) -> Vec<(usize, Printed)> {
    spans.sort_by_key(|p| p.span.start_unix_nanos);
    let ids: Vec<[u8; 8]> = spans.iter().map(|p| p.span.span_id).collect();
    let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, p) in spans.iter().enumerate() {
        match p.span.parent_span_id.filter(|pid| ids.contains(pid)) {
            Some(pid) => children.entry(pid).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut order = Vec::new();
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (0, i)).collect();
    while let Some((depth, i)) = stack.pop() {
        order.push((depth, i));
        if let Some(c) = children.get(&spans[i].span.span_id) {
            stack.extend(c.iter().rev().map(|&j| (depth + 1, j)));
        }
    }
    order
        .into_iter()
        .map(|(d, i)| (d, spans[i].clone()))
        .collect()
}

fn write_text(out: &mut dyn Write, id: &[u8; 16], spans: Vec<Printed>) -> std::io::Result<()> {
    let n = spans.len();
    writeln!(
        out,
        "trace {} ({n} span{})",
        hex(id),
        if n == 1 { "" } else { "s" }
    )?;
    for (depth, p) in tree(spans) {
        let s = &p.span;
        let ms = s.end_unix_nanos.saturating_sub(s.start_unix_nanos) as f64 / 1e6;
        let kind = match s.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        };
        let target = match s.kind {
            SpanKind::Server => attr_str(s, "url.path"),
            SpanKind::Client => attr_str(s, "url.full"),
        };
        let err = if s.status == SpanStatus::Error {
            " ERROR"
        } else {
            ""
        };
        writeln!(
            out,
            "{}└─ {kind} {} {} {target} {} {ms:.2}ms{err}  span={}",
            "   ".repeat(depth),
            p.service,
            s.name,
            attr_str(s, "http.response.status_code"),
            hex(&s.span_id),
        )?;
    }
    Ok(())
}

fn write_json(out: &mut dyn Write, id: &[u8; 16], spans: Vec<Printed>) -> std::io::Result<()> {
    let list: Vec<serde_json::Value> = tree(spans)
        .into_iter()
        .map(|(depth, p)| {
            let s = &p.span;
            let attrs: serde_json::Map<String, serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        AttrValue::Str(x) => json!(x),
                        AttrValue::Ip(x) => json!(x.to_string()),
                        AttrValue::Known(x) => json!(x.as_str()),
                        AttrValue::Int(x) => json!(x),
                        AttrValue::Bool(x) => json!(x),
                    };
                    (k.as_str().to_string(), v)
                })
                .collect();
            json!({
                "depth": depth,
                "service": p.service,
                "name": s.name,
                "kind": format!("{:?}", s.kind),
                "span_id": hex(&s.span_id),
                "parent_span_id": s.parent_span_id.map(|p| hex(&p)),
                "start_unix_nanos": s.start_unix_nanos,
                "end_unix_nanos": s.end_unix_nanos,
                "status": format!("{:?}", s.status),
                "attributes": attrs,
            })
        })
        .collect();
    writeln!(out, "{}", json!({ "trace_id": hex(id), "spans": list }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_proto::msg::{AttrKey, ExporterFrame, ServiceIdentity, SpanBatch};

    fn add(p: &mut TracePrinter, batch: &SpanBatch) {
        let frame = ExporterFrame::of(batch).expect("a batch frames");
        p.add(&frame.view().expect("a checked frame reads"));
    }

    fn span(id: u8, parent: Option<u8>, start: u64) -> SpanRecord {
        SpanRecord {
            trace_id: [9; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            trace_flags: 1,
            tracestate: String::new(),
            parent_is_remote: false,
            name: "GET".into(),
            kind: if parent.is_some() {
                SpanKind::Client
            } else {
                SpanKind::Server
            },
            start_unix_nanos: start,
            end_unix_nanos: start + 2_000_000,
            status: SpanStatus::Unset,
            attributes: vec![(AttrKey::UrlPath, AttrValue::Str("/x".into()))],
        }
    }

    #[test]
    fn prints_a_tree_with_children_indented() {
        let mut p = TracePrinter::new(PrinterMode::Text, Duration::ZERO);
        let batch = SpanBatch {
            service: ServiceIdentity {
                service_name: "front".into(),
                ..ServiceIdentity::default()
            },
            spans: vec![
                span(2, Some(1), 20),
                span(1, None, 10),
                span(3, Some(2), 30),
            ],
        };
        add(&mut p, &batch);
        let mut out = Vec::new();
        p.flush(&mut out, false);
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("trace {} (3 spans)", "09".repeat(16)));
        assert!(lines[1].starts_with("└─ SERVER front GET /x"), "{text}");
        assert!(lines[2].starts_with("   └─ CLIENT"), "{text}");
        assert!(lines[3].starts_with("      └─ CLIENT"), "{text}");
    }

    #[test]
    fn json_lines_parse_and_unsampled_spans_are_not_printed() {
        let mut p = TracePrinter::new(PrinterMode::Json, Duration::ZERO);
        let mut quiet = span(5, None, 1);
        quiet.trace_id = [7; 16];
        quiet.trace_flags = 0;
        let batch = SpanBatch {
            service: ServiceIdentity::default(),
            spans: vec![span(1, None, 10), quiet],
        };
        add(&mut p, &batch);
        let mut out = Vec::new();
        p.flush(&mut out, true);
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["spans"][0]["attributes"]["url.path"], "/x");
    }
}
