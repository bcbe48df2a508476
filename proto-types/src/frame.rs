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
    #[error("a request that needs a file descriptor came without one")]
    MissingFd,
    #[error("file descriptors came that no request takes")]
    UnexpectedFds,
}

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_with(r, &mut Vec::new()).await
}

/// Like [`read_frame`], reusing `buf` for the body so a busy connection does not allocate
/// (and page-fault) a fresh buffer per frame.
pub async fn read_frame_with<R, T>(r: &mut R, buf: &mut Vec<u8>) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_body(r, buf).await?;
    Ok(codec::decode(buf)?)
}

/// Reads one frame's body into `buf`, its length checked against the cap first.
pub async fn read_frame_body<R>(r: &mut R, buf: &mut Vec<u8>) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
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
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf).await?;
    Ok(())
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_frame_with(w, msg, &mut Vec::new()).await
}

/// Like [`write_frame`], building the frame in `buf` (reused across calls).
pub async fn write_frame_with<W, T>(w: &mut W, msg: &T, buf: &mut Vec<u8>) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    encode_frame(msg, buf)?;
    write_encoded(w, buf).await
}

/// Writes a whole frame that [`encode_frame`] made, and flushes it.
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// The whole frame for `msg` (length prefix and body) in `buf`.
pub fn encode_frame<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    codec::encode_into(msg, u64::from(MAX_FRAME), buf)?;
    let len = u32::try_from(buf.len() - 4).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::LoaderRequest;

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(
            &mut a,
            &LoaderRequest::AddTarget {
                pid: 1,
                propagation: None,
            },
        )
        .await
        .expect("write");
        write_frame(&mut a, &LoaderRequest::RemoveTarget { pid: 2 })
            .await
            .expect("write");
        let x: LoaderRequest = read_frame(&mut b).await.expect("read");
        let y: LoaderRequest = read_frame(&mut b).await.expect("read");
        assert_eq!(
            x,
            LoaderRequest::AddTarget {
                pid: 1,
                propagation: None
            }
        );
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
