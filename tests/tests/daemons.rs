//! Operator-facing behaviour of the daemons: help, bad configuration, missing capabilities,
//! discovery of new and exiting processes, self-exclusion, and lost-event accounting.

use std::process::Command;
use std::time::{Duration, Instant};

use seam_proto::Role;
use seam_tests::{
    bin_dir, fixture, free_port, repo_root, require_root, selector_env, start_server, watch_server,
    Stack,
};

const DAEMONS: [&str; 5] = ["discover", "loader", "ctxprop", "correlator", "exporter"];

#[test]
fn every_daemon_has_help() {
    for d in DAEMONS {
        let out = Command::new(bin_dir().join(format!("seam-{d}")))
            .arg("--help")
            .output()
            .expect("runs");
        assert!(out.status.success(), "seam-{d} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "seam-{d}: {text}");
    }
}

#[test]
fn bad_configuration_exits_64_with_a_reason() {
    let cases = [
        ("discover", "SEAM_OPEN_PORT", "9000-80", "bad port list"),
        ("discover", "SEAM_AUTO_TARGET_EXE", "[", "bad glob"),
        (
            "exporter",
            "SEAM_TRACE_PRINTER",
            "fancy",
            "SEAM_TRACE_PRINTER",
        ),
        ("loader", "SEAM_CAPTURE_BYTES", "0", "capture bytes"),
        (
            "correlator",
            "SEAM_CONFIG",
            "/nonexistent/seam.yaml",
            "cannot use",
        ),
        (
            "correlator",
            "SEAM_MAX_TRANSACTION_TIME",
            "soon",
            "invalid value",
        ),
    ];
    for (d, key, value, reason) in cases {
        let mut cmd = Command::new(bin_dir().join(format!("seam-{d}")));
        if key != "SEAM_CONFIG" {
            cmd.env_remove("SEAM_CONFIG");
        }
        let out = cmd.env(key, value).output().expect("runs");
        assert_eq!(out.status.code(), Some(64), "seam-{d} with {key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "seam-{d}: {err}");
    }
    let out = Command::new(bin_dir().join("seam-discover"))
        .env_remove("SEAM_OPEN_PORT")
        .env_remove("SEAM_AUTO_TARGET_EXE")
        .env_remove("SEAM_TARGET_PID")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64), "discover without selectors");
}

#[test]
fn a_missing_capability_is_named() {
    if !require_root() {
        return;
    }
    // Each daemon gets its set minus one capability, as its own user, like scripts/launch does;
    // the cases come from the role table the daemons themselves enforce.
    let short = |c: &caps::Capability| c.to_string().trim_start_matches("CAP_").to_lowercase();
    let mut cases = Vec::new();
    for role in Role::ALL {
        for missing in role.capabilities() {
            let kept: Vec<String> = role
                .capabilities()
                .iter()
                .filter(|c| *c != missing)
                .map(|c| format!("+{}", short(c)))
                .collect();
            cases.push((
                role.name(),
                role.user(),
                kept.join(","),
                missing.to_string(),
            ));
        }
    }
    assert_eq!(cases.len(), 6, "every capability of every role is a case");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}/scripts/lib.sh' && seam_setup_host",
            repo_root().display()
        ))
        .status()
        .expect("setup");
    assert!(status.success());
    for (role, user, caps, missing) in &cases {
        let set = format!("-all{}{caps}", if caps.is_empty() { "" } else { "," });
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                "--regid=seam",
                "--init-groups",
                &format!("--inh-caps={set}"),
                &format!("--ambient-caps={set}"),
                &format!("--bounding-set={set}"),
                "--",
            ])
            .arg(bin_dir().join(format!("seam-{role}")))
            .env("SEAM_OPEN_PORT", "1")
            .env("SEAM_RUN_DIR", "/nonexistent")
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{role} started without {missing}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing.as_str()), "{role}: {err}");
    }
}

#[test]
fn discover_notices_new_and_exiting_processes() {
    if !require_root() {
        return;
    }
    let port = free_port();
    let stack = Stack::start(&selector_env(&[port], &[])).expect("stack");
    let started = Instant::now();
    let server = start_server("python3", "pyserver.py", port, "late").expect("server");
    stack.wait_target(server.pid()).expect("noticed");
    let noticed = started.elapsed();
    let pid = server.pid();
    let killed = Instant::now();
    drop(server);
    stack
        .wait_log(
            "discover",
            &format!("target gone pid={pid}"),
            Duration::from_secs(5),
        )
        .expect("exit noticed");
    let gone = killed.elapsed();
    eprintln!("noticed a new listener after {noticed:?} (includes interpreter start), its exit after {gone:?}");
    assert!(gone < Duration::from_secs(2), "exit noticed after {gone:?}");
}

