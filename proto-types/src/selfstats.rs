//! A daemon's own counters, published as a file in the run directory for `seam-status` and the exporter.
//!
//! Each daemon writes `<run dir>/<role>.stats` once a second (and when it stops): a header of
//! `pid`, `started_ms`, `updated_ms`, then one `counter NAME VALUE` or `gauge NAME VALUE` line per
//! metric. The file is replaced by rename, so a reader never sees half of it, and readers check
//! that its owner is the role's user before believing it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Role;

/// How often a daemon rewrites its stats file; a file older than `STALE_AFTER` is a daemon that
/// stopped publishing.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up while the daemon runs.
    Counter,
    /// A current level (queue depth, number of targets).
    Gauge,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric of this process; handles are `'static` so hot paths keep them instead of looking up.
#[derive(Debug)]
pub struct Metric {
    value: AtomicU64,
}

impl Metric {
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` off a gauge, stopping at zero.
    pub fn sub(&self, n: u64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    pub fn set(&self, n: u64) {
        self.value.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Registry {
    started_ms: u64,
    metrics: Mutex<Vec<(&'static str, Kind, &'static Metric)>>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();
static PUBLISHED_AS: OnceLock<Role> = OnceLock::new();

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        started_ms: unix_ms(SystemTime::now()),
        metrics: Mutex::new(Vec::new()),
    })
}

fn metric(name: &'static str, kind: Kind) -> &'static Metric {
    let mut metrics = registry().metrics.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, k, m)) = metrics.iter().find(|(n, _, _)| *n == name) {
        debug_assert_eq!(*k, kind, "{name} registered as both kinds");
        return m;
    }
    // Bounded: the set of names is fixed in the code.
    let m: &'static Metric = Box::leak(Box::new(Metric {
        value: AtomicU64::new(0),
    }));
    metrics.push((name, kind, m));
    m
}

/// The counter `name` of this process (created at zero on first use).
pub fn counter(name: &'static str) -> &'static Metric {
    metric(name, Kind::Counter)
}

/// Counters that only move on rare events, listed at start so readers see them at zero.
pub fn declare_counters(names: &[&'static str]) {
    for name in names {
        counter(name);
    }
}

/// The gauge `name` of this process (created at zero on first use).
pub fn gauge(name: &'static str) -> &'static Metric {
    metric(name, Kind::Gauge)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn stats_path(run_dir: &Path, role: Role) -> PathBuf {
    run_dir.join(format!("{}.stats", role.name()))
}

fn render(reg: &Registry) -> String {
    let mut text = format!(
        "pid {}\nstarted_ms {}\nupdated_ms {}\n",
        std::process::id(),
        reg.started_ms,
        unix_ms(SystemTime::now())
    );
    let metrics = reg.metrics.lock().unwrap_or_else(|p| p.into_inner());
    for (name, kind, m) in metrics.iter() {
        text.push_str(&format!("{} {name} {}\n", kind.word(), m.get()));
    }
    text
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("stats.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// Names this process as `role` and starts rewriting its stats file every `PUBLISH_EVERY` from a
/// thread of its own (so a stuck runtime shows as a stale file, not as fresh zeros).
pub fn publish(role: Role, run_dir: &Path) {
    if PUBLISHED_AS.set(role).is_err() {
        return;
    }
    let reg = registry();
    let path = stats_path(run_dir, role);
    let spawned = std::thread::Builder::new()
        .name("seam-stats".into())
        .spawn(move || {
            let mut warned = false;
            loop {
                if let Err(e) = write_file(&path, &render(reg)) {
                    if !warned {
                        tracing::warn!(path = %path.display(), error = %e, "cannot publish own counters");
                        warned = true;
                    }
                }
                std::thread::sleep(PUBLISH_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for own counters");
    }
}

/// Writes the stats file once more, for a daemon that is stopping.
pub fn publish_now(run_dir: &Path) {
    if let Some(role) = PUBLISHED_AS.get() {
        let _ = write_file(&stats_path(run_dir, *role), &render(registry()));
    }
}

/// What a daemon last published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub metrics: Vec<(String, Kind, u64)>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// How long ago it was published.
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.updated_ms))
    }

    /// How long the daemon had been running when it published.
    pub fn uptime(&self) -> Duration {
        Duration::from_millis(self.updated_ms.saturating_sub(self.started_ms))
    }

    /// Published recently by a process that is still there.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.age(now) <= STALE_AFTER && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{0}: not published (is the daemon running?)")]
    Missing(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is owned by uid {owner}, not by {role}'s user: ignored")]
    WrongOwner {
        path: String,
        owner: u32,
        role: Role,
    },
    #[error("{path} line {line}: {text:?} is not a stats line")]
    Malformed {
        path: String,
        line: usize,
        text: String,
    },
}

pub fn parse(path: &str, text: &str) -> Result<Snapshot, StatsError> {
    let mut snap = Snapshot::default();
    for (i, line) in text.lines().enumerate() {
        let bad = || StatsError::Malformed {
            path: path.to_string(),
            line: i + 1,
            text: line.to_string(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pid", v] => snap.pid = v.parse().map_err(|_| bad())?,
            ["started_ms", v] => snap.started_ms = v.parse().map_err(|_| bad())?,
            ["updated_ms", v] => snap.updated_ms = v.parse().map_err(|_| bad())?,
            [kind @ ("counter" | "gauge"), name, v] => {
                let kind = if *kind == "counter" {
                    Kind::Counter
                } else {
                    Kind::Gauge
                };
                snap.metrics
                    .push((name.to_string(), kind, v.parse().map_err(|_| bad())?));
            }
            [] => {}
            _ => return Err(bad()),
        }
    }
    Ok(snap)
}

/// Reads `role`'s stats file, believed only when the role's own user (or root) wrote it.
pub fn read(run_dir: &Path, role: Role) -> Result<Snapshot, StatsError> {
    let path = stats_path(run_dir, role);
    let shown = path.display().to_string();
    let io = |source| StatsError::Io {
        path: shown.clone(),
        source,
    };
    // One open: the owner checked is the owner of the text read.
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatsError::Missing(shown))
        }
        Err(source) => return Err(io(source)),
    };
    let owner = file.metadata().map_err(io)?.uid();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    if owner != 0 && Some(owner) != crate::ipc::uid_of(role) {
        return Err(StatsError::WrongOwner {
            path: shown,
            owner,
            role,
        });
    }
    parse(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_text_parses_back() {
        counter("test_events").add(3);
        gauge("test_depth").set(7);
        let snap = parse("x", &render(registry())).expect("parses");
        assert_eq!(snap.pid, std::process::id());
        assert_eq!(snap.get("test_events"), Some(3));
        assert_eq!(snap.get("test_depth"), Some(7));
        assert!(snap
            .metrics
            .iter()
            .any(|(n, k, _)| n == "test_depth" && *k == Kind::Gauge));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(
            parse("f", "pid 1\ncounter spans lots\n"),
            Err(StatsError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse("f", "rm -rf /\n"),
            Err(StatsError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn a_stale_file_is_not_live() {
        let snap = Snapshot {
            pid: std::process::id(),
            updated_ms: unix_ms(SystemTime::now()) - 60_000,
            ..Snapshot::default()
        };
        assert!(!snap.is_live(SystemTime::now()));
        let fresh = Snapshot {
            updated_ms: unix_ms(SystemTime::now()),
            ..snap
        };
        assert!(fresh.is_live(SystemTime::now()));
    }
}
