//! Test harness for seam's privileged tests: the five real daemons, a collector, and target processes.

pub mod chain;
pub mod netns;
pub mod otlp;
pub mod tls;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const ROLES: [&str; 5] = ["exporter", "loader", "correlator", "ctxprop", "discover"];

/// A test's wait, stretched by `SEAM_TEST_TIME_SCALE` (the VM lane runs under emulation, where
/// loading the programs alone takes tens of seconds).
pub fn patience(wait: Duration) -> Duration {
    let scale = std::env::var("SEAM_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    wait * scale
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where the daemons are built: the same profile directory as this test binary.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SEAM_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// Privileged tests need root. In CI a missing privilege is a failure; elsewhere the test says
/// it was skipped and returns.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the privileged tests are not running as root"
    );
    eprintln!("SKIPPED: needs root (run ./scripts/test as root)");
    false
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Users, groups and mounts (idempotent), then a fresh socket directory and pin directory.
fn prepare_dirs(run_dir: &Path, pin_dir: &Path) -> Result<()> {
    let script = format!(
        ". '{}/scripts/lib.sh' && seam_setup_host && seam_make_dirs '{}' '{}'",
        repo_root().display(),
        run_dir.display(),
        pin_dir.display()
    );
    run_ok(Command::new("bash").arg("-c").arg(script))
}

static STACK_SEQ: AtomicU32 = AtomicU32::new(0);

/// The five daemons, each started by scripts/launch as its own user with its own capabilities.
#[derive(Debug)]
pub struct Stack {
    pub run_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub log_dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    /// Each daemon runs under scripts/supervise, which restarts it when it dies.
    supervised: bool,
}

impl Stack {
    /// Starts the stack with extra environment (selectors, OTLP settings) and waits until the
    /// loader has attached and the correlator reads the ring buffer.
    pub fn start(env: &[(String, String)]) -> Result<Self> {
        Self::start_with(env, false)
    }

    /// Like `start`, with every daemon under scripts/supervise (restarted when it dies).
    pub fn start_supervised(env: &[(String, String)]) -> Result<Self> {
        Self::start_with(env, true)
    }

    fn start_with(env: &[(String, String)], supervised: bool) -> Result<Self> {
        let n = STACK_SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("seam-test-{}-{n}", std::process::id());
        let run_dir = PathBuf::from("/run").join(&tag);
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
        let log_dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&log_dir)?;
        prepare_dirs(&run_dir, &pin_dir)?;
        let mut stack = Stack {
            run_dir,
            pin_dir,
            log_dir,
            children: Vec::new(),
            supervised,
        };
        // Each daemon is ready (socket bound, signal handlers in place) before the next starts.
        for role in ROLES {
            stack.spawn(role, env)?;
            stack.wait_log(role, " ready role=", Duration::from_secs(20))?;
        }
        Ok(stack)
    }

    fn spawn(&mut self, role: &'static str, env: &[(String, String)]) -> Result<()> {
        let stderr = File::create(self.log_dir.join(format!("{role}.log")))?;
        let stdout = File::create(self.log_dir.join(format!("{role}.out")))?;
        let script = if self.supervised {
            "scripts/supervise"
        } else {
            "scripts/launch"
        };
        let mut cmd = Command::new(repo_root().join(script));
        cmd.arg(role)
            .env("SEAM_BIN_DIR", bin_dir())
            .env("SEAM_RUN_DIR", &self.run_dir)
            .env("SEAM_PIN_DIR", &self.pin_dir)
            .env("SEAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {role}"))?;
        self.children.push((role, child));
        Ok(())
    }

    pub fn log(&self, role: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{role}.log"))).unwrap_or_default()
    }

    pub fn output(&self, role: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{role}.out"))).unwrap_or_default()
    }

    pub fn all_logs(&self) -> String {
        ROLES
            .iter()
            .map(|r| format!("--- {r}\n{}", self.log(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn wait_log(&self, role: &str, needle: &str, timeout: Duration) -> Result<()> {
        let timeout = patience(timeout);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log(role).contains(needle) {
                return Ok(());
            }
            if let Some((_, c)) = self.children.iter().find(|(r, _)| *r == role) {
                let pid = c.id();
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{role} did not log {needle:?} within {timeout:?}\n{}",
            self.all_logs()
        )
    }

    /// Waits until the loader has put `pid` in the target set.
    pub fn wait_target(&self, pid: u32) -> Result<()> {
        self.wait_log(
            "loader",
            &format!("target added pid={pid}"),
            Duration::from_secs(10),
        )
    }

    /// Waits until the loader probes Node process `pid` for its async context: connections it
    /// accepts before its first callback after that stay unlinked.
    pub fn wait_node_probe(&self, pid: u32) -> Result<()> {
        self.wait_log(
            "loader",
            &format!("Node async context probe attached pid={pid}"),
            Duration::from_secs(10),
        )
    }

    /// The daemon's pid: the launched process itself (scripts/launch execs the daemon), or under
    /// a supervisor the supervisor's current child.
    pub fn pid_of(&self, role: &str) -> Option<u32> {
        let pid = self
            .children
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, c)| c.id())?;
        if !self.supervised {
            return Some(pid);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// How many times `role` has logged `needle` (a supervised daemon's restarts append).
    pub fn log_count(&self, role: &str, needle: &str) -> usize {
        self.log(role).matches(needle).count()
    }

    /// What `role` last published about itself (its stats file in this stack's run directory).
    pub fn stats(&self, role: &str) -> Result<seam_proto::selfstats::Snapshot> {
        let role = seam_proto::Role::ALL
            .into_iter()
            .find(|r| r.name() == role)
            .with_context(|| format!("no role {role}"))?;
        Ok(seam_proto::selfstats::read(&self.run_dir, role)?)
    }

    /// Waits until `role`'s published counters satisfy `pred`; returns the last snapshot read.
    pub fn wait_stats(
        &self,
        role: &str,
        timeout: Duration,
        pred: impl Fn(&seam_proto::selfstats::Snapshot) -> bool,
    ) -> Result<seam_proto::selfstats::Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.stats(role);
            match snap {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) if Instant::now() > deadline => {
                    bail!("{role}'s counters never got there: {s:?}")
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn socket(&self, role: &str) -> PathBuf {
        self.run_dir.join(format!("{role}.sock"))
    }

    /// Stops every daemon with SIGTERM and waits; returns their exit codes.
    pub fn stop(mut self) -> Vec<(&'static str, Option<i32>)> {
        self.terminate()
    }

    fn terminate(&mut self) -> Vec<(&'static str, Option<i32>)> {
        for (_, c) in self.children.iter().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let mut codes = Vec::new();
        for (role, c) in self.children.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let code = loop {
                match c.try_wait() {
                    Ok(Some(s)) => break s.code(),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        break c.wait().ok().and_then(|s| s.code());
                    }
                }
            };
            codes.push((*role, code));
        }
        self.children.clear();
        let _ = std::fs::remove_dir(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        codes
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.terminate();
        }
    }
}

/// A process the test starts and kills on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let timeout = patience(timeout);
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

/// Starts a fixture server (`python3 FILE PORT` or `node FILE PORT`) with a service name.
pub fn start_server(
    interpreter: &str,
    fixture_name: &str,
    port: u16,
    service: &str,
) -> Result<Proc> {
    start_server_env(interpreter, fixture_name, port, service, &[])
}

/// Like [`start_server`], with extra environment.
pub fn start_server_env(
    interpreter: &str,
    fixture_name: &str,
    port: u16,
    service: &str,
    env: &[(&str, &str)],
) -> Result<Proc> {
    let child = Command::new(interpreter)
        .arg(fixture(fixture_name))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {interpreter} {fixture_name}"))?;
    let p = Proc { child };
    wait_port(port, Duration::from_secs(10))?;
    Ok(p)
}

/// A shell that waits for a line on stdin, then runs `script`; its children (curl…) inherit
/// target status in the kernel from their first syscall.
#[derive(Debug)]
pub struct GatedShell {
    pub proc: Proc,
}

impl GatedShell {
    pub fn new(script: &str) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("read go; {script}"));
        Self::spawn(cmd)
    }

    /// A program that itself waits for a line on stdin before it starts (the TLS clients with
    /// TLS_WAIT_STDIN: their libraries are loaded, and seen by discover, by then).
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            proc: Proc { child },
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Lets the script run and returns its standard output once it finishes.
    pub fn run(mut self) -> Result<String> {
        use std::io::{Read, Write};
        if let Some(mut stdin) = self.proc.child.stdin.take() {
            stdin.write_all(b"go\n")?;
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.proc.child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        self.proc.child.wait()?;
        Ok(out)
    }
}

/// Environment that selects targets by port and pid.
pub fn selector_env(ports: &[u16], pids: &[u32]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if !ports.is_empty() {
        let p: Vec<String> = ports.iter().map(u16::to_string).collect();
        env.push(("SEAM_OPEN_PORT".to_string(), p.join(",")));
    }
    if !pids.is_empty() {
        let p: Vec<String> = pids.iter().map(u32::to_string).collect();
        env.push(("SEAM_TARGET_PID".to_string(), p.join(",")));
    }
    env
}

/// A collector, one fixture server selected by its port, and the stack watching it (gRPC export).
#[derive(Debug)]
pub struct Watched {
    pub rx: otlp::OtlpReceiver,
    pub port: u16,
    /// The server's `service.name`: `{prefix}-{port}`.
    pub service: String,
    pub server: Proc,
    pub stack: Stack,
}

/// Starts a fixture server and a stack that instruments it (plus `pids`, with `extra` settings),
/// and waits until the server is a target.
pub fn watch_server(
    interpreter: &str,
    fixture_name: &str,
    prefix: &str,
    pids: &[u32],
    extra: &[(&str, &str)],
) -> Result<Watched> {
    let rx = otlp::OtlpReceiver::start()?;
    let port = free_port();
    let service = format!("{prefix}-{port}");
    let server = start_server(interpreter, fixture_name, port, &service)?;
    let mut env = selector_env(&[port], pids);
    env.extend(rx.exporter_env("grpc"));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let stack = Stack::start(&env)?;
    stack.wait_target(server.pid())?;
    for &pid in pids {
        stack.wait_target(pid)?;
    }
    Ok(Watched {
        rx,
        port,
        service,
        server,
        stack,
    })
}
