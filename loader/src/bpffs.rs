//! The loader's pin directory on bpffs: mounted if needed, pins group-readable by `seam` only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::Ebpf;
use seam_abi::names;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What is pinned, and with which mode: the ring buffer must be opened read-write to be consumed.
pub const PINS: &[(&str, &str, u32)] = &[
    (names::EVENTS, "events", 0o660),
    (names::COUNTERS, "counters", 0o640),
    (names::TARGETS, "targets", 0o600),
    // shared with ctxprop (group seam), which injects from and reports into them
    (names::SERVING, "serving", 0o660),
    (names::PROP_ON, "prop_on", 0o660),
    (names::PROP_SOCK, "prop_sock", 0o660),
    (names::REMOTE_CTX, "remote_ctx", 0o660),
    (names::PROP_RULE, "prop_rule", 0o660),
    (names::TLS_OPTION, "tls_option", 0o660),
    (names::NODE_CHOICE, "node_choice", 0o660),
];

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs on the pin directory's parent when it is not there and this process may mount.
pub fn ensure_mounted(pin_dir: &Path) -> Result<()> {
    let root = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    if is_bpffs(root) {
        return Ok(());
    }
    let can_mount = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false);
    if !can_mount {
        bail!(
            "bpffs is not mounted at {} and the loader may not mount it (run: mount -t bpf bpf {})",
            root.display(),
            root.display()
        );
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0711"),
    )
    .with_context(|| format!("mounting bpffs at {}", root.display()))?;
    tracing::info!(path = %root.display(), "mounted bpffs");
    Ok(())
}

#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    /// Pinned links: removed first on a clean stop, which detaches the programs.
    links: Vec<PathBuf>,
}

impl Pins {
    pub fn create(dir: &Path, ebpf: &mut Ebpf) -> Result<Self> {
        if !dir.exists() {
            std::fs::create_dir(dir)
                .with_context(|| format!("creating pin directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        let mut pins = Pins {
            dir: dir.to_path_buf(),
            paths: Vec::new(),
            links: Vec::new(),
        };
        for &(map, file, mode) in PINS {
            let path = dir.join(file);
            // A pin left by a crashed loader would keep its maps alive and refuse the new pin.
            let _ = std::fs::remove_file(&path);
            ebpf.map(map)
                .with_context(|| format!("map {map} missing from the capture object"))?
                .pin(&path)
                .with_context(|| format!("pinning {map} at {}", path.display()))?;
            pins.paths.push(path.clone());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
        }
        Ok(pins)
    }

    pub fn add_links(&mut self, links: Vec<PathBuf>) {
        self.links.extend(links);
    }

    pub fn remove(&self) {
        for p in self.links.iter().chain(&self.paths) {
            if let Err(e) = std::fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove pin");
            }
        }
        // Leaves the directory when someone else put files in it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
