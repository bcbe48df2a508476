//! Least privilege and robustness: who may open pins and sockets, what each daemon holds, bad peers,
//! and a clean stop.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use seam_proto::{ipc::Client, msg::LoaderRequest, Role};
use seam_tests::{bin_dir, free_port, require_root, selector_env, watch_server, Stack, ROLES};

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn uid_of(user: &str) -> String {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The daemon's own pid: scripts/launch execs setpriv, which execs the daemon, so the pid is kept.
fn daemon_pid(stack: &Stack, role: &str) -> u32 {
    stack.pid_of(role).expect("started")
}

#[test]
fn each_daemon_runs_as_its_user_with_only_its_capabilities() {
    if !require_root() {
        return;
    }
    let port = free_port();
    let stack = Stack::start(&selector_env(&[port], &[])).expect("stack");
    stack
        .wait_log(
            "discover",
            "dropped to least privilege",
            Duration::from_secs(10),
        )
        .expect("discover up");
    let expect = [
        ("discover", "seam-discover", (1u64 << 19) | (1 << 2)), // SYS_PTRACE, DAC_READ_SEARCH
        ("loader", "seam-loader", (1u64 << 39) | (1 << 38)),    // BPF, PERFMON
        ("ctxprop", "seam-ctxprop", (1u64 << 39) | (1 << 12)),  // BPF, NET_ADMIN
        ("correlator", "seam", 0),
        ("exporter", "seam-exporter", 0),
    ];
    for (role, user, caps) in expect {
        let pid = daemon_pid(&stack, role);
        let uid = status_field(pid, "Uid:");
        assert!(
            uid.split_whitespace().all(|u| u == uid_of(user)),
            "{role} uid {uid}"
        );
        for set in ["CapEff:", "CapPrm:"] {
            let v = u64::from_str_radix(&status_field(pid, set), 16).expect("hex caps");
            assert_eq!(v, caps, "{role} {set}");
        }
        assert_eq!(
            u64::from_str_radix(&status_field(pid, "CapAmb:"), 16).ok(),
            Some(0),
            "{role}"
        );
        assert_eq!(status_field(pid, "NoNewPrivs:"), "1", "{role}");
    }
    assert!(stack.log("correlator").contains("capabilities=none"));
}

#[test]
fn only_the_seam_group_reaches_pins_and_sockets() {
    if !require_root() {
        return;
    }
    let port = free_port();
    let stack = Stack::start(&selector_env(&[port], &[])).expect("stack");
    let probe = bin_dir().join("seam-access-probe");
    let pins = ["events", "counters", "targets"];
    let run_as = |user: &str, group: &str| -> String {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={user}"),
            &format!("--regid={group}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(&probe);
        for p in pins {
            cmd.arg("--pin").arg(stack.pin_dir.join(p));
        }
        for r in ["loader", "correlator", "exporter", "ctxprop"] {
            cmd.arg("--socket").arg(stack.socket(r));
        }
        let out = cmd.output().expect("probe");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let outsider = run_as("nobody", "nogroup");
    assert_eq!(
        outsider,
        "pin:errno13 pin:errno13 pin:errno13 socket:errno13 socket:errno13 socket:errno13 socket:errno13",
        "a user outside the seam group"
    );
    // The correlator's user reaches the ring buffer and counters it needs, not the target set.
    let member = run_as("seam", "seam");
    let parts: Vec<&str> = member.split(' ').collect();
    assert_eq!(parts[0], "pin:ok", "{member}");
    assert_eq!(parts[2], "pin:errno13", "{member}");
    assert!(parts[3..].iter().all(|p| *p == "socket:ok"), "{member}");
}

/// The server hung up: end of stream, or a reset because it closed with our bytes unread.
fn closed_by_server(mut s: UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(6)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn bad_peers_lose_their_connection_and_spans_keep_flowing() {
    if !require_root() {
        return;
    }
    let w = watch_server("python3", "pyserver.py", "robust", &[], &[]).expect("watched server");
    let (rx, port, stack) = (&w.rx, w.port, &w.stack);
    for role in ["loader", "correlator", "exporter", "ctxprop"] {
        let path = stack.socket(role);
        let mut garbage = UnixStream::connect(&path).expect("connect");
        garbage
            .write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7])
            .expect("write");
        assert!(closed_by_server(garbage), "{role}: garbage not refused");
        let mut huge = UnixStream::connect(&path).expect("connect");
        huge.write_all(&u32::MAX.to_le_bytes()).expect("write");
        assert!(
            closed_by_server(huge),
            "{role}: oversized frame not refused"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        // The exporter hears only the correlator; the loader only discover.
        let wrong =
            Client::connect_at(Role::Discover, Role::Exporter, &stack.socket("exporter")).await;
        assert!(wrong.is_err(), "exporter accepted discover");
        let wrong =
            Client::connect_at(Role::Correlator, Role::Loader, &stack.socket("loader")).await;
        assert!(wrong.is_err(), "loader accepted correlator");
        // A legitimate peer that then sends a request of another role's type is cut off.
        let mut c = Client::connect_at(Role::Correlator, Role::Exporter, &stack.socket("exporter"))
            .await
            .expect("correlator role accepted");
        c.send(&LoaderRequest::AddTarget {
            pid: 1,
            propagation: None,
        })
        .await
        .expect("send");
    });
    for role in ["loader", "correlator", "exporter", "ctxprop"] {
        assert!(
            stack.log(role).contains("refused connection")
                || stack.log(role).contains("closed connection"),
            "{role} logged nothing"
        );
    }
    for role in ROLES {
        let pid = stack.pid_of(role).expect("pid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}/status")).exists(),
            "{role} died"
        );
    }
    let ok = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/after-garbage"),
        ])
        .status()
        .expect("curl");
    assert!(ok.success());
    let spans = rx.wait_for(Duration::from_secs(20), |all| {
        all.iter()
            .any(|s| s.attr("url.path").as_deref() == Some("/after-garbage"))
    });
    assert!(
        spans
            .iter()
            .any(|s| s.attr("url.path").as_deref() == Some("/after-garbage")),
        "{}",
        stack.all_logs()
    );
    // Each refusal is counted where an operator looks (seam-status, OTLP self-metrics).
    for (role, refused, closed) in [
        ("loader", 3, 0),
        ("correlator", 2, 0),
        ("exporter", 3, 1),
        ("ctxprop", 2, 0),
    ] {
        let snap = stack
            .wait_stats(role, Duration::from_secs(5), |s| {
                s.get("peers_refused") >= Some(refused)
                    && s.get("peers_closed_on_bad_input") >= Some(closed)
            })
            .expect("refusals counted");
        eprintln!(
            "{role}: refused {:?}, closed on bad input {:?}",
            snap.get("peers_refused"),
            snap.get("peers_closed_on_bad_input")
        );
    }
}

