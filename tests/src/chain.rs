//! The three-hop test chain (front → middle → back) and the ground truth its services log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::otlp::ReceivedSpan;
use crate::{free_port, wait_port, Proc};

/// Lowercase hex of an id, as it appears in a traceparent.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What runs a hop fixture.
pub fn interpreter(file: &str) -> &'static str {
    if file.ends_with(".js") {
        "node"
    } else {
        "python3"
    }
}

/// One hop of the test chain (`hop.py` in `mode`, or `hop.js`), logging to `log`.
pub fn hop(file: &str, service: &str, port: u16, next: &str, mode: &str, log: &Path) -> Proc {
    let mut cmd = Command::new(interpreter(file));
    cmd.env("OTEL_SERVICE_NAME", service);
    hop_with(cmd, file, port, next, mode, log)
}

/// A hop run by `cmd` (its interpreter, possibly inside a network namespace, with any
/// environment the caller set).
pub fn hop_with(
    mut cmd: Command,
    file: &str,
    port: u16,
    next: &str,
    mode: &str,
    log: &Path,
) -> Proc {
    cmd.arg(crate::fixture(file))
        .args([port.to_string(), next.to_string()]);
    if !file.ends_with(".js") {
        cmd.arg(mode);
    }
    let child = cmd
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hop starts");
    Proc { child }
}

/// Front → middle → back, each logging to `dir`/{front,middle,back}.log, all listening; returns
/// their ports (front first), the processes and the log paths.
pub fn start_hops(
    middle_file: &str,
    middle_mode: &str,
    dir: &Path,
) -> ([u16; 3], [Proc; 3], [PathBuf; 3]) {
    let logs = ["front", "middle", "back"].map(|s| dir.join(format!("{s}.log")));
    let ports = [free_port(), free_port(), free_port()];
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let apps = [
        hop("hop.py", "back", ports[2], "-", "thread", &logs[2]),
        hop(
            middle_file,
            "middle",
            ports[1],
            &url(ports[2]),
            middle_mode,
            &logs[1],
        ),
        hop(
            "hop.py",
            "front",
            ports[0],
            &url(ports[1]),
            "thread",
            &logs[0],
        ),
    ];
    for p in ports {
        wait_port(p, Duration::from_secs(10)).expect("hop listens");
    }
    (ports, apps, logs)
}

/// What a service logged per request: id received, id sent, then the traceparent headers it got.
pub fn service_log(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Each request's (id received, id sent), as the service logged it.
pub fn ground_truth(log: &Path) -> Vec<(String, String)> {
    service_log(log)
        .into_iter()
        .filter_map(|f| Some((f.first()?.clone(), f.get(1)?.clone())))
        .collect()
}

/// The request id a span belongs to: its path (server) or the path it called (client).
pub fn request_id(s: &ReceivedSpan) -> Option<String> {
    if s.is_server() {
        return s.attr("url.path");
    }
    let full = s.attr("url.full")?;
    let after_scheme = full.split_once("://")?.1;
    Some(after_scheme[after_scheme.find('/')?..].to_string())
}

/// A chain's spans by request id, each request's in chain order: the call into the hop listening
/// on `ports[k]` at 2k, that hop's server span at 2k + 1 (a span and the call into it share the
/// hop's port). Panics on a span outside the chain or two spans at one position.
pub fn by_request<'a, const N: usize>(
    spans: &'a [ReceivedSpan],
    ports: &[u16],
) -> HashMap<String, [Option<&'a ReceivedSpan>; N]> {
    assert_eq!(N, 2 * ports.len(), "two positions per hop");
    let position = |s: &ReceivedSpan| -> Option<usize> {
        let port = u16::try_from(s.attr_i64("server.port")?).ok()?;
        let hop = ports.iter().position(|&p| p == port)?;
        Some(if s.is_server() { 2 * hop + 1 } else { 2 * hop })
    };
    let mut out: HashMap<String, [Option<&ReceivedSpan>; N]> = HashMap::new();
    for s in spans {
        let (Some(id), Some(pos)) = (request_id(s), position(s)) else {
            panic!("span outside the chain: {:?}", s.span.name);
        };
        let slot = &mut out.entry(id).or_insert([None; N])[pos];
        assert!(slot.is_none(), "two spans at one position of one request");
        *slot = Some(s);
    }
    out
}
