//! "Hosts" for multi-host tests: network namespaces joined by veth pairs on one bridge, which
//! lives in a namespace of its own; nothing is added to the machine's own network.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Hosts {
    switch: String,
    names: Vec<String>,
    subnet: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    /// `n` hosts, each with `lo` and `eth0` up, at 10.199.<run>.1, .2, … on one bridge.
    pub fn create(n: usize) -> Result<Self> {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let run = (std::process::id() + seq) % 250;
        let tag = format!("seam{}-{seq}", std::process::id());
        let hosts = Hosts {
            switch: format!("{tag}-sw"),
            names: (0..n).map(|i| format!("{tag}-h{i}")).collect(),
            subnet: format!("10.199.{run}"),
        };
        ip(&["netns", "add", &hosts.switch])?;
        ip(&["-n", &hosts.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hosts.switch, "link", "set", "br0", "up"])?;
        for (i, ns) in hosts.names.iter().enumerate() {
            let port = format!("p{i}");
            let addr = format!("{}/24", hosts.addr(i));
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &hosts.switch,
            ])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &hosts.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hosts.switch, "link", "set", &port, "up"])?;
        }
        Ok(hosts)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self, host: usize) -> &str {
        &self.names[host]
    }

    pub fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, host + 1)
    }

    /// `program` run inside `host`'s namespace (`ip netns exec` execs it: the child's pid is the
    /// program's).
    pub fn command(&self, host: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[host], program]);
        c
    }

    /// Waits until something listens on `port` at `host`'s address, probing from inside it.
    pub fn wait_port(&self, host: usize, port: u16, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let probe = format!(
            "import socket; socket.create_connection(('{}', {port}), timeout=1).close()",
            self.addr(host)
        );
        while start.elapsed() < timeout {
            let ok = self
                .command(host, "python3")
                .args(["-c", &probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("nothing listens on {}:{port}", self.addr(host))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and with it the pair.
        for ns in self.names.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
