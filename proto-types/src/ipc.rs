//! Unix-socket servers and clients between daemons: handshake, SO_PEERCRED role check, typed frames.

use std::fmt::Debug;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};

use crate::codec::CodecError;
use crate::fds::{send_with_fd, FdStream};
use crate::frame::{
    encode_frame, read_frame, read_frame_body, write_encoded, write_frame, write_frame_with,
    FrameError,
};
use crate::msg::{Hello, HelloReply};
use crate::{Role, PROTOCOL_VERSION};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("handshake with {0} failed: {1}")]
    Handshake(Role, FrameError),
    #[error("handshake with {0} timed out")]
    HandshakeTimeout(Role),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why a connection was refused or closed; logged as one line, never fatal to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum PeerRejected {
    #[error("cannot read SO_PEERCRED: {0}")]
    NoCredentials(std::io::Error),
    #[error("no Hello within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("bad Hello: {0}")]
    BadHello(FrameError),
    #[error("protocol version {0}, this daemon speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("role {0} may not talk to this daemon")]
    RoleNotAllowed(Role),
    #[error("uid {uid} is not the {role} user")]
    WrongUser { uid: u32, role: Role },
}

/// Resolves a role's uid from the system user database; `None` when the user does not exist.
pub fn uid_of(role: Role) -> Option<u32> {
    nix::unistd::User::from_name(role.user())
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// Who may connect: the role table plus the live uid of each allowed role's user.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    me: Role,
    allowed: Vec<(Role, Option<u32>)>,
}

impl PeerPolicy {
    pub fn for_role(me: Role) -> Self {
        Self {
            me,
            allowed: me.accepts_from().iter().map(|&r| (r, uid_of(r))).collect(),
        }
    }

    /// Checks the claimed role against the table and the kernel-reported uid.
    /// Root may speak for any allowed role: it could load BPF itself, so refusing it protects nothing.
    pub fn check(&self, peer_uid: u32, hello: &Hello) -> Result<Role, PeerRejected> {
        if hello.version != PROTOCOL_VERSION {
            return Err(PeerRejected::Version(hello.version));
        }
        let Some((role, uid)) = self.allowed.iter().find(|(r, _)| *r == hello.role) else {
            return Err(PeerRejected::RoleNotAllowed(hello.role));
        };
        if peer_uid == 0 || Some(peer_uid) == *uid {
            Ok(*role)
        } else {
            Err(PeerRejected::WrongUser {
                uid: peer_uid,
                role: *role,
            })
        }
    }

    pub fn me(&self) -> Role {
        self.me
    }
}

/// Binds `role`'s socket with mode 0660 so only the owner and the seam group can connect.
pub fn bind(role: Role) -> Result<UnixListener, IpcError> {
    let path = role.socket_path();
    bind_at(&path)
}

pub fn bind_at(path: &Path) -> Result<UnixListener, IpcError> {
    let err = |source| IpcError::Bind {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    crate::selfstats::declare_counters(&["peers_refused", "peers_closed_on_bad_input"]);
    crate::selfstats::gauge("peers_connected");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// A request type a daemon serves.
pub trait Request: Debug + Send + Sized + 'static {
    /// Reads one request from a frame's body; an error closes the connection.
    fn from_frame(body: &[u8]) -> Result<Self, CodecError>;

    /// File descriptors that travel with this request, taken in the order they were sent.
    fn passed_fds(&self) -> usize {
        0
    }
}

/// Accepts connections forever; each request goes to `handle` with the descriptors it carried.
/// A misbehaving peer loses only its own connection, with one log line saying why.
pub async fn serve<Req, H>(listener: UnixListener, policy: PeerPolicy, handle: H)
where
    Req: Request,
    H: Fn(Role, Req, Vec<OwnedFd>) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let policy = policy.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let pid = stream.peer_cred().ok().and_then(|c| c.pid());
            let peers = crate::selfstats::gauge("peers_connected");
            match serve_one::<Req, _>(stream, &policy, &*handle).await {
                Ok(role) => {
                    peers.sub(1);
                    tracing::info!(peer = %role, peer_pid = ?pid, "peer disconnected")
                }
                Err(ConnEnd::Rejected(why)) => {
                    crate::selfstats::counter("peers_refused").add(1);
                    tracing::warn!(peer_pid = ?pid, reason = %why, "refused connection")
                }
                Err(ConnEnd::Broken(role, why)) => {
                    peers.sub(1);
                    crate::selfstats::counter("peers_closed_on_bad_input").add(1);
                    tracing::warn!(peer = %role, peer_pid = ?pid, reason = %why, "closed connection on bad input")
                }
            }
        });
    }
}

