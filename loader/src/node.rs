//! Uprobes on Node executables so the capture can read each Node process's async context.
//!
//! Two kinds: per file, on the functions that set up an accepted TCP connection (and end its TLS
//! handshake) and make a TCP socket object (a few times per connection, so cheap); per process, on
//! `AsyncHooks::push_async_context`, which runs on every callback, only until it has shown where
//! that process keeps its async id fields. And per process, only while ctxprop injects, on libuv's
//! `uv__try_write`, where every stream write begins: the capture then chooses which request's
//! context ctxprop gives the send (one trap per write, so not while nothing is injected).

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;

use crate::tls::{file_key, file_offset, FileKey, ProbeError};
use crate::uprobe_multi::UprobePrograms;

pub const PROGRAMS: &[&str] = &[
    "node_learn",
    "node_accept_enter",
    "node_accept_return",
    "node_socket_new",
    "node_send_enter",
];

/// libuv's uv__try_write(uv_stream_t*, const uv_buf_t*, unsigned, uv_stream_t*): a static
/// function, found only in an executable that kept its symbol table (Node's does).
const TRY_WRITE: &str = "uv__try_write";

/// node::AsyncHooks::push_async_context(double, double, v8::Local<v8::Object>)
const PUSH_ASYNC_CONTEXT: &str =
    "_ZN4node10AsyncHooks18push_async_contextEddN2v85LocalINS1_6ObjectEEE";
/// node::ConnectionWrap<node::TCPWrap, uv_tcp_s>::OnConnection(uv_stream_s*, int)
const ON_CONNECTION: &str =
    "_ZN4node14ConnectionWrapINS_7TCPWrapE8uv_tcp_sE12OnConnectionEP11uv_stream_si";
/// node::crypto::TLSWrap::SSLInfoCallback(ssl_st const*, int, int): OpenSSL's info callback,
/// where an HTTPS server's connection is handed to HTTP at the handshake's end
const SSL_INFO_CALLBACK: &str = "_ZN4node6crypto7TLSWrap15SSLInfoCallbackEPK6ssl_stii";
/// node::TCPWrap::New(v8::FunctionCallbackInfo<v8::Value> const&): JS's `new TCP()`
const TCP_WRAP_NEW: &str = "_ZN4node7TCPWrap3NewERKN2v820FunctionCallbackInfoINS1_5ValueEEE";

/// Where a Node executable's probed functions start, by file offset.
#[derive(Clone, Copy, Debug)]
struct Offsets {
    push_async_context: u64,
    on_connection: u64,
    tcp_wrap_new: u64,
    /// None in a Node built without TLS: its connections' setups end at the accept.
    ssl_info_callback: Option<u64>,
    /// None when the executable has no such symbol: its sends are not probed.
    try_write: Option<u64>,
}

#[derive(Debug)]
struct Probed {
    offsets: Offsets,
    /// Kept to attach per-process probes later (the send probes follow ctxprop).
    file: OwnedFd,
    /// Entry and return on OnConnection and SSLInfoCallback, entry on TCPWrap::New; dropping
    /// them detaches.
    _links: [OwnedFd; 3],
    users: HashSet<u32>,
}

#[derive(Debug)]
pub struct NodeProbes {
    /// None when the Node programs were not loaded or their map is missing: no Node probes.
    rt: Option<BpfHashMap<MapData, u32, [u8; seam_abi::NODE_RT_SIZE]>>,
    files: HashMap<FileKey, Probed>,
    not_node: HashSet<FileKey>,
    by_pid: HashMap<u32, FileKey>,
    /// Processes whose async id fields are not found yet, with their learning probe.
    learning: HashMap<u32, OwnedFd>,
    /// Whether ctxprop injects (its epoch is set): only then are sends probed.
    propagating: bool,
    /// Each Node target's probe on `uv__try_write`, while ctxprop injects.
    sending: HashMap<u32, OwnedFd>,
}

impl NodeProbes {
    /// With `loaded` (the Node programs are among the loaded uprobe programs), takes the map of
    /// learned fields out of the object: only this side reads or clears it.
    pub fn new(ebpf: &mut Ebpf, loaded: bool) -> Self {
        let rt = loaded
            .then(|| ebpf.take_map(seam_abi::names::NODE_RT))
            .flatten()
            .and_then(|m| BpfHashMap::try_from(m).ok());
        if loaded && rt.is_none() {
            tracing::warn!("Node async context unavailable: its map is missing");
        }
        Self {
            rt,
            files: HashMap::new(),
            not_node: HashSet::new(),
            by_pid: HashMap::new(),
            learning: HashMap::new(),
            propagating: false,
            sending: HashMap::new(),
        }
    }

