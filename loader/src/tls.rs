//! Uprobes on OpenSSL in the files discover hands over open: each distinct file is probed once and released with its last user.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use object::{Object, ObjectSegment, ObjectSymbol};
use seam_proto::msg::TlsFile;

use crate::uprobe_multi::UprobePrograms;

/// The uprobe programs of the capture object: the entry remembers the call (its cookie says
/// which function), the return reads the plaintext.
pub const PROGRAMS: &[&str] = &["tls_enter", "tls_return"];

/// Cookie bits (capture.bpf.c's TLS_COOKIE_*).
const EGRESS: u64 = 1;
const EX: u64 = 2;
const HANDSHAKE: u64 = 4;

/// (OpenSSL function, cookie): SSL_read/SSL_write exist in every OpenSSL and are required; the
/// `_ex` forms only since 1.1.1, so a file without them is still probed. SSL_do_handshake (which
/// SSL_connect and SSL_accept call) shows a connection's socket before its first write.
const REQUIRED: &[(&str, u64)] = &[("SSL_read", 0), ("SSL_write", EGRESS)];
const OPTIONAL: &[(&str, u64)] = &[
    ("SSL_read_ex", EX),
    ("SSL_write_ex", EGRESS | EX),
    ("SSL_do_handshake", HANDSHAKE),
];

/// A file by device and inode: the same library seen through different paths or mount
/// namespaces is one file.
pub type FileKey = (u64, u64);

#[derive(Debug)]
struct Probed {
    /// The entry and return links; dropping them detaches.
    _links: [OwnedFd; 2],
    users: HashSet<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not a regular file")]
    NotAFile,
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("not an ELF file: {0}")]
    NotElf(object::Error),
    #[error("{0} not found among its symbols")]
    NoSymbol(&'static str),
    #[error("{0} is not in a loaded segment")]
    NotMapped(&'static str),
    #[error("attaching failed: {0}")]
    Attach(std::io::Error),
}

#[derive(Debug, Default)]
pub struct TlsProbes {
    files: HashMap<FileKey, Probed>,
    /// Files already found to hold no OpenSSL, so they are not parsed again.
    without_openssl: HashSet<FileKey>,
    by_pid: HashMap<u32, HashSet<FileKey>>,
}

impl TlsProbes {
    /// `pid` maps `file`: probe it unless it already is (or is known to hold no OpenSSL).
    pub fn add(&mut self, programs: &UprobePrograms, pid: u32, file: OwnedFd, kind: TlsFile) {
        let key = match file_key(&file) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(pid, error = %e, "TLS library refused");
                return;
            }
        };
        if self.without_openssl.contains(&key) {
            return;
        }
        if let Some(p) = self.files.get_mut(&key) {
            p.users.insert(pid);
            self.by_pid.entry(pid).or_default().insert(key);
            return;
        }
        let attached = attach(programs, &file);
        // The symbol tables just read (Node's alone are megabytes) are freed: give them back.
        // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
        unsafe { libc::malloc_trim(0) };
        match attached {
            Ok((links, functions)) => {
                tracing::info!(
                    pid,
                    ?kind,
                    dev = key.0,
                    inode = key.1,
                    functions,
                    "OpenSSL probed"
                );
                self.files.insert(
                    key,
                    Probed {
                        _links: links,
                        users: HashSet::from([pid]),
                    },
                );
                self.by_pid.entry(pid).or_default().insert(key);
            }
            Err(e) => {
                self.without_openssl.insert(key);
                match kind {
                    TlsFile::Library => tracing::warn!(
                        pid, dev = key.0, inode = key.1, error = %e,
                        "libssl without usable OpenSSL symbols: its TLS traffic is not captured (plain capture goes on)"
                    ),
                    TlsFile::Executable => {
                        tracing::debug!(pid, error = %e, "executable holds no OpenSSL")
                    }
                }
            }
        }
    }

    /// Files with OpenSSL probes attached.
    pub fn probed_files(&self) -> usize {
        self.files.len()
    }

    /// `pid` is gone: files it was the last user of lose their probes.
    pub fn remove_pid(&mut self, pid: u32) {
        let Some(keys) = self.by_pid.remove(&pid) else {
            return;
        };
        for key in keys {
            let Some(p) = self.files.get_mut(&key) else {
                continue;
            };
            p.users.remove(&pid);
            if p.users.is_empty() {
                self.files.remove(&key);
                tracing::info!(
                    dev = key.0,
                    inode = key.1,
                    "OpenSSL probes removed: last user gone"
                );
            }
        }
    }
}

/// Probes the OpenSSL functions `file` defines; returns the links and how many functions.
fn attach(programs: &UprobePrograms, file: &OwnedFd) -> Result<([OwnedFd; 2], usize), ProbeError> {
    let reader = std::fs::File::from(file.try_clone().map_err(ProbeError::Read)?);
    let cache = object::ReadCache::new(reader);
    let elf = object::File::parse(&cache).map_err(ProbeError::NotElf)?;
    let mut offsets = Vec::new();
    let mut cookies = Vec::new();
    for &(function, cookie) in REQUIRED {
        offsets.push(file_offset(&elf, function)?);
        cookies.push(cookie);
    }
    for &(function, cookie) in OPTIONAL {
        match file_offset(&elf, function) {
            Ok(off) => {
                offsets.push(off);
                cookies.push(cookie);
            }
            Err(e) => tracing::debug!(function, error = %e, "optional OpenSSL function not probed"),
        }
    }
    let entry = programs
        .attach("tls_enter", file, &offsets, &cookies, false, 0)
        .map_err(ProbeError::Attach)?;
    let ret = programs
        .attach("tls_return", file, &offsets, &cookies, true, 0)
        .map_err(ProbeError::Attach)?;
    Ok(([entry, ret], offsets.len()))
}

/// Where `function`'s first instruction is in the file (uprobes are placed by file offset).
pub fn file_offset<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    function: &'static str,
) -> Result<u64, ProbeError> {
    let addr = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(function))
        .map(|s| s.address())
        .ok_or(ProbeError::NoSymbol(function))?;
    elf.segments()
        .find_map(|seg| {
            let (file_start, file_len) = seg.file_range();
            let start = seg.address();
            (addr >= start && addr < start + file_len).then(|| addr - start + file_start)
        })
        .ok_or(ProbeError::NotMapped(function))
}

pub fn file_key(file: &OwnedFd) -> Result<FileKey, ProbeError> {
    let meta = std::fs::File::from(file.try_clone().map_err(ProbeError::Read)?)
        .metadata()
        .map_err(ProbeError::Read)?;
    if !meta.is_file() {
        return Err(ProbeError::NotAFile);
    }
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_offsets_come_from_the_loaded_segments() {
        // This test binary's own main: its file offset maps back to the same bytes.
        let exe = std::fs::File::open("/proc/self/exe").expect("own exe");
        let cache = object::ReadCache::new(exe);
        let elf = object::File::parse(&cache).expect("elf");
        assert!(matches!(
            file_offset(&elf, "SSL_write"),
            Err(ProbeError::NoSymbol("SSL_write"))
        ));
        let main = elf
            .symbols()
            .find(|s| s.is_definition() && s.name() == Ok("main"))
            .expect("main symbol");
        let seg = elf
            .segments()
            .find(|s| main.address() >= s.address() && main.address() < s.address() + s.size())
            .expect("segment");
        let off = file_offset(&elf, "main").expect("offset");
        assert_eq!(off, main.address() - seg.address() + seg.file_range().0);
    }
}
