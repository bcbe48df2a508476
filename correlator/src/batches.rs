//! Finished spans grouped by process into exporter frames, encoded on the thread that built them.
//!
//! Encoding where the spans were built frees them there too (handed to the shipping task, every
//! span's strings were freed on another thread), and a batch borrows its spans instead of having
//! each moved into a list of its own.

use seam_proto::frame::{encode_frame, FrameError};
use seam_proto::msg::{ExporterRequestRef, ServiceIdentity, SpanRecord};

/// Spans per batch to the exporter: under ~100 KB, so neither side's allocator maps fresh pages
/// for each one.
pub const SPANS_PER_BATCH: usize = 512;

/// Room reserved per span in a new frame: an nginx span takes ~125 bytes, so most frames are
/// encoded without growing.
const FRAME_BYTES_PER_SPAN: usize = 192;

/// One batch's frame, ready to write to the exporter.
#[derive(Debug)]
pub struct Shipment {
    pub spans: u64,
    pub frame: Vec<u8>,
}

/// Frames `ready`'s spans, at most [`SPANS_PER_BATCH`] a batch, one process's spans per batch in
/// the order they finished, and empties it. `service_of` names a process; `ship` takes each
/// batch's span count and frame, or the reason it could not be framed.
pub fn frame_batches(
    ready: &mut Vec<(u32, SpanRecord)>,
    mut service_of: impl FnMut(u32) -> ServiceIdentity,
    mut ship: impl FnMut(Result<Shipment, (u64, FrameError)>),
) {
    let mut order: Vec<(u32, usize)> = ready
        .iter()
        .enumerate()
        .map(|(i, (pid, _))| (*pid, i))
        .collect();
    order.sort_unstable();
    let mut spans: Vec<&SpanRecord> = Vec::with_capacity(SPANS_PER_BATCH.min(order.len()));
    for process in order.chunk_by(|a, b| a.0 == b.0) {
        let service = service_of(process[0].0);
        for batch in process.chunks(SPANS_PER_BATCH) {
            spans.clear();
            spans.extend(batch.iter().map(|&(_, i)| &ready[i].1));
            let n = spans.len() as u64;
            let request = ExporterRequestRef::Spans {
                service: &service,
                spans: &spans,
            };
            let mut frame = Vec::with_capacity(FRAME_BYTES_PER_SPAN * spans.len());
            ship(match encode_frame(&request, &mut frame) {
                Ok(()) => Ok(Shipment { spans: n, frame }),
                Err(e) => Err((n, e)),
            });
        }
    }
    ready.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_proto::codec;
    use seam_proto::msg::{ExporterRequest, SpanKind, SpanStatus};

    fn span(n: u64) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: n.to_le_bytes(),
            parent_span_id: None,
            trace_flags: 1,
            tracestate: String::new(),
            parent_is_remote: false,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nanos: n,
            end_unix_nanos: n + 1,
            status: SpanStatus::Unset,
            attributes: Vec::new(),
        }
    }

    fn service(pid: u32) -> ServiceIdentity {
        ServiceIdentity {
            service_name: format!("svc-{pid}"),
            pid,
            ..ServiceIdentity::default()
        }
    }

    #[test]
    fn each_process_gets_its_own_batches_in_finishing_order() {
        // pid 7's spans interleaved with pid 3's; pid 7 has more than a batch holds
        let mut ready: Vec<(u32, SpanRecord)> = (0..1100u64)
            .map(|n| (if n % 3 == 0 { 3 } else { 7 }, span(n)))
            .collect();
        let mut batches = Vec::new();
        frame_batches(&mut ready, service, |r| {
            let s = r.expect("frames");
            let ExporterRequest::Spans(b) = codec::decode(&s.frame[4..]).expect("decodes");
            assert_eq!(s.spans as usize, b.spans.len());
            assert_eq!(
                u32::from_le_bytes(s.frame[..4].try_into().expect("4 bytes")) as usize,
                s.frame.len() - 4
            );
            batches.push(b);
        });
        assert!(ready.is_empty());
        let shape: Vec<(u32, usize)> = batches
            .iter()
            .map(|b| (b.service.pid, b.spans.len()))
            .collect();
        assert_eq!(shape, vec![(3, 367), (7, 512), (7, 221)]);
        for b in &batches {
            assert_eq!(b.service, service(b.service.pid));
            let starts: Vec<u64> = b.spans.iter().map(|s| s.start_unix_nanos).collect();
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "in finishing order");
            assert!(starts.iter().all(|n| (n % 3 == 0) == (b.service.pid == 3)));
        }
        let total: usize = batches.iter().map(|b| b.spans.len()).sum();
        assert_eq!(total, 1100);
    }

    #[test]
    fn nothing_ready_frames_nothing() {
        frame_batches(&mut Vec::new(), service, |_| panic!("no batch expected"));
    }
}
