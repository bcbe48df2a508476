//! The one place seam serialises messages: bincode 1.3 with a hard size limit.

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
}

fn base() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

fn options(limit: u64) -> impl Options {
    base().with_limit(limit)
}

/// Encodes `msg`; fails if it would be larger than `limit` bytes.
pub fn encode<T: Serialize>(msg: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(msg, limit, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `msg` to `out` (reusing its capacity); fails past `limit` bytes.
/// The limit is checked on the result: bincode's own limit would serialize everything twice.
pub fn encode_into<T: Serialize>(msg: &T, limit: u64, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    base()
        .serialize_into(&mut *out, msg)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let written = (out.len() - start) as u64;
    if written > limit {
        out.truncate(start);
        return Err(CodecError::Encode(format!(
            "{written} bytes exceed the {limit}-byte limit"
        )));
    }
    Ok(())
}

/// Decodes exactly one message from `bytes`; no allocation may exceed the frame's own size.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_borrowed(bytes)
}

/// Like [`decode`], for a message that borrows its text from `bytes` instead of copying it.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    options(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| match *e {
            bincode::ErrorKind::Custom(ref s) if s.contains("trailing") => {
                CodecError::Trailing(bytes.len())
            }
            other => CodecError::Decode(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{LoaderRequest, SpanBatch};

    #[test]
    fn round_trips() {
        let m = LoaderRequest::AddTarget {
            pid: 42,
            propagation: None,
        };
        let b = encode(&m, 1024).expect("encodes");
        assert_eq!(decode::<LoaderRequest>(&b).expect("decodes"), m);
    }

    #[test]
    fn encoding_past_the_limit_fails_and_leaves_the_buffer_as_it_was() {
        let mut out = vec![9u8];
        let big = LoaderRequest::AddTarget {
            pid: u32::MAX,
            propagation: None,
        };
        assert!(encode_into(&big, 2, &mut out).is_err());
        assert_eq!(out, vec![9u8]);
        assert!(encode_into(&big, 64, &mut out).is_ok());
        assert!(out.len() > 1);
    }

    #[test]
    fn rejects_trailing_and_truncated() {
        let mut b = encode(&LoaderRequest::RemoveTarget { pid: 7 }, 1024).expect("encodes");
        b.push(0);
        assert!(decode::<LoaderRequest>(&b).is_err());
        b.truncate(1);
        assert!(decode::<LoaderRequest>(&b).is_err());
        assert!(decode::<LoaderRequest>(&[]).is_err());
    }

    #[test]
    fn huge_inner_lengths_do_not_allocate() {
        // A vector claiming u64::MAX elements inside a 12-byte frame must fail, not allocate.
        let mut b = vec![0u8]; // first variant
        b.push(0xff);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&[1, 2]);
        assert!(decode::<SpanBatch>(&b).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut buf = [0u8; 256];
        for round in 0..2000 {
            getrandom::fill(&mut buf).expect("random");
            let len = round % buf.len();
            let _ = decode::<LoaderRequest>(&buf[..len]);
            let _ = decode::<SpanBatch>(&buf[..len]);
            let _ = decode::<crate::msg::CorrelatorRequest>(&buf[..len]);
        }
    }
}
