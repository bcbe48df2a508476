//! Operator-facing behaviour of the daemons: help, bad configuration, missing capabilities,
//! discovery of new and exiting processes, self-exclusion, and lost-event accounting.

use std::process::Command;
use std::time::{Duration, Instant};

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
    // Each daemon gets its set minus one capability, as its own user, like scripts/launch does.
    let cases = [
        ("loader", "seam-loader", "+bpf", "CAP_PERFMON"),
        ("loader", "seam-loader", "+perfmon", "CAP_BPF"),
        ("ctxprop", "seam-ctxprop", "+bpf", "CAP_NET_ADMIN"),
        ("ctxprop", "seam-ctxprop", "+net_admin", "CAP_BPF"),
        (
            "discover",
            "seam-discover",
            "+dac_read_search",
            "CAP_SYS_PTRACE",
        ),
    ];
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}/scripts/lib.sh' && seam_setup_host",
            repo_root().display()
        ))
        .status()
        .expect("setup");
    assert!(status.success());
    for (role, user, caps, missing) in cases {
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
        assert!(err.contains(missing), "{role}: {err}");
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
}
