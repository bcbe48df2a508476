//! Loads the embedded capture object and attaches each socket and sched program (the TLS uprobes attach per file, in `tls`).

use anyhow::{bail, Context, Result};
use aya::programs::links::FdLink;
use aya::programs::{BtfTracePoint, ProgramError, RawTracePoint};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, MapInfo};
use aya::{Btf, BtfError, Ebpf, EbpfLoader};
use seam_abi::names;

static CAPTURE_OBJ: &[u8] = seam_abi::objects::CAPTURE;

/// (program, raw tracepoint name): the sched hooks. Raw tracepoints need neither perf_event_open
/// (which some distribution kernels keep to CAP_SYS_ADMIN at perf_event_paranoid 3) nor tracefs.
const ATTACH_RAW: &[(&str, &str)] = &[
    ("on_process_fork", "sched_process_fork"),
    ("on_process_exit", "sched_process_exit"),
    ("on_process_exec", "sched_process_exec"),
];

/// (program, BTF tracepoint name): the socket-layer hooks that see the traffic.
const ATTACH_BTF: &[(&str, &str)] = &[
    ("on_send", "sock_send_length"),
    ("on_recv", "sock_recv_length"),
    ("on_state", "inet_sock_set_state"),
];

/// (program, BTF tracepoint name): where a send begins, the first the kernel has. Outgoing
/// messages start there; without either they start when the send returns, which on loopback can
/// be after the peer read them.
const SEND_BEGIN: &[(&str, &str)] = &[
    ("on_send_begin", "tcp_sendmsg_locked"),
    ("on_xmit", "net_dev_queue"),
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
    /// Pin files of the attached links: capture goes on from them while no loader runs; removing
    /// them (a clean stop) detaches the programs.
    pub links: Vec<PathBuf>,
    /// Links a loader that died without cleaning up had left pinned, taken down for ours.
    pub replaced_links: usize,
    /// The maps are a previous loader's, taken over from their pins.
    pub reused_pins: bool,
    /// The tracepoint that marks where sends begin, if the kernel has one of `SEND_BEGIN`.
    pub send_begin: Option<&'static str>,
}

