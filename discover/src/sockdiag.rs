//! Listening TCP sockets from the kernel's sock_diag netlink interface, asking for LISTEN only.
//!
//! /proc/net/tcp makes the kernel walk every bucket of the established-connection table on each
//! read, which on a busy host cost discover ~5 % of a core at four scans a second; a sock_diag
//! dump filtered to LISTEN walks only the listening table. No capability is needed to list the
//! sockets of discover's own network namespace.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDR_LEN: usize = 16;
const REQ_LEN: usize = 56;
/// inet_diag_msg: family, state, timer, retrans (4), sockid (48), expires, rqueue, wqueue, uid,
/// inode (20).
const MSG_LEN: usize = 72;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Socket inode → local port for every TCP socket in LISTEN state, IPv4 and IPv6.
pub fn listening_sockets() -> io::Result<HashMap<u64, u16>> {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 32 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send(&sock, &request(seq, family))?;
        'dump: loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap_or_default());
                if len < NLMSG_HDR_LEN || len > msgs.len() {
                    return Err(io::Error::other("truncated sock_diag message"));
                }
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => return Err(io::Error::other("sock_diag refused the dump")),
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some((inode, port)) = parse_msg(&msgs[NLMSG_HDR_LEN..len]) {
                            out.insert(inode, port);
                        }
                    }
                    _ => {}
                }
                msgs = &msgs[align(len).min(msgs.len())..];
            }
        }
    }
    Ok(out)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// An inet_diag_req_v2 dump request for TCP sockets of `family` in LISTEN state.
fn request(seq: u32, family: u8) -> [u8; NLMSG_HDR_LEN + REQ_LEN] {
    let mut m = [0u8; NLMSG_HDR_LEN + REQ_LEN];
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    m[0..4].copy_from_slice(&((NLMSG_HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut m[NLMSG_HDR_LEN..];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    m
}

fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addresses the kernel; msg is valid for reads of its length.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// (inode, local port) of one inet_diag_msg.
fn parse_msg(m: &[u8]) -> Option<(u64, u16)> {
    if m.len() < MSG_LEN || u32::from(m[1]) != TCP_LISTEN {
        return None;
    }
    // sockid starts at 4 with the source port in network byte order
    let port = u16::from_be_bytes([m[4], m[5]]);
    let inode = u32::from_ne_bytes(m[68..72].try_into().ok()?);
    Some((u64::from(inode), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let found = listening_sockets().expect("sock_diag dump");
        assert!(found.values().any(|&p| p == port), "{port} in {found:?}");
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            let p6 = v6.local_addr().expect("addr").port();
            let found = listening_sockets().expect("sock_diag dump");
            assert!(found.values().any(|&p| p == p6));
        }
    }

    #[test]
    fn agrees_with_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let from_proc = crate::procfs::listening_sockets(std::path::Path::new("/proc"));
        let from_diag = listening_sockets().expect("sock_diag dump");
        let inode_of = |m: &HashMap<u64, u16>| m.iter().find(|(_, &p)| p == port).map(|(&i, _)| i);
        assert!(inode_of(&from_diag).is_some());
        assert_eq!(inode_of(&from_diag), inode_of(&from_proc));
    }

    #[test]
    fn short_or_non_listening_messages_are_skipped() {
        assert_eq!(parse_msg(&[0u8; 10]), None);
        let mut m = [0u8; MSG_LEN];
        m[1] = 1; // ESTABLISHED
        assert_eq!(parse_msg(&m), None);
        m[1] = TCP_LISTEN as u8;
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[68..72].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse_msg(&m), Some((77, 8080)));
    }
}