enum ConnEnd {
    Rejected(PeerRejected),
    Broken(Role, FrameError),
}

async fn serve_one<Req, H>(
    stream: UnixStream,
    policy: &PeerPolicy,
    handle: &H,
) -> Result<Role, ConnEnd>
where
    Req: Request,
    H: Fn(Role, Req, Vec<OwnedFd>) + ?Sized,
{
    let mut stream = FdStream::new(stream);
    let cred = stream
        .get_mut()
        .peer_cred()
        .map_err(|e| ConnEnd::Rejected(PeerRejected::NoCredentials(e)))?;
    let hello: Hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream))
        .await
        .map_err(|_| ConnEnd::Rejected(PeerRejected::HandshakeTimeout))?
        .map_err(|e| ConnEnd::Rejected(PeerRejected::BadHello(e)))?;
    let role = policy
        .check(cred.uid(), &hello)
        .map_err(ConnEnd::Rejected)?;
    // From here every end of this connection is a Broken or Ok that takes it off again.
    crate::selfstats::gauge("peers_connected").add(1);
    write_frame(
        stream.get_mut(),
        &HelloReply::Accepted {
            version: PROTOCOL_VERSION,
        },
    )
    .await
    .map_err(|e| ConnEnd::Broken(role, e))?;
    tracing::info!(peer = %role, uid = cred.uid(), "peer connected");
    let mut buf = Vec::new();
    loop {
        let read = read_frame_body(&mut stream, &mut buf).await;
        match read.and_then(|()| Ok(Req::from_frame(&buf)?)) {
            Ok(req) => {
                let mut fds = Vec::with_capacity(req.passed_fds());
                for _ in 0..req.passed_fds() {
                    match stream.take_fd() {
                        Some(fd) => fds.push(fd),
                        None => return Err(ConnEnd::Broken(role, FrameError::MissingFd)),
                    }
                }
                // One read may run into the next request and bring its descriptor early; more
                // than that was sent with requests that take none.
                if stream.pending_fds() > 1 {
                    return Err(ConnEnd::Broken(role, FrameError::UnexpectedFds));
                }
                handle(role, req, fds)
            }
            Err(FrameError::Closed) => return Ok(role),
            Err(e) => return Err(ConnEnd::Broken(role, e)),
        }
    }
}

/// A client connection to another daemon, after a successful handshake.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    server: Role,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(me: Role, server: Role) -> Result<Self, IpcError> {
        Self::connect_at(me, server, &server.socket_path()).await
    }

    pub async fn connect_at(me: Role, server: Role, path: &Path) -> Result<Self, IpcError> {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| IpcError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            role: me,
        };
        let fut = async {
            write_frame(&mut stream, &hello).await?;
            read_frame::<_, HelloReply>(&mut stream).await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, fut).await {
            Err(_) => Err(IpcError::HandshakeTimeout(server)),
            Ok(Err(e)) => Err(IpcError::Handshake(server, e)),
            Ok(Ok(HelloReply::Accepted { .. })) => Ok(Self {
                stream,
                server,
                buf: Vec::new(),
            }),
        }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), IpcError> {
        Ok(write_frame_with(&mut self.stream, msg, &mut self.buf).await?)
    }

    /// Sends a frame made by [`encode_frame`] elsewhere (where the message's parts were at hand).
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), IpcError> {
        Ok(write_encoded(&mut self.stream, frame).await?)
    }

    /// Sends `msg` with `fd` attached (for a request whose `passed_fds` is 1).
    pub async fn send_with_fd<T: Serialize>(
        &mut self,
        msg: &T,
        fd: BorrowedFd<'_>,
    ) -> Result<(), IpcError> {
        encode_frame(msg, &mut self.buf)?;
        send_with_fd(&mut self.stream, &self.buf, fd)
            .await
            .map_err(|e| IpcError::Frame(FrameError::Io(e)))
    }

    pub fn server(&self) -> Role {
        self.server
    }

    /// Whether the server has closed this connection (it never sends after the handshake, so
    /// anything readable is its end of stream); a client that only writes now and then learns
    /// of a restarted server here instead of at its next write.
    pub fn peer_closed(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        }
    }
}

