//! The role table: each daemon's user, capabilities, socket and the peers it may accept.

use std::path::PathBuf;

use caps::Capability;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Discover,
    Loader,
    Ctxprop,
    Correlator,
    Exporter,
}

/// Group shared by all seam daemons; pins and sockets are readable by it and nobody else.
pub const SEAM_GROUP: &str = "seam";

/// Default directory of the daemons' sockets (overridable with `SEAM_RUN_DIR` for tests).
pub const DEFAULT_RUN_DIR: &str = "/run/seam";

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/seam";

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Discover,
        Role::Loader,
        Role::Ctxprop,
        Role::Correlator,
        Role::Exporter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Discover => "discover",
            Role::Loader => "loader",
            Role::Ctxprop => "ctxprop",
            Role::Correlator => "correlator",
            Role::Exporter => "exporter",
        }
    }

    /// The system user the daemon runs as.
    pub fn user(self) -> &'static str {
        match self {
            Role::Discover => "seam-discover",
            Role::Loader => "seam-loader",
            Role::Ctxprop => "seam-ctxprop",
            Role::Correlator => "seam",
            Role::Exporter => "seam-exporter",
        }
    }

    /// The capabilities the daemon needs and keeps; everything else is dropped at start.
    pub fn capabilities(self) -> &'static [Capability] {
        match self {
            // Reading other users' /proc/<pid>/environ and fd links needs both of these.
            Role::Discover => &[Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH],
            Role::Loader => &[Capability::CAP_BPF, Capability::CAP_PERFMON],
            Role::Ctxprop => &[Capability::CAP_BPF, Capability::CAP_NET_ADMIN],
            Role::Correlator => &[],
            Role::Exporter => &[],
        }
    }

    /// Which roles may connect to this daemon's socket; a daemon with no socket accepts none.
    pub fn accepts_from(self) -> &'static [Role] {
        match self {
            Role::Discover => &[],
            Role::Loader => &[Role::Discover],
            Role::Ctxprop => &[Role::Discover],
            Role::Correlator => &[Role::Discover],
            Role::Exporter => &[Role::Correlator],
        }
    }

    pub fn socket_path(self) -> PathBuf {
        run_dir().join(format!("{}.sock", self.name()))
    }
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("SEAM_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

pub fn pin_dir() -> PathBuf {
    std::env::var_os("SEAM_PIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR))
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loader_and_ctxprop_hold_kernel_privileges() {
        for r in Role::ALL {
            let caps = r.capabilities();
            let has_bpf = caps.contains(&Capability::CAP_BPF);
            let has_net = caps.contains(&Capability::CAP_NET_ADMIN);
            assert_eq!(has_bpf, r == Role::Loader || r == Role::Ctxprop, "{r}");
            assert_eq!(has_net, r == Role::Ctxprop, "{r}");
            assert!(!caps.contains(&Capability::CAP_SYS_ADMIN), "{r}");
        }
        assert!(Role::Correlator.capabilities().is_empty());
        assert!(Role::Exporter.capabilities().is_empty());
    }

    #[test]
    fn no_role_accepts_itself_and_exporter_only_hears_correlator() {
        for r in Role::ALL {
            assert!(!r.accepts_from().contains(&r));
        }
        assert_eq!(Role::Exporter.accepts_from(), &[Role::Correlator]);
    }
}

/// The launcher script and the systemd units restate the role table; these tests keep them honest.
#[cfg(test)]
mod deployment_tests {
    use super::*;

    fn repo_file(rel: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn short(cap: &Capability) -> String {
        cap.to_string().trim_start_matches("CAP_").to_lowercase()
    }

    #[test]
    fn launch_script_matches_role_table() {
        let script = repo_file("scripts/launch");
        for role in Role::ALL {
            let line = script
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{})", role.name())))
                .unwrap_or_else(|| panic!("no launch entry for {role}"));
            assert!(line.contains(&format!("user={};", role.user())), "{line}");
            let caps: Vec<String> = role.capabilities().iter().map(short).collect();
            assert!(
                line.contains(&format!("caps={} ", caps.join(","))),
                "{line}"
            );
        }
    }

    /// Every daemon's unit carries the whole hardening set; only the exporter may reach IP.
    #[test]
    fn systemd_units_are_hardened() {
        const EVERY_UNIT: &[&str] = &[
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectClock=yes",
            "LockPersonality=yes",
            "MemoryDenyWriteExecute=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "RestrictNamespaces=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "UMask=0077",
            "Restart=on-failure",
            "PartOf=seam.target",
        ];
        for role in Role::ALL {
            let unit = repo_file(&format!("systemd/seam-{}.service", role.name()));
            let lines: Vec<&str> = unit.lines().collect();
            for want in EVERY_UNIT {
                assert!(lines.contains(want), "{role}: missing {want}");
            }
            let families = lines
                .iter()
                .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
                .unwrap_or_else(|| panic!("{role}: no RestrictAddressFamilies"));
            let families: Vec<&str> = families.split_whitespace().collect();
            assert!(families.contains(&"AF_UNIX"), "{role}");
            let ip = families.iter().any(|f| f.starts_with("AF_INET"));
            assert_eq!(ip, role == Role::Exporter, "{role}: {families:?}");
            assert_eq!(
                lines.contains(&"IPAddressDeny=any"),
                role != Role::Exporter,
                "{role}"
            );
            // In a user namespace a peer's SO_PEERCRED uid reads as nobody: every peer check fails.
            assert!(!lines.contains(&"PrivateUsers=yes"), "{role}: PrivateUsers");
            // Daemons must not pull each other down: only the target and host setup bind them.
            for l in &lines {
                if let Some(deps) = l
                    .strip_prefix("Requires=")
                    .or_else(|| l.strip_prefix("BindsTo="))
                {
                    assert_eq!(deps, "seam-host.service", "{role}: {l}");
                }
            }
        }
    }

    /// The README's daemon table states each role's user and capabilities as the code has them.
    #[test]
    fn readme_daemon_table_matches_role_table() {
        let readme = repo_file("README.md");
        for role in Role::ALL {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `seam-{}` |", role.name())))
                .unwrap_or_else(|| panic!("README has no table row for {role}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[2], format!("`{}`", role.user()), "{row}");
            let named: Vec<String> = cells[3]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("CAP_"))
                .map(str::to_string)
                .collect();
            let want: Vec<String> = role.capabilities().iter().map(|c| c.to_string()).collect();
            assert_eq!(named, want, "{row}");
            if want.is_empty() {
                assert!(cells[3].starts_with("none"), "{row}");
            }
        }
    }

    #[test]
    fn systemd_units_match_role_table() {
        for role in Role::ALL {
            let unit = repo_file(&format!("systemd/seam-{}.service", role.name()));
            assert!(
                unit.contains(&format!("\nUser={}\n", role.user())),
                "{role}"
            );
            let caps: Vec<String> = role.capabilities().iter().map(|c| c.to_string()).collect();
            for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
                let want = format!("\n{key}={}\n", caps.join(" "));
                assert!(unit.contains(&want), "{role}: want {want:?}");
            }
        }
    }
}
