//! Loads the embedded capture object and attaches each program to its syscall tracepoint.

use anyhow::{bail, Context, Result};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};
use seam_abi::names;

static CAPTURE_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// (program, tracepoint category, tracepoint name). Every program in the object is listed.
const ATTACH: &[(&str, &str, &str)] = &[
    ("enter_read", "syscalls", "sys_enter_read"),
    ("exit_read", "syscalls", "sys_exit_read"),
    ("enter_write", "syscalls", "sys_enter_write"),
    ("exit_write", "syscalls", "sys_exit_write"),
    ("enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("enter_sendto", "syscalls", "sys_enter_sendto"),
    ("exit_sendto", "syscalls", "sys_exit_sendto"),
    ("enter_readv", "syscalls", "sys_enter_readv"),
    ("exit_readv", "syscalls", "sys_exit_readv"),
    ("enter_writev", "syscalls", "sys_enter_writev"),
    ("exit_writev", "syscalls", "sys_exit_writev"),
    ("enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("enter_sendfile64", "syscalls", "sys_enter_sendfile64"),
    ("exit_sendfile64", "syscalls", "sys_exit_sendfile64"),
    ("enter_accept", "syscalls", "sys_enter_accept"),
    ("exit_accept", "syscalls", "sys_exit_accept"),
    ("enter_accept4", "syscalls", "sys_enter_accept4"),
    ("exit_accept4", "syscalls", "sys_exit_accept4"),
    ("enter_connect", "syscalls", "sys_enter_connect"),
    ("exit_connect", "syscalls", "sys_exit_connect"),
    ("enter_close", "syscalls", "sys_enter_close"),
    ("enter_dup2", "syscalls", "sys_enter_dup2"),
    ("enter_dup3", "syscalls", "sys_enter_dup3"),
    ("on_process_exit", "sched", "sched_process_exit"),
    ("on_process_exec", "sched", "sched_process_exec"),
];

/// (program, raw tracepoint name).
const ATTACH_RAW: &[(&str, &str)] = &[("on_process_fork", "sched_process_fork")];

#[derive(Debug, Clone)]
pub struct Settings {
    pub capture_bytes: u32,
    pub ringbuf_bytes: u32,
    pub wakeup_bytes: u64,
}

pub fn validate(capture_bytes: u32, ringbuf_bytes: u32) -> Result<()> {
    if capture_bytes == 0 || capture_bytes > seam_abi::MAX_CAPTURE {
        bail!(
            "capture bytes must be 1..={}, got {capture_bytes}",
            seam_abi::MAX_CAPTURE
        );
    }
    if ringbuf_bytes < 4096 || !ringbuf_bytes.is_power_of_two() {
        bail!("ring buffer size must be a power of two >= 4096, got {ringbuf_bytes}");
    }
    Ok(())
}

#[derive(Debug)]
pub struct Loaded {
    pub ebpf: Ebpf,
    pub attached: usize,
}

pub fn load(settings: &Settings) -> Result<Loaded> {
    let mut ebpf = EbpfLoader::new()
        // Task storage (the per-thread syscall slot) has no typed wrapper in aya 0.14; the
        // loader never touches it from user space.
        .allow_unsupported_maps()
        .map_max_entries(names::EVENTS, settings.ringbuf_bytes)
        .override_global(names::CAPTURE_BYTES, &settings.capture_bytes, true)
        .override_global(names::WAKEUP_BYTES, &settings.wakeup_bytes, true)
        .load(CAPTURE_OBJ)
        .context("loading the capture object (needs CAP_BPF and CAP_PERFMON)")?;
    let mut attached = 0;
    for &(prog, category, tp) in ATTACH {
        let program: &mut TracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the capture object"))?
            .try_into()
            .with_context(|| format!("program {prog} is not a tracepoint"))?;
        program
            .load()
            .with_context(|| format!("verifier rejected {prog}"))?;
        program.attach(category, tp).with_context(|| {
            format!("attaching {prog} to {category}/{tp} (is tracefs mounted and readable by this user?)")
        })?;
        attached += 1;
    }
    for &(prog, tp) in ATTACH_RAW {
        let program: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the capture object"))?
            .try_into()
            .with_context(|| format!("program {prog} is not a raw tracepoint"))?;
        program
            .load()
            .with_context(|| format!("verifier rejected {prog}"))?;
        program
            .attach(tp)
            .with_context(|| format!("attaching {prog} to raw tracepoint {tp}"))?;
        attached += 1;
    }
    let unlisted: Vec<&str> = ebpf
        .programs()
        .map(|(name, _)| name)
        .filter(|name| {
            !ATTACH.iter().any(|(p, _, _)| p == name) && !ATTACH_RAW.iter().any(|(p, _)| p == name)
        })
        .collect();
    if !unlisted.is_empty() {
        bail!("programs without an attach point: {unlisted:?}");
    }
    Ok(Loaded { ebpf, attached })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert!(validate(1024, 1 << 20).is_ok());
        assert!(validate(0, 1 << 20).is_err());
        assert!(validate(5000, 1 << 20).is_err());
        assert!(validate(1024, 3000).is_err());
        assert!(validate(1024, 3 << 20).is_err());
    }

    #[test]
    fn embedded_object_is_an_elf_with_every_listed_program() {
        assert_eq!(&CAPTURE_OBJ[..4], b"\x7fELF");
        let names = ATTACH
            .iter()
            .map(|(p, _, _)| p)
            .chain(ATTACH_RAW.iter().map(|(p, _)| p));
        for prog in names {
            let needle = prog.as_bytes();
            assert!(
                CAPTURE_OBJ.windows(needle.len()).any(|w| w == needle),
                "{prog} not in object"
            );
        }
    }
}
