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

/// One direction's public functions, each (OpenSSL function, cookie): SSL_read/SSL_write exist in
/// every OpenSSL and are required; the `_ex` forms only since 1.1.1, so a file without them is
/// still probed.
struct Direction {
    plain: (&'static str, u64),
    ex: (&'static str, u64),
}

const DIRECTIONS: [Direction; 2] = [
    Direction {
        plain: ("SSL_read", 0),
        ex: ("SSL_read_ex", EX),
    },
    Direction {
        plain: ("SSL_write", EGRESS),
        ex: ("SSL_write_ex", EGRESS | EX),
    },
];

/// SSL_do_handshake (which SSL_connect and SSL_accept call) shows a connection's socket before
/// its first write.
const HANDSHAKE_FUNCTION: (&str, u64) = ("SSL_do_handshake", HANDSHAKE);

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
            Ok((links, probes)) => {
                tracing::info!(
                    pid,
                    ?kind,
                    dev = key.0,
                    inode = key.1,
                    functions = probes.functions,
                    internal = probes.internal,
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

/// How many functions a file's probes are on, and how many of them are internal functions probed
/// in place of their public wrappers.
#[derive(Debug, Clone, Copy)]
struct Probes {
    functions: usize,
    internal: usize,
}

/// Probes the OpenSSL functions `file` defines; returns the links and what was probed.
fn attach(programs: &UprobePrograms, file: &OwnedFd) -> Result<([OwnedFd; 2], Probes), ProbeError> {
    let reader = std::fs::File::from(file.try_clone().map_err(ProbeError::Read)?);
    let cache = object::ReadCache::new(reader);
    let elf = object::File::parse(&cache).map_err(ProbeError::NotElf)?;
    let mut offsets = Vec::new();
    let mut cookies = Vec::new();
    let mut internal = 0;
    for direction in &DIRECTIONS {
        let (plain, plain_cookie) = direction.plain;
        let plain_addr = symbol_address(&elf, plain)?;
        let (ex, ex_cookie) = direction.ex;
        let ex_addr = symbol_address(&elf, ex);
        if let Ok(ex_addr) = ex_addr {
            if let Some(funnel) = shared_funnel(&elf, plain_addr, ex_addr) {
                tracing::debug!(plain, ex, funnel, "probing the function both call");
                internal += 1;
                offsets.push(address_offset(&elf, funnel).ok_or(ProbeError::NotMapped(ex))?);
                cookies.push(ex_cookie);
                continue;
            }
        }
        offsets.push(address_offset(&elf, plain_addr).ok_or(ProbeError::NotMapped(plain))?);
        cookies.push(plain_cookie);
        match ex_addr.and_then(|a| address_offset(&elf, a).ok_or(ProbeError::NotMapped(ex))) {
            Ok(off) => {
                offsets.push(off);
                cookies.push(ex_cookie);
            }
            Err(e) => {
                tracing::debug!(function = ex, error = %e, "optional OpenSSL function not probed")
            }
        }
    }
    let (function, cookie) = HANDSHAKE_FUNCTION;
    match file_offset(&elf, function) {
        Ok(off) => {
            offsets.push(off);
            cookies.push(cookie);
        }
        Err(e) => tracing::debug!(function, error = %e, "optional OpenSSL function not probed"),
    }
    let entry = programs
        .attach("tls_enter", file, &offsets, &cookies, false, 0)
        .map_err(ProbeError::Attach)?;
    let ret = programs
        .attach("tls_return", file, &offsets, &cookies, true, 0)
        .map_err(ProbeError::Attach)?;
    Ok((
        [entry, ret],
        Probes {
            functions: offsets.len(),
            internal,
        },
    ))
}

/// Where `function`'s first instruction is in the file (uprobes are placed by file offset).
pub fn file_offset<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    function: &'static str,
) -> Result<u64, ProbeError> {
    address_offset(elf, symbol_address(elf, function)?).ok_or(ProbeError::NotMapped(function))
}

fn symbol_address<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    function: &'static str,
) -> Result<u64, ProbeError> {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(function))
        .map(|s| s.address())
        .ok_or(ProbeError::NoSymbol(function))
}

fn address_offset<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>, addr: u64) -> Option<u64> {
    elf.segments().find_map(|seg| {
        let (file_start, file_len) = seg.file_range();
        let start = seg.address();
        (addr >= start && addr < start + file_len).then(|| addr - start + file_start)
    })
}

/// How much of a function is looked at to recognise a wrapper.
const WRAPPER_BYTES: u64 = 96;

