//! A peer's byte stream through the frame reader of every socket's request type: never a panic, and
//! whatever decodes re-encodes to bytes that decode to the same message. The exporter's frames,
//! read in place, must accept exactly what decodes and read it as the decoded message.
#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use seam_proto::codec;
use seam_proto::frame::{encode_frame, read_frame_with};
use seam_proto::msg::{
    CorrelatorRequest, CtxpropRequest, ExporterFrame, ExporterRequest, Hello, HelloReply,
    LoaderRequest,
};
use serde::{de::DeserializeOwned, Serialize};

fn read_stream<T: DeserializeOwned + Serialize + PartialEq + Debug>(mut stream: &[u8]) {
    let mut body = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let read = pin!(read_frame_with::<_, T>(&mut stream, &mut body));
        let msg = match read.poll(&mut cx) {
            Poll::Ready(Ok(msg)) => msg,
            Poll::Ready(Err(_)) => return,
            Poll::Pending => unreachable!("a byte slice never waits"),
        };
        let mut frame = Vec::new();
        encode_frame(&msg, &mut frame).expect("a decoded message re-encodes");
        let again: T = codec::decode(&frame[4..]).expect("a re-encoded message decodes");
        let mut frame_again = Vec::new();
        encode_frame(&again, &mut frame_again).expect("re-encodes");
        assert_eq!(frame, frame_again);
    }
}

/// The exporter's in-place reading against the owned decoding of the same frame bodies.
fn exporter_frames(mut stream: &[u8]) {
    while stream.len() >= 4 {
        let (len, rest) = stream.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let body = &rest[..len.min(rest.len())];
        stream = &rest[body.len()..];
        let owned = codec::decode::<ExporterRequest>(body);
        match ExporterFrame::check(body) {
            Ok(frame) => {
                let Ok(ExporterRequest::Spans(batch)) = owned else {
                    panic!("a frame that does not decode was accepted: {owned:?}");
                };
                let view = frame.view().expect("a checked frame reads");
                assert_eq!(frame.spans(), batch.spans.len());
                assert_eq!(view.to_owned_batch(), batch);
            }
            Err(_) => assert!(owned.is_err(), "a frame that decodes was refused"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, stream)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => read_stream::<Hello>(stream),
        1 => read_stream::<HelloReply>(stream),
        2 => read_stream::<LoaderRequest>(stream),
        3 => read_stream::<CtxpropRequest>(stream),
        4 => read_stream::<CorrelatorRequest>(stream),
        _ => {
            read_stream::<ExporterRequest>(stream);
            exporter_frames(stream);
        }
    }
});
