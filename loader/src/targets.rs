//! The pinned set of instrumented pids, changed only by typed requests from discover.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use aya::Ebpf;
use seam_abi::names;
use seam_proto::{ipc, msg::Propagation, selfstats, Role};

#[derive(Debug)]
pub struct Targets {
    map: HashMap<MapData, u32, u32>,
    seam_uids: HashSet<u32>,
}

impl Targets {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(names::TARGETS)
            .context("targets map missing")?;
        let mut map: HashMap<MapData, u32, u32> =
            HashMap::try_from(map).context("targets map has the wrong type")?;
        // A map taken over from a previous loader keeps its targets (capture went on through the
        // pinned links), less pids that exited while no loader ran; discover sends every
        // current target again when it reconnects.
        let gone: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            let _ = map.remove(&pid);
        }
        let seam_uids = Role::ALL.iter().filter_map(|&r| ipc::uid_of(r)).collect();
        Ok(Self { map, seam_uids })
    }

    pub fn add(&mut self, pid: u32, propagation: Option<Propagation>) {
        match self.refusal(pid) {
            Some(why) => {
                selfstats::counter("targets_refused").add(1);
                tracing::warn!(pid, reason = why, "target refused")
            }
            None => match self.map.insert(
                pid,
                // A target sent again (discover reconnected) keeps what the capture learned.
                seam_abi::target_value(propagation.map(|p| p.carriers()))
                    | self
                        .map
                        .get(&pid, 0)
                        .map_or(0, |v| v & seam_abi::TARGET_NODE),
                0,
            ) {
                Ok(()) => tracing::info!(pid, ?propagation, "target added"),
                Err(e) => tracing::warn!(pid, error = %e, "target map full or failing"),
            },
        }
    }

    pub fn remove(&mut self, pid: u32) {
        if self.map.remove(&pid).is_ok() {
            tracing::info!(pid, "target removed");
        }
    }

    pub fn len(&self) -> usize {
        self.map.keys().count()
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.map.get(&pid, 0).is_ok()
    }

    /// Re-derives from /proc what discover claimed: the pid exists and is not one of seam's own.
    fn refusal(&self, pid: u32) -> Option<&'static str> {
        if pid == 0 || pid == std::process::id() {
            return Some("seam's own process");
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return Some("no such process");
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        match uid {
            None => Some("unreadable process status"),
            Some(u) if self.seam_uids.contains(&u) => Some("runs as a seam daemon user"),
            Some(_) => None,
        }
    }
}
