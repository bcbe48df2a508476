//! Loads the embedded capture object and attaches each socket and sched program (the TLS uprobes attach per file, in `tls`).

use anyhow::{bail, Context, Result};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use seam_abi::names;

static CAPTURE_OBJ: &[u8] = seam_abi::objects::CAPTURE;

/// (program, tracepoint category, tracepoint name).
const ATTACH: &[(&str, &str, &str)] = &[
    ("on_process_exit", "sched", "sched_process_exit"),
    ("on_process_exec", "sched", "sched_process_exec"),
];

/// (program, raw tracepoint name).
const ATTACH_RAW: &[(&str, &str)] = &[("on_process_fork", "sched_process_fork")];

/// (program, BTF tracepoint name): the socket-layer hooks that see the traffic.
const ATTACH_BTF: &[(&str, &str)] = &[
    ("on_send", "sock_send_length"),
    ("on_recv", "sock_recv_length"),
    ("on_state", "inet_sock_set_state"),
];

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
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    for &(prog, tp) in ATTACH_BTF {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the capture object"))?
            .try_into()
            .with_context(|| format!("program {prog} is not a BTF tracepoint"))?;
        program.load(tp, &btf).with_context(|| {
            format!("verifier rejected {prog} (the kernel needs the {tp} tracepoint, Linux 6.4+)")
        })?;
        program
            .attach()
            .with_context(|| format!("attaching {prog} to {tp}"))?;
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
            !ATTACH.iter().any(|(p, _, _)| p == name)
                && !ATTACH_RAW.iter().any(|(p, _)| p == name)
                && !ATTACH_BTF.iter().any(|(p, _)| p == name)
                && !crate::tls::PROGRAMS.contains(name)
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
            .chain(ATTACH_RAW.iter().map(|(p, _)| p))
            .chain(ATTACH_BTF.iter().map(|(p, _)| p))
            .chain(crate::tls::PROGRAMS.iter());
        for prog in names {
            let needle = prog.as_bytes();
            assert!(
                CAPTURE_OBJ.windows(needle.len()).any(|w| w == needle),
                "{prog} not in object"
            );
        }
    }
}
