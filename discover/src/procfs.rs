//! Reads what discover needs from /proc: executables, start times, environments, listening sockets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn list_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn exe(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()
}

/// Start time in clock ticks since boot (field 22 of stat); tells a reused pid from the old one.
pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn real_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn environ(proc_root: &Path, pid: u32) -> Vec<(String, String)> {
    let Ok(raw) = std::fs::read(proc_root.join(pid.to_string()).join("environ")) else {
        return Vec::new();
    };
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Socket inode → local port for every TCP socket in LISTEN state (IPv4 and IPv6).
pub fn listening_sockets(proc_root: &Path) -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for file in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc_root.join(file)) {
            out.extend(parse_listeners(&text));
        }
    }
    out
}

pub fn parse_listeners(text: &str) -> impl Iterator<Item = (u64, u16)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            return None;
        }
        let port = u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()?;
        let inode = f[9].parse().ok()?;
        Some((inode, port))
    })
}

/// Inodes of the sockets a process holds open.
pub fn socket_inodes(proc_root: &Path, pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

pub fn host_name(proc_root: &Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_parsed_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0\n";
        let l: Vec<(u64, u16)> = parse_listeners(text).collect();
        assert_eq!(l, vec![(12345, 8080)]);
    }

    #[test]
    fn own_process_is_readable() {
        let root = Path::new("/proc");
        let me = std::process::id();
        assert!(list_pids(root).contains(&me));
        assert!(exe(root, me).is_some());
        assert!(start_time(root, me).is_some());
        assert!(real_uid(root, me).is_some());
    }
}
