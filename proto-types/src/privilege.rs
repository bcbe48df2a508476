//! Drops every capability outside a role's declared set, and refuses to start without that set.

use std::collections::HashSet;

use caps::{CapSet, Capability};

use crate::Role;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "{role} needs {cap} but was started without it (grant it, e.g. AmbientCapabilities={cap})"
    )]
    Missing { role: Role, cap: Capability },
    #[error("cannot change capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Keeps exactly `role.capabilities()` (effective and permitted), clears ambient and inheritable
/// so children get nothing, trims the bounding set where allowed, and sets no_new_privs.
pub fn enter_least_privilege(role: Role) -> Result<Vec<Capability>, PrivilegeError> {
    let keep: HashSet<Capability> = role.capabilities().iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted)?;
    if let Some(&cap) = role.capabilities().iter().find(|c| !permitted.contains(c)) {
        return Err(PrivilegeError::Missing { role, cap });
    }
    // Trimming the bounding set needs CAP_SETPCAP; a launcher like setpriv or systemd has
    // usually trimmed it already, so failing here is not an error.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    // capset only when something changes: a unit's syscall filter may allow it only where the
    // daemon holds capabilities (systemd already gave a capability-free daemon empty sets).
    if !caps::read(None, CapSet::Inheritable)?.is_empty() {
        caps::clear(None, CapSet::Inheritable)?;
    }
    if caps::read(None, CapSet::Effective)? != keep {
        caps::set(None, CapSet::Effective, &keep)?;
    }
    if caps::read(None, CapSet::Permitted)? != keep {
        caps::set(None, CapSet::Permitted, &keep)?;
    }
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// Logs the outcome as one line; the caller exits non-zero on error.
pub fn enter_and_log(role: Role) -> Result<(), PrivilegeError> {
    let kept = enter_least_privilege(role)?;
    let names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    tracing::info!(
        role = %role,
        uid = nix::unistd::getuid().as_raw(),
        capabilities = %if names.is_empty() { "none".to_string() } else { names.join(",") },
        "dropped to least privilege"
    );
    Ok(())
}