/// Connects, retrying with capped backoff until `deadline` passes.
pub async fn connect_with_retry(
    me: Role,
    server: Role,
    deadline: Duration,
) -> Result<Client, IpcError> {
    let start = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match Client::connect(me, server).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::LoaderRequest;

    fn hello(role: Role) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
        }
    }

    #[test]
    fn policy_follows_role_table_and_uids() {
        let policy = PeerPolicy {
            me: Role::Loader,
            allowed: vec![(Role::Discover, Some(1001))],
        };
        assert_eq!(
            policy.check(1001, &hello(Role::Discover)).expect("ok"),
            Role::Discover
        );
        assert!(policy.check(0, &hello(Role::Discover)).is_ok());
        assert!(matches!(
            policy.check(1002, &hello(Role::Discover)),
            Err(PeerRejected::WrongUser { uid: 1002, .. })
        ));
        assert!(matches!(
            policy.check(0, &hello(Role::Correlator)),
            Err(PeerRejected::RoleNotAllowed(Role::Correlator))
        ));
        let old = Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Discover,
        };
        assert!(matches!(
            policy.check(0, &old),
            Err(PeerRejected::Version(_))
        ));
    }

    #[tokio::test]
    async fn a_request_missing_its_file_closes_only_that_connection() {
        use crate::msg::TlsFile;
        use std::sync::Mutex;
        let dir = std::env::temp_dir().join(format!("seam-ipc-fd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("loader.sock");
        let listener = bind_at(&path).expect("bind");
        let seen: Arc<Mutex<Vec<(LoaderRequest, usize)>>> = Arc::default();
        let seen2 = seen.clone();
        let policy = PeerPolicy {
            me: Role::Loader,
            allowed: vec![(Role::Discover, None)],
        };
        tokio::spawn(serve::<LoaderRequest, _>(
            listener,
            policy,
            move |_, r, fds| seen2.lock().expect("lock").push((r, fds.len())),
        ));
        let tls = LoaderRequest::TlsLibrary {
            pid: 7,
            file: TlsFile::Library,
        };
        // sent without its descriptor: that connection is closed, nothing is handled
        let mut bad = Client::connect_at(Role::Discover, Role::Loader, &path)
            .await
            .expect("peer");
        bad.send(&tls).await.expect("send");
        // sent properly on a fresh connection: handled with exactly one descriptor
        let file = std::fs::File::open("/proc/self/exe").expect("a file");
        let mut good = Client::connect_at(Role::Discover, Role::Loader, &path)
            .await
            .expect("server alive");
        use std::os::fd::AsFd;
        good.send_with_fd(&tls, file.as_fd()).await.expect("send");
        good.send(&LoaderRequest::RemoveTarget { pid: 7 })
            .await
            .expect("send");
        for _ in 0..100 {
            if seen.lock().expect("lock").len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![(tls, 1), (LoaderRequest::RemoveTarget { pid: 7 }, 0)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bad_peer_is_dropped_and_server_keeps_serving() {
        use std::sync::Mutex;
        use tokio::io::AsyncWriteExt;
        let dir = std::env::temp_dir().join(format!("seam-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("loader.sock");
        let listener = bind_at(&path).expect("bind");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let policy = PeerPolicy {
            me: Role::Loader,
            allowed: vec![(Role::Discover, None)],
        };
        tokio::spawn(serve::<LoaderRequest, _>(
            listener,
            policy,
            move |_, r, _| seen2.lock().expect("lock").push(r),
        ));

        // garbage before any Hello
        let mut s = UnixStream::connect(&path).await.expect("connect");
        s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
            .await
            .expect("write");
        // wrong role
        assert!(Client::connect_at(Role::Correlator, Role::Loader, &path)
            .await
            .is_err());
        // a good peer that then sends an oversized frame
        let mut c = Client::connect_at(Role::Discover, Role::Loader, &path)
            .await
            .expect("good peer");
        c.send(&LoaderRequest::AddTarget {
            pid: 5,
            propagation: None,
        })
        .await
        .expect("send");
        c.stream
            .write_all(&(crate::frame::MAX_FRAME + 1).to_le_bytes())
            .await
            .expect("write");
        // the server still serves a fresh, well-behaved peer
        let mut d = Client::connect_at(Role::Discover, Role::Loader, &path)
            .await
            .expect("server alive");
        d.send(&LoaderRequest::RemoveTarget { pid: 5 })
            .await
            .expect("send");
        for _ in 0..100 {
            if seen.lock().expect("lock").len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                LoaderRequest::AddTarget {
                    pid: 5,
                    propagation: None
                },
                LoaderRequest::RemoveTarget { pid: 5 }
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