/// The function a direction's two public functions both call, when probing it is cheaper and
/// sees the same calls. OpenSSL 1.1.1 and 3 implement SSL_read and SSL_read_ex (and the write
/// pair) as wrappers of one internal function with the `_ex` contract (ssl, buf, num, size_t
/// *moved; 1 on success). A uprobe costs one trap where the kernel emulates the probed
/// instruction (a register push) and a trap plus a single step where it does not (Debian's
/// wrappers begin with `sub $0x18,%rsp`): 1.0 against 4.7-5.0 us per call on this VM. So the
/// internal function is probed instead when a wrapper's first instruction is stepped, the `_ex`
/// wrapper only sets up its frame and calls it with its arguments unchanged, the other wrapper
/// calls it too, and its own first instruction is emulated; otherwise the wrappers are.
fn shared_funnel<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    plain_addr: u64,
    ex_addr: u64,
) -> Option<u64> {
    let code_at = |addr: u64| {
        elf.segments()
            .find_map(|seg| seg.data_range(addr, WRAPPER_BYTES).ok().flatten())
    };
    let (plain, ex) = (code_at(plain_addr)?, code_at(ex_addr)?);
    if starts_with_emulated_push(plain) && starts_with_emulated_push(ex) {
        return None;
    }
    let funnel = pass_through_callee(ex, ex_addr)?;
    (calls(plain, plain_addr, funnel) && starts_with_emulated_push(code_at(funnel)?))
        .then_some(funnel)
}

/// Whether the first instruction is a register push, which the kernel emulates at a uprobe.
fn starts_with_emulated_push(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
}

/// Where a call instruction (`e8 rel32`) at `at` goes.
fn call_target(code: &[u8], code_addr: u64, at: usize) -> Option<u64> {
    let rel: [u8; 4] = code.get(at + 1..at + 5)?.try_into().ok()?;
    (code.get(at) == Some(&0xe8)).then(|| {
        (code_addr + at as u64 + 5).wrapping_add_signed(i64::from(i32::from_le_bytes(rel)))
    })
}

/// The callee of a function that only sets up its frame (endbr64, register pushes, `mov
/// %rsp,%rbp`, `sub $imm8,%rsp`: none touches an argument register) before its first call.
fn pass_through_callee(code: &[u8], code_addr: u64) -> Option<u64> {
    let mut at = 0;
    for _ in 0..8 {
        at += match code.get(at..)? {
            [0xe8, ..] => return call_target(code, code_addr, at),
            [0xf3, 0x0f, 0x1e, 0xfa, ..] | [0x48, 0x83, 0xec, _, ..] => 4,
            [0x48, 0x89, 0xe5, ..] => 3,
            [0x41, 0x50..=0x57, ..] => 2,
            [0x50..=0x57, ..] => 1,
            _ => return None,
        };
    }
    None
}

/// Whether some call instruction in `code` goes to `target`.
fn calls(code: &[u8], code_addr: u64, target: u64) -> bool {
    (0..code.len()).any(|at| call_target(code, code_addr, at) == Some(target))
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

    /// `call rel32` from `at` to `target`.
    fn call(at: u64, target: u64) -> Vec<u8> {
        let rel = i32::try_from(target as i64 - (at as i64 + 5)).expect("near");
        [&[0xe8][..], &rel.to_le_bytes()].concat()
    }

    #[test]
    fn a_pass_through_wrapper_gives_its_callee() {
        // sub $0x8,%rsp; call (Debian's SSL_read_ex), the callee behind it
        let code = [&[0x48, 0x83, 0xec, 0x08][..], &call(0x1004, 0x900)].concat();
        assert_eq!(pass_through_callee(&code, 0x1000), Some(0x900));
        // endbr64; push %rbp; mov %rsp,%rbp; push %r15; call
        let code = [
            &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x41, 0x57][..],
            &call(0x200a, 0x3000),
        ]
        .concat();
        assert_eq!(pass_through_callee(&code, 0x2000), Some(0x3000));
    }

    #[test]
    fn a_wrapper_that_changes_anything_first_gives_nothing() {
        // mov %rsp,%rcx before the call: the callee's arguments are not the wrapper's
        let code = [&[0x48, 0x89, 0xe1][..], &call(0x1003, 0x900)].concat();
        assert_eq!(pass_through_callee(&code, 0x1000), None);
        // cut short inside the call
        assert_eq!(
            pass_through_callee(&[0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0], 0),
            None
        );
        // no call within eight frame instructions
        assert_eq!(pass_through_callee(&[0x55; 16], 0), None);
    }

    #[test]
    fn a_call_is_found_anywhere_in_the_code() {
        // Debian's SSL_read: sub; mov %fs:0x28,%rax; ...; call at +0x1e
        let mut code = vec![0x90; 0x1e];
        code.extend(call(0x101e, 0x800));
        code.extend([0x85, 0xc0]);
        assert!(calls(&code, 0x1000, 0x800));
        assert!(!calls(&code, 0x1000, 0x801));
    }

    #[test]
    fn only_register_pushes_count_as_emulated() {
        assert!(starts_with_emulated_push(&[0x55, 0x48]));
        assert!(starts_with_emulated_push(&[0x41, 0x55]));
        assert!(starts_with_emulated_push(&[0x53]));
        assert!(!starts_with_emulated_push(&[0x48, 0x83, 0xec, 0x18]));
        assert!(!starts_with_emulated_push(&[0xf3, 0x0f, 0x1e, 0xfa]));
        assert!(!starts_with_emulated_push(&[0x41, 0x58])); // pop %r8
        assert!(!starts_with_emulated_push(&[]));
    }
}
