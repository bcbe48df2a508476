//! The systemd unit set as a reviewer checks it: exposure scores within bounds and recorded in the
//! README, and an installed tree that `systemd-analyze verify` finds clean.

use std::collections::BTreeMap;
use std::process::Command;

use seam_tests::{bin_dir, repo_root, ROLES};

/// The highest exposure each unit may have: capability-free daemons (and discover, whose two
/// capabilities only read) must stay "OK"; the two that hold kernel privileges get more room.
fn exposure_bound(role: &str) -> f64 {
    match role {
        "loader" | "ctxprop" => 5.0,
        _ => 2.5,
    }
}

fn measured_exposure() -> BTreeMap<&'static str, f64> {
    let mut scores = BTreeMap::new();
    for role in ROLES {
        let unit = repo_root().join(format!("systemd/seam-{role}.service"));
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze is installed (scripts/test installs systemd)");
        let text = String::from_utf8_lossy(&out.stdout);
        let score = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no overall exposure for {role}: {text}"));
        scores.insert(role, score);
    }
    scores
}

#[test]
fn unit_exposure_stays_within_bounds_and_the_readme_records_it() {
    let scores = measured_exposure();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    for (role, score) in &scores {
        assert!(
            *score <= exposure_bound(role),
            "seam-{role}.service exposure {score} is above {}",
            exposure_bound(role)
        );
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `seam-{role}.service` |")))
            .unwrap_or_else(|| panic!("README's security model has no row for seam-{role}"));
        let recorded = row
            .split('|')
            .map(str::trim)
            .rfind(|c| !c.is_empty())
            .and_then(|c| c.parse::<f64>().ok());
        assert_eq!(recorded, Some(*score), "README row out of date: {row}");
    }
    eprintln!("exposure: {scores:?}");
}

#[test]
fn installed_units_verify_clean() {
    let dir = std::env::temp_dir().join(format!("seam-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let root = InstallRoot(dir);
    let status = Command::new(repo_root().join("scripts/install"))
        .arg("--root")
        .arg(root.path())
        .env("SEAM_BIN_DIR", bin_dir())
        .status()
        .expect("scripts/install");
    assert!(status.success());
    for role in ROLES {
        let bin = root.path().join(format!("usr/local/bin/seam-{role}"));
        assert!(bin.is_file(), "{} not installed", bin.display());
    }
    // verify resolves the units' dependencies (sysinit.target, ...) inside --root.
    let units = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&units).expect("mkdir");
    let copied = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&units)
        .status()
        .expect("cp");
    assert!(copied.success());
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .current_dir(root.path())
        .arg("etc/systemd/system/seam.target")
        .arg("etc/systemd/system/seam-host.service");
    for role in ROLES {
        verify.arg(format!("etc/systemd/system/seam-{role}.service"));
    }
    let out = verify.output().expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let removed = Command::new(repo_root().join("scripts/uninstall"))
        .arg("--root")
        .arg(root.path())
        .status()
        .expect("scripts/uninstall");
    assert!(removed.success());
    for role in ROLES {
        assert!(!root
            .path()
            .join(format!("etc/systemd/system/seam-{role}.service"))
            .exists());
    }
}

/// A scratch filesystem root, removed when the test ends either way.
struct InstallRoot(std::path::PathBuf);

impl InstallRoot {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for InstallRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