/// A process bound to a selected port but not listening yet when discover reads its sockets (to
/// explain another new listener) becomes a target once it listens.
#[test]
fn a_listener_opened_after_its_bind_is_found() {
    use std::io::{BufRead, BufReader, Write};
    if !require_root() {
        return;
    }
    let (late_port, other_port) = (free_port(), free_port());
    let stack = Stack::start(&selector_env(&[late_port, other_port], &[])).expect("stack");
    let script = "import socket, sys\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('127.0.0.1', int(sys.argv[1])))\n\
        print('bound', flush=True)\n\
        sys.stdin.readline()\n\
        s.listen()\n\
        print('listening', flush=True)\n\
        sys.stdin.readline()\n";
    let mut late = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(late_port.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut said = BufReader::new(late.stdout.take().expect("stdout"));
    let mut line = String::new();
    said.read_line(&mut line).expect("bound");
    assert_eq!(line.trim(), "bound");
    // Explaining this listener makes discover read every process's sockets, the bound one's too.
    let other = start_server("python3", "pyserver.py", other_port, "other").expect("server");
    stack
        .wait_target(other.pid())
        .expect("other listener noticed");
    let mut stdin = late.stdin.take().expect("stdin");
    writeln!(stdin).expect("go");
    line.clear();
    said.read_line(&mut line).expect("listening");
    assert_eq!(line.trim(), "listening");
    let found = stack.wait_target(late.id());
    let _ = late.kill();
    let _ = late.wait();
    found.unwrap_or_else(|e| panic!("late listener not found: {e}\n{}", stack.log("discover")));
}

#[test]
fn seam_never_instruments_itself() {
    if !require_root() {
        return;
    }
    let env = vec![("SEAM_AUTO_TARGET_EXE".to_string(), "*seam-*".to_string())];
    let stack = Stack::start(&env).expect("stack");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !stack.log("discover").contains("target found"),
        "{}",
        stack.log("discover")
    );
    assert!(
        !stack.log("loader").contains("target added"),
        "{}",
        stack.log("loader")
    );
}

#[test]
fn a_full_ring_buffer_is_counted_and_reported() {
    if !require_root() {
        return;
    }
    let w = watch_server(
        "python3",
        "pyserver.py",
        "burst",
        &[],
        &[("SEAM_RINGBUF_BYTES", "4096")],
    )
    .expect("watched server");
    let (rx, port, stack) = (&w.rx, w.port, &w.stack);
    let out = Command::new("python3")
        .arg(fixture("kaclient.py"))
        .args([port.to_string(), "2000".into(), "50".into()])
        .output()
        .expect("client");
    assert!(out.status.success());
    stack
        .wait_log(
            "correlator",
            "ring buffer was full: events lost",
            Duration::from_secs(10),
        )
        .expect("loss reported");
    // What did arrive still made spans: loss degrades, it does not break the pipeline.
    let spans = rx.wait_for(Duration::from_secs(10), |s| !s.is_empty());
    assert!(!spans.is_empty());
    assert!(spans.len() < 2000, "nothing was lost?");
    // The loss is a counter an operator sees, not only a log line.
    let snap = stack
        .wait_stats("correlator", Duration::from_secs(5), |s| {
            s.get("lost_events") > Some(0)
        })
        .expect("lost events counted");
    eprintln!(
        "{} spans of 2000 requests; lost_events = {:?}",
        spans.len(),
        snap.get("lost_events")
    );
}

/// A counter under `daemon`'s heading in seam-status's output.
fn status_value(text: &str, daemon: &str, name: &str) -> Option<u64> {
    let mut in_section = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_section = line.split_whitespace().next() == Some(daemon);
            continue;
        }
        let mut words = line.split_whitespace();
        if in_section && words.next() == Some(name) {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[test]
fn own_counters_reach_seam_status_and_otlp_metrics() {
    if !require_root() {
        return;
    }
    let w = watch_server("python3", "pyserver.py", "counted", &[], &[]).expect("watched server");
    let (rx, stack) = (&w.rx, &w.stack);
    let out = Command::new("python3")
        .arg(fixture("kaclient.py"))
        .args([w.port.to_string(), "40".into(), "1".into()])
        .output()
        .expect("client");
    assert!(out.status.success());
    let spans = rx.wait_for(Duration::from_secs(10), |s| s.len() >= 40);
    assert_eq!(spans.len(), 40);

    // The stats files are rewritten every second: wait for the correlator's to count the spans.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let out = Command::new(bin_dir().join("seam-status"))
            .arg("--run-dir")
            .arg(&stack.run_dir)
            .output()
            .expect("seam-status");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let settled = [
            ("exporter", "spans_exported"),
            ("correlator", "spans_shipped"),
            ("correlator", "spans"),
        ]
        .iter()
        .all(|(d, n)| status_value(&text, d, n).unwrap_or(0) >= 40);
        if (out.status.success() && settled) || Instant::now() > deadline {
            assert!(out.status.success(), "a daemon is down:\n{text}");
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("{text}");
    let v =
        |d: &str, n: &str| status_value(&text, d, n).unwrap_or_else(|| panic!("{d} {n}:\n{text}"));
    assert_eq!(v("correlator", "spans"), 40);
    assert!(
        v("correlator", "events") >= 80,
        "a request and a response each"
    );
    assert_eq!(v("correlator", "lost_events"), 0);
    assert_eq!(v("correlator", "spans_dropped"), 0);
    assert_eq!(v("correlator", "spans_shipped"), 40);
    assert_eq!(v("exporter", "spans_received"), 40);
    assert_eq!(v("exporter", "spans_exported"), 40);
    assert_eq!(v("loader", "targets"), 1);
    assert_eq!(v("discover", "targets"), 1);
    assert_eq!(v("loader", "peers_connected"), 1, "discover");
    assert_eq!(v("exporter", "peers_connected"), 1, "correlator");

    // The same counters as OTLP metrics, attributed to each daemon.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (rx.self_metric("seam.spans_exported", "exporter") < Some(40)
        || rx.self_metric("seam.spans", "correlator") < Some(40))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(rx.self_metric("seam.spans_exported", "exporter"), Some(40));
    assert_eq!(rx.self_metric("seam.spans", "correlator"), Some(40));
    assert_eq!(rx.self_metric("seam.targets", "loader"), Some(1));
    assert!(rx.self_metric("seam.scans", "discover") > Some(0));

    // A daemon that is gone shows as down, and seam-status says so in its exit code.
    drop(w);
    let out = Command::new(bin_dir().join("seam-status"))
        .arg("--run-dir")
        .arg(std::env::temp_dir().join("seam-status-nowhere"))
        .output()
        .expect("seam-status");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("DOWN"));
}
