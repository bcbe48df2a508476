//! File descriptors passed with frames (SCM_RIGHTS), so a daemon can hand another an open file instead of a path.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::UnixStream;

/// At most this many descriptors arrive in one message; more are a protocol error.
const MAX_FDS_PER_MESSAGE: usize = 4;

/// A Unix stream read with `recvmsg`, keeping the descriptors that arrive with the bytes in the
/// order they were sent. Plain `read` would make the kernel close them.
#[derive(Debug)]
pub struct FdStream {
    inner: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdStream {
    pub fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            fds: VecDeque::new(),
        }
    }

    pub fn get_mut(&mut self) -> &mut UnixStream {
        &mut self.inner
    }

    /// The oldest descriptor received and not yet taken.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Descriptors received and not yet taken.
    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }
}

fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> std::io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let bytes = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            for fd in received {
                // SAFETY: the kernel just installed this descriptor in our table for us alone.
                fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if truncated {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than {MAX_FDS_PER_MESSAGE} file descriptors in one message"),
        ));
    }
    Ok(bytes)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let sock = this.inner.as_raw_fd();
            let fds = &mut this.fds;
            let unfilled = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv_with_fds(sock, unfilled, fds))
            {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Writes `bytes` with `fd` attached to the first of them.
pub async fn send_with_fd(
    stream: &mut UnixStream,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let sock = stream.as_raw_fd();
    let raw = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(Interest::WRITABLE, || {
            sendmsg::<()>(
                sock,
                &[IoSlice::new(bytes)],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    stream.write_all(&bytes[sent..]).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn descriptors_arrive_in_order_with_their_bytes() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let mut files = Vec::new();
        for text in ["first", "second"] {
            let mut f = tempfile_with(text);
            f.rewind().expect("rewind");
            files.push(f);
        }
        use std::os::fd::AsFd;
        send_with_fd(&mut a, b"ab", files[0].as_fd())
            .await
            .expect("send");
        send_with_fd(&mut a, b"cd", files[1].as_fd())
            .await
            .expect("send");
        drop(a);
        let mut r = FdStream::new(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"abcd");
        assert_eq!(r.pending_fds(), 2);
        for want in ["first", "second"] {
            let mut f = std::fs::File::from(r.take_fd().expect("fd"));
            let mut got = String::new();
            f.rewind().expect("rewind");
            f.read_to_string(&mut got).expect("read");
            assert_eq!(got, want);
        }
        assert!(r.take_fd().is_none());
    }

    fn tempfile_with(text: &str) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("seam-fds-{}-{text}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        f.write_all(text.as_bytes()).expect("write");
        f
    }
}