fn open_object(settings: &Settings, reuse: &[(&'static str, PathBuf)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        // Task storage (a thread's TLS call in progress) has no typed wrapper in aya 0.14; user
        // space never touches it, it only hands its fd to the uprobe programs' object.
        .allow_unsupported_maps()
        .map_max_entries(names::EVENTS, settings.ringbuf_bytes)
        .override_global(names::CAPTURE_BYTES, &settings.capture_bytes, true)
        .override_global(names::WAKEUP_BYTES, &settings.wakeup_bytes, true);
    for (name, path) in reuse {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .load(CAPTURE_OBJ)
        .context("loading the capture object (needs CAP_BPF and CAP_PERFMON)")
}

/// Whether a pinned map is the one this build would create (same shape), so it can be taken over.
fn same_shape(ebpf: &Ebpf, name: &str, pin: &Path) -> bool {
    let (Some(Ok(ours)), Ok(pinned)) = (
        ebpf.map(name)
            .and_then(crate::uprobe_multi::map_data)
            .map(|m| m.info()),
        MapInfo::from_pin(pin),
    ) else {
        return false;
    };
    ours.map_type().ok() == pinned.map_type().ok()
        && ours.key_size() == pinned.key_size()
        && ours.value_size() == pinned.value_size()
        && ours.max_entries() == pinned.max_entries()
        && ours.map_flags() == pinned.map_flags()
}

/// Loads the capture object. Pins a loader that died without cleaning up left behind are taken
/// over when every one matches this build, so the correlator and ctxprop, which hold those maps
/// open, carry on without noticing; otherwise the object gets new maps.
pub fn load(settings: &Settings, pin_dir: &Path) -> Result<Loaded> {
    let fresh = open_object(settings, &[])?;
    let pinned: Vec<(&'static str, PathBuf)> = crate::bpffs::PINS
        .iter()
        .map(|&(map, file, _)| (map, pin_dir.join(file)))
        .collect();
    let reusable = pinned
        .iter()
        .all(|(map, path)| same_shape(&fresh, map, path));
    let mut ebpf = if reusable {
        drop(fresh);
        tracing::info!(pin_dir = %pin_dir.display(), "taking over the maps a previous loader left pinned");
        open_object(settings, &pinned)?
    } else {
        fresh
    };
    // Before anything is attached or pinned: a refused object leaves nothing behind.
    let unlisted: Vec<&str> = ebpf
        .programs()
        .map(|(name, _)| name)
        .filter(|name| {
            !all_programs().any(|p| p == *name)
                && !crate::tls::PROGRAMS.contains(name)
                && !crate::node::PROGRAMS.contains(name)
        })
        .collect();
    if !unlisted.is_empty() {
        bail!("programs without an attach point: {unlisted:?}");
    }
    seed_connection_ids(&mut ebpf)?;
    let send_begin = load_programs(&mut ebpf)?;
    // The predecessor's links go only now, when the new programs are verified: capture is blind
    // just for the few milliseconds the attaches below take.
    let replaced = unpin_links(pin_dir);
    let links = attach_and_pin(&mut ebpf, pin_dir, send_begin)?;
    Ok(Loaded {
        ebpf,
        attached: links.len(),
        links,
        replaced_links: replaced,
        reused_pins: reusable,
        send_begin: send_begin.map(|(_, tp)| tp),
    })
}

/// Connection ids start past any a previous loader gave out (the boot clock in nanoseconds runs
/// ahead of any count of connections), so a correlator that outlives a loader never confuses a new
/// connection with one it still tracks.
fn seed_connection_ids(ebpf: &mut Ebpf) -> Result<()> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .context("reading the boot clock")?;
    let mut seq: Array<&mut MapData, u64> = Array::try_from(
        ebpf.map_mut(names::CONN_SEQ)
            .context("connection sequence map missing")?,
    )?;
    seq.set(0, now, 0).context("seeding connection ids")?;
    Ok(())
}

fn link_pin(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join(format!("link_{prog}"))
}

fn all_programs() -> impl Iterator<Item = &'static str> {
    ATTACH_RAW
        .iter()
        .map(|(p, _)| *p)
        .chain(ATTACH_BTF.iter().chain(SEND_BEGIN).map(|(p, _)| *p))
}

/// Verifies every program, attaching none yet; returns the send-begin hook this kernel has.
fn load_programs(ebpf: &mut Ebpf) -> Result<Option<(&'static str, &'static str)>> {
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    for &(prog, tp) in ATTACH_BTF {
        let program: &mut BtfTracePoint = program_of(ebpf, prog)?;
        program.load(tp, &btf).with_context(|| {
            format!("verifier rejected {prog} (the kernel needs the {tp} tracepoint, Linux 6.4+)")
        })?;
    }
    let mut send_begin = None;
    for &(prog, tp) in SEND_BEGIN {
        let program: &mut BtfTracePoint = program_of(ebpf, prog)?;
        match program.load(tp, &btf) {
            Ok(()) => {
                send_begin = Some((prog, tp));
                break;
            }
            // An older kernel without this tracepoint: the next one may do.
            Err(ProgramError::Btf(BtfError::UnknownBtfTypeName { .. })) => continue,
            Err(e) => return Err(e).with_context(|| format!("verifier rejected {prog}")),
        }
    }
    for &(prog, _) in ATTACH_RAW {
        let program: &mut RawTracePoint = program_of(ebpf, prog)?;
        program
            .load()
            .with_context(|| format!("verifier rejected {prog}"))?;
    }
    Ok(send_begin)
}

fn program_of<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the capture object"))?;
    program
        .try_into()
        .map_err(|_| anyhow::anyhow!("program {prog} has an unexpected type"))
}

/// Removes link pins a previous loader left; each link detaches with its last reference.
fn unpin_links(pin_dir: &Path) -> usize {
    all_programs()
        .filter(|prog| std::fs::remove_file(link_pin(pin_dir, prog)).is_ok())
        .count()
}

/// Attaches every program and pins its link, so the programs outlive this process.
fn attach_and_pin(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    send_begin: Option<(&'static str, &'static str)>,
) -> Result<Vec<PathBuf>> {
    let mut pinned = Vec::new();
    let mut keep = |link: FdLink, prog: &str| -> Result<()> {
        let path = link_pin(pin_dir, prog);
        link.pin(&path)
            .with_context(|| format!("pinning the {prog} link at {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        pinned.push(path);
        Ok(())
    };
    for &(prog, tp) in ATTACH_BTF.iter().chain(send_begin.as_ref()) {
        let program: &mut BtfTracePoint = program_of(ebpf, prog)?;
        let id = program
            .attach()
            .with_context(|| format!("attaching {prog} to {tp}"))?;
        keep(FdLink::from(program.take_link(id)?), prog)?;
    }
    for &(prog, tp) in ATTACH_RAW {
        let program: &mut RawTracePoint = program_of(ebpf, prog)?;
        let id = program
            .attach(tp)
            .with_context(|| format!("attaching {prog} to raw tracepoint {tp}"))?;
        keep(FdLink::from(program.take_link(id)?), prog)?;
    }
    Ok(pinned)
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
        let names = all_programs().chain(crate::tls::PROGRAMS.iter().copied());
        for prog in names {
            let needle = prog.as_bytes();
            assert!(
                CAPTURE_OBJ.windows(needle.len()).any(|w| w == needle),
                "{prog} not in object"
            );
        }
    }
}
