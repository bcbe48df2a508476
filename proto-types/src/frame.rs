//! Length-prefixed frames: a little-endian u32 length, checked against a cap before any allocation.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, CodecError};

/// Largest frame any seam daemon accepts (a span batch is the biggest message).
pub const MAX_FRAME: u32 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the connection")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte cap")]
    TooLarge(u32),
    #[error("empty frame")]
    Empty,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(codec::decode(&body)?)
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = codec::encode(msg, u64::from(MAX_FRAME))?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::LoaderRequest;

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &LoaderRequest::AddTarget { pid: 1 })
            .await
            .expect("write");
        write_frame(&mut a, &LoaderRequest::RemoveTarget { pid: 2 })
            .await
            .expect("write");
        let x: LoaderRequest = read_frame(&mut b).await.expect("read");
        let y: LoaderRequest = read_frame(&mut b).await.expect("read");
        assert_eq!(x, LoaderRequest::AddTarget { pid: 1 });
        assert_eq!(y, LoaderRequest::RemoveTarget { pid: 2 });
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_a_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
        let r: Result<LoaderRequest, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::TooLarge(u32::MAX))));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_le_bytes()).await.expect("write");
        a.write_all(&[0, 1, 2]).await.expect("write");
        drop(a);
        let r: Result<LoaderRequest, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn garbage_body_is_a_codec_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&4u32.to_le_bytes()).await.expect("write");
        a.write_all(&[0xff, 0xff, 0xff, 0xff]).await.expect("write");
        let r: Result<LoaderRequest, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Codec(_))));
    }

    #[tokio::test]
    async fn zero_length_and_clean_close() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&0u32.to_le_bytes()).await.expect("write");
        let r: Result<LoaderRequest, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Empty)));
        drop(a);
        let r: Result<LoaderRequest, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Closed)));
    }
}