#[test]
fn stopping_leaves_no_programs_links_or_pins() {
    if !require_root() {
        return;
    }
    let before = bpf_prog_ids();
    let port = free_port();
    let stack = Stack::start(&selector_env(&[port], &[])).expect("stack");
    let pin_dir = stack.pin_dir.clone();
    // Programs of an earlier stack may still be on their way out, so follow ids, not counts.
    let ours: Vec<u32> = bpf_prog_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(ours.len() >= 6, "programs did not load: {ours:?}");
    let codes = stack.stop();
    assert!(codes.iter().all(|(_, c)| *c == Some(0)), "{codes:?}");
    assert!(!pin_dir.exists(), "pin directory left behind");
    // Program teardown is asynchronous in the kernel (RCU); give it a moment.
    let mut left: Vec<u32> = Vec::new();
    for _ in 0..50 {
        let now = bpf_prog_ids();
        left = ours.iter().copied().filter(|id| now.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left.is_empty(), "programs left: {left:?}");
}

/// Ids of all loaded BPF programs, walked with BPF_PROG_GET_NEXT_ID.
fn bpf_prog_ids() -> Vec<u32> {
    #[repr(C)]
    struct Attr {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = Attr {
            start_id: id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: BPF_PROG_GET_NEXT_ID (11) reads start_id and writes next_id in this struct.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                11,
                &mut attr as *mut Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if rc != 0 {
            break;
        }
        id = attr.next_id;
        ids.push(id);
    }
    ids
}
