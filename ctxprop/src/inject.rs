//! Header injection: loads the embedded propagation object and attaches it; the capture marks which sockets it may touch.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, MapData, PerCpuArray, Queue, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use seam_abi::{names, objects};
use seam_proto::sampling::KernelRule;

/// The loader's pins this object shares, by map name and pin file.
const SHARED: &[(&str, &str)] = &[
    (names::SERVING, "serving"),
    (names::PROP_ON, "prop_on"),
    (names::PROP_SOCK, "prop_sock"),
    (names::REMOTE_CTX, "remote_ctx"),
    (names::PROP_RULE, "prop_rule"),
    (names::TLS_OPTION, "tls_option"),
    (names::NODE_CHOICE, "node_choice"),
];

/// What the programs counted (indexes of `enum prop_counter`).
const COUNTER_NAMES: &[&str] = &[
    "sockets",
    "injected",
    "had_header",
    "opaque",
    "insert_failed",
    "released",
    "options_sent",
    "options_received",
];

pub struct Injector {
    ebpf: Ebpf,
    socks: SockHash<MapData, u64>,
    /// Cookies of the sockets the sk_msg program gave up on.
    given_up: Queue<MapData, u64>,
    /// Sockets taken out of the sockhash after the sk_msg program gave up on them.
    given_back: u64,
}

// By hand: aya's sockhash and queue handles have no Debug.
impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("ebpf", &self.ebpf)
            .field("given_back", &self.given_back)
            .finish_non_exhaustive()
    }
}

/// The cgroup v2 hierarchy's mount point, from this process's mount table.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    for line in table.lines() {
        // fields … mount-point … " - " fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount));
            }
        }
    }
    bail!("no cgroup2 hierarchy is mounted (sockops and connect hooks attach to one)")
}

impl Injector {
    /// Loads and attaches everything; the sk_msg program is on the sockhash before sockops can
    /// put a socket there, and the capture is told to keep serving contexts last.
    pub fn start(
        pin_dir: &Path,
        cgroup: &Path,
        pin_wait: Duration,
        carriers: u32,
        sampling: KernelRule,
    ) -> Result<Self> {
        let pins: Vec<PathBuf> = SHARED.iter().map(|(_, f)| pin_dir.join(f)).collect();
        if !seam_proto::lifecycle::wait_for_paths(&pins, pin_wait) {
            bail!(
                "the loader's shared maps never appeared in {} (is seam-loader running?)",
                pin_dir.display()
            );
        }
        let mut loader = EbpfLoader::new();
        for ((name, _), path) in SHARED.iter().zip(&pins) {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(names::CARRIERS, &carriers, true)
            .override_global(names::SAMPLE_THRESHOLD, &sampling.threshold, true)
            .override_global(
                names::SAMPLE_FOLLOW_PARENT,
                &u32::from(sampling.follow_parent),
                true,
            )
            .load(objects::CTXPROP)
            .context("loading the propagation object (needs CAP_BPF and CAP_NET_ADMIN)")?;

        // Owned, not borrowed from `ebpf`: the sweep takes sockets out of it for as long as it
        // runs.
        let socks: SockHash<MapData, u64> = ebpf
            .take_map(names::PROP_SOCKS)
            .context("sockhash missing from the propagation object")?
            .try_into()
            .context("the sockhash is not a SOCKHASH")?;
        let given_up: Queue<MapData, u64> = ebpf
            .take_map(names::PROP_GIVEN_UP)
            .context("given-up queue missing from the propagation object")?
            .try_into()
            .context("the given-up queue is not a QUEUE")?;
        let socks_fd = socks
            .fd()
            .try_clone()
            .context("duplicating the sockhash fd")?;
        let msg: &mut SkMsg = program(&mut ebpf, "on_msg")?;
        msg.load().context("verifier rejected on_msg")?;
        msg.attach(&socks_fd)
            .context("attaching on_msg to the sockhash")?;

        let cgroup_dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        // A bpf_link (flags 0): it coexists with other programs on the cgroup.
        let ops: &mut SockOps = program(&mut ebpf, "on_sockops")?;
        ops.load().context("verifier rejected on_sockops")?;
        ops.attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
            .with_context(|| format!("attaching on_sockops to {}", cgroup.display()))?;

        let mut injector = Injector {
            ebpf,
            socks,
            given_up,
            given_back: 0,
        };
        // The capture chooses TLS requests' contexts itself: it needs the same carriers and rule.
        injector.share_rule(seam_abi::PropRule {
            sample_threshold: sampling.threshold,
            follow_parent: u32::from(sampling.follow_parent),
            carriers,
        })?;
        injector.set_capture_serving(true)?;
        Ok(injector)
    }

    fn share_rule(&mut self, rule: seam_abi::PropRule) -> Result<()> {
        let mut map: Array<&mut MapData, [u8; 16]> = self
            .ebpf
            .map_mut(names::PROP_RULE)
            .context("shared rule missing")?
            .try_into()?;
        map.set(0, rule.to_bytes(), 0)
            .context("sharing the propagation rule with the capture")
    }

    /// Non-zero turns the capture's serving contexts on under a new epoch; zero turns them off.
    fn set_capture_serving(&mut self, on: bool) -> Result<()> {
        let mut flag: Array<&mut MapData, u32> = self
            .ebpf
            .map_mut(names::PROP_ON)
            .context("shared flag missing")?
            .try_into()?;
        let epoch = if on {
            let next = next_epoch(flag.get(&1, 0).unwrap_or(0));
            flag.set(1, next, 0).context("recording the epoch")?;
            next
        } else {
            0
        };
        flag.set(0, epoch, 0)
            .context("telling the capture to keep serving contexts")?;
        Ok(())
    }

    /// Takes the sockets the sk_msg program gave up on out of the sockhash, so that their sends
    /// go the normal way; returns how many left. A socket already gone (closed, or out on leaving
    /// ESTABLISHED) is skipped: the key is its cookie, which no later socket has.
    pub fn give_back_given_up(&mut self) -> u64 {
        let mut taken = 0;
        while let Ok(cookie) = self.given_up.pop(0) {
            if self.socks.remove(&cookie).is_ok() {
                taken += 1;
            }
        }
        self.given_back += taken;
        taken
    }

    /// Each counter summed over CPUs, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let Some(map) = self.ebpf.map(names::PROP_COUNTERS) else {
            return Vec::new();
        };
        let Ok(per_cpu) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return Vec::new();
        };
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = u32::try_from(i)
                    .ok()
                    .and_then(|i| per_cpu.get(&i, 0).ok())
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .chain([("given_back", self.given_back)])
            .collect()
    }

    /// The capture stops keeping serving contexts; dropping the object then detaches every
    /// program and frees the sockhash, which gives each socket its normal TCP operations back.
    pub fn stop(mut self) {
        if let Err(e) = self.set_capture_serving(false) {
            tracing::warn!(error = %format!("{e:#}"), "could not clear the shared flag");
        }
        drop(self);
    }
}

/// The epoch after `last`, never zero (zero means "off").
fn next_epoch(last: u32) -> u32 {
    last.wrapping_add(1).max(1)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the propagation object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_gets_a_fresh_non_zero_epoch() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(u32::MAX), 1);
    }
}