    /// `pid` runs the executable `file`: when it is Node, probe it.
    pub fn add(&mut self, programs: &UprobePrograms, pid: u32, file: &OwnedFd) {
        if self.rt.is_none() {
            return;
        }
        let Ok(key) = file_key(file) else {
            return;
        };
        if self.not_node.contains(&key) || self.by_pid.contains_key(&pid) {
            return;
        }
        let probed = match self.files.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match probe_file(programs, file) {
                Ok(p) => {
                    tracing::info!(
                        pid,
                        dev = key.0,
                        inode = key.1,
                        tls_handshakes = p.offsets.ssl_info_callback.is_some(),
                        "Node executable probed"
                    );
                    e.insert(p)
                }
                Err(err) => {
                    tracing::debug!(pid, error = %err, "executable is not a Node seam can read");
                    self.not_node.insert(key);
                    return;
                }
            },
        };
        match programs.attach(
            "node_learn",
            file,
            &[probed.offsets.push_async_context],
            &[0],
            false,
            pid,
        ) {
            Ok(link) => {
                tracing::info!(pid, "Node async context probe attached");
                probed.users.insert(pid);
                self.by_pid.insert(pid, key);
                self.learning.insert(pid, link);
            }
            Err(e) => tracing::warn!(pid, error = %e, "Node async context probe refused"),
        }
        if self.propagating {
            self.probe_sends(programs, pid);
        }
    }

    /// ctxprop injects (`on`) or not: each Node target's send probe follows.
    pub fn set_propagating(&mut self, programs: &UprobePrograms, on: bool) {
        if on == self.propagating {
            return;
        }
        self.propagating = on;
        if on {
            let pids: Vec<u32> = self.by_pid.keys().copied().collect();
            for pid in pids {
                self.probe_sends(programs, pid);
            }
        } else {
            self.sending.clear();
        }
        tracing::info!(
            on,
            processes = self.sending.len(),
            "Node send probes follow ctxprop"
        );
    }

    fn probe_sends(&mut self, programs: &UprobePrograms, pid: u32) {
        let Some(probed) = self.by_pid.get(&pid).and_then(|key| self.files.get(key)) else {
            return;
        };
        let Some(at) = probed.offsets.try_write else {
            return;
        };
        match programs.attach("node_send_enter", &probed.file, &[at], &[0], false, pid) {
            Ok(link) => {
                self.sending.insert(pid, link);
            }
            Err(e) => tracing::warn!(
                pid,
                error = %e,
                "Node send probe refused: this process's calls get no request context from ctxprop"
            ),
        }
    }

    /// Detaches the learning probe (it runs on every callback) of each process whose async id
    /// fields were found (the capture reads them from then on).
    pub fn detach_learned(&mut self) {
        let Some(rt) = self.rt.as_ref() else {
            return;
        };
        self.learning.retain(|pid, _| {
            let found = rt.get(pid, 0).is_ok();
            if found {
                tracing::info!(pid, "Node async context found");
            }
            !found
        });
    }

    /// `pid` is gone: its probes and learned fields go; a file's probes with its last user.
    pub fn remove_pid(&mut self, pid: u32) {
        self.learning.remove(&pid);
        self.sending.remove(&pid);
        if let Some(rt) = self.rt.as_mut() {
            // A pid reused by another Node process must learn its own fields.
            let _ = rt.remove(&pid);
        }
        let Some(key) = self.by_pid.remove(&pid) else {
            return;
        };
        if let Some(p) = self.files.get_mut(&key) {
            p.users.remove(&pid);
            if p.users.is_empty() {
                self.files.remove(&key);
            }
        }
    }
}

fn probe_file(programs: &UprobePrograms, file: &OwnedFd) -> Result<Probed, ProbeError> {
    let reader = std::fs::File::from(file.try_clone().map_err(ProbeError::Read)?);
    let cache = object::ReadCache::new(reader);
    let elf = object::File::parse(&cache).map_err(ProbeError::NotElf)?;
    let offsets = Offsets {
        push_async_context: file_offset(&elf, PUSH_ASYNC_CONTEXT)?,
        on_connection: file_offset(&elf, ON_CONNECTION)?,
        tcp_wrap_new: file_offset(&elf, TCP_WRAP_NEW)?,
        ssl_info_callback: file_offset(&elf, SSL_INFO_CALLBACK).ok(),
        try_write: file_offset(&elf, TRY_WRITE).ok(),
    };
    // The cookie tells the programs which setup callback fired.
    let mut at = vec![offsets.on_connection];
    let mut phases = vec![u64::from(seam_abi::NODE_ACCEPTED)];
    if let Some(info) = offsets.ssl_info_callback {
        at.push(info);
        phases.push(u64::from(seam_abi::NODE_SECURED));
    }
    let entry = programs
        .attach("node_accept_enter", file, &at, &phases, false, 0)
        .map_err(ProbeError::Attach)?;
    let ret = programs
        .attach("node_accept_return", file, &at, &phases, true, 0)
        .map_err(ProbeError::Attach)?;
    let socket_new = programs
        .attach(
            "node_socket_new",
            file,
            &[offsets.tcp_wrap_new],
            &[0],
            false,
            0,
        )
        .map_err(ProbeError::Attach)?;
    Ok(Probed {
        offsets,
        file: file.try_clone().map_err(ProbeError::Read)?,
        _links: [entry, ret, socket_new],
        users: HashSet::new(),
    })
}
