//! Header injection on real traffic: ctxprop adds `traceparent` to instrumented processes'
//! outgoing requests, and the ids on the wire are the ones seam's spans carry.

use std::collections::HashMap;
use std::time::Duration;

use seam_tests::chain::{by_request, ground_truth, hex, service_log, start_hops};
use seam_tests::otlp::{OtlpReceiver, ReceivedSpan};
use seam_tests::{require_root, selector_env, GatedShell, Proc, Stack};

/// The same chain as the stitching tests, but every link between hops must come from the
/// header seam injected: same-host black-box linking is off.
#[test]
fn injected_headers_carry_each_request_through_the_chain_as_one_trace() {
    if !require_root() {
        return;
    }
    const TOTAL: usize = 300;
    const CONCURRENCY: usize = 8;
    let dir = std::env::temp_dir().join(format!("seam-prop-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let (ports, apps, logs) = start_hops("hop.py", "thread", &dir);
    let rx = OtlpReceiver::start().expect("collector");
    let client = GatedShell::new(&format!(
        "python3 {} {} {TOTAL} {CONCURRENCY}",
        seam_tests::fixture("chainclient.py").display(),
        ports[0]
    ))
    .expect("client");
    let mut env = selector_env(&ports, &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    env.push(("SEAM_DISABLE_BLACK_BOX".into(), "1".into()));
    env.push(("SEAM_CONTEXT_PROPAGATION".into(), "headers".into()));
    let stack = Stack::start(&env).expect("stack");
    for pid in apps.iter().map(Proc::pid).chain([client.pid()]) {
        stack.wait_target(pid).expect("targeted");
    }
    assert_eq!(client.run().expect("client ran").trim(), TOTAL.to_string());

    // What each hop received: exactly one traceparent per request, keyed by request id.
    let received: Vec<HashMap<String, String>> = logs
        .iter()
        .map(|log| {
            assert_eq!(
                ground_truth(log).len(),
                TOTAL,
                "{} saw every request",
                log.display()
            );
            service_log(log)
                .into_iter()
                .map(|f| {
                    assert_eq!(
                        f[2],
                        "1",
                        "{}: one traceparent per request: {f:?}",
                        log.display()
                    );
                    (f[0].clone(), f[3].clone())
                })
                .collect()
        })
        .collect();

    rx.wait_for(Duration::from_secs(60), |s| s.len() >= 6 * TOTAL);
    std::thread::sleep(Duration::from_millis(500));
    let spans = rx.spans();
    assert_eq!(
        spans.len(),
        6 * TOTAL,
        "six spans per request\n{}",
        stack.all_logs()
    );
    // [client→front, front, front→middle, middle, middle→back, back] per request id
    let by_request = by_request::<6>(&spans, &ports);
    let mut trace_owner: HashMap<&[u8], &str> = HashMap::new();
    for (id, chain) in &by_request {
        let chain: Vec<&ReceivedSpan> = chain.iter().map(|s| s.expect("all six")).collect();
        assert!(
            chain[0].span.parent_span_id.is_empty(),
            "{id}: the client's call is the root"
        );
        for (k, pair) in chain.windows(2).enumerate() {
            let (parent, child) = (pair[0], pair[1]);
            assert_eq!(
                child.span.trace_id,
                parent.span.trace_id,
                "{id}: positions {k} and {} share the trace",
                k + 1
            );
            assert_eq!(
                child.span.parent_span_id,
                parent.span.span_id,
                "{id}: position {} is the child of {k}",
                k + 1
            );
        }
        // The header each hop got is exactly its caller's client span.
        for hop in 0..3 {
            let call = chain[2 * hop];
            let expected = format!(
                "00-{}-{}-01",
                hex(&call.span.trace_id),
                hex(&call.span.span_id)
            );
            assert_eq!(
                received[hop][id.as_str()],
                expected,
                "{id}: header at hop {hop}"
            );
        }
        let owner = trace_owner
            .entry(&chain[0].span.trace_id)
            .or_insert(id.as_str());
        assert_eq!(*owner, id.as_str(), "two requests share a trace");
    }
    assert_eq!(by_request.len(), TOTAL);
    let logs = stack.stop();
    drop(logs);
}

/// One corpus case as sent, as the server received it, and as a packet capture saw it go.
struct Case {
    name: String,
    expected_headers: usize,
    sent: Vec<u8>,
    received: Vec<u8>,
    /// Client-to-server TCP payload in capture order, and the TCP option kinds it carried.
    on_the_wire: Vec<u8>,
    tcp_options: std::collections::BTreeSet<String>,
}

/// Runs `corpus.py` (instrumented when there is a stack) against `recorder.py` (never
/// instrumented) under a stack started with `env`, or with no seam at all for `None`; `before`
/// runs once the stack is up, before the first byte is sent. With `selector_propagation` the
/// client is selected by a config-file selector carrying that `context_propagation` override. A
/// packet capture on the loopback interface records what went to the recorder.
fn run_corpus(
    env: Option<&[(String, String)]>,
    selector_propagation: Option<&str>,
    before: impl FnOnce(&Stack),
) -> Vec<Case> {
    let dir = std::env::temp_dir().join(format!(
        "seam-corpus-{}-{}",
        std::process::id(),
        CORPUS_RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = seam_tests::free_port();
    let _recorder = Proc {
        child: std::process::Command::new("python3")
            .arg(seam_tests::fixture("recorder.py"))
            .arg(port.to_string())
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("recorder starts"),
    };
    seam_tests::wait_port(port, Duration::from_secs(10)).expect("recorder listens");
    let client = GatedShell::new(&format!(
        "python3 {} {port} {}",
        seam_tests::fixture("corpus.py").display(),
        dir.display()
    ))
    .expect("client");
    let capture = dir.join("capture.txt");
    let mut sniffer = std::process::Command::new("python3")
        .arg(seam_tests::fixture("sniff.py"))
        .arg(port.to_string())
        .arg(&capture)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("packet capture starts");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let stdout = sniffer.stdout.take().expect("piped");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("capture ready");
        assert_eq!(line.trim(), "ready");
    }
    let _sniffer = Proc { child: sniffer };
    let stack = env.map(|env| {
        let mut env = env.to_vec();
        match selector_propagation {
            Some(mode) => {
                let config = dir.join("seam.yaml");
                std::fs::write(
                    &config,
                    format!(
                        "discovery:\n  instrument:\n    - pid: {}\n      context_propagation: {mode}\n",
                        client.pid()
                    ),
                )
                .expect("config");
                env.push(("SEAM_CONFIG".into(), config.display().to_string()));
            }
            None => env.extend(selector_env(&[], &[client.pid()])),
        }
        let stack = Stack::start(&env).expect("stack");
        stack.wait_target(client.pid()).expect("targeted");
        if selector_propagation.is_some_and(|mode| mode != "disabled") {
            // ctxprop loads its programs only when this target turns propagation on.
            stack
                .wait_log(
                    "ctxprop",
                    "propagating context in instrumented processes",
                    Duration::from_secs(10),
                )
                .expect("propagation started for the selector");
        }
        before(&stack);
        stack
    });
    let logs = stack.as_ref().map(Stack::all_logs).unwrap_or_default();
    assert_eq!(client.run().expect("corpus ran").trim(), "done", "{logs}");
    let cases: Vec<(String, usize, String)> = std::fs::read_to_string(dir.join("cases"))
        .expect("case list")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse().expect("count"),
                f[2].to_string(),
            )
        })
        .collect();
    let received = |port: &str| {
        let path = dir.join(format!("conn-{port}.bin"));
        for _ in 0..100 {
            if let Ok(b) = std::fs::read(&path) {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the recorder never wrote {}", path.display());
    };
    let received: Vec<Vec<u8>> = cases.iter().map(|c| received(&c.2)).collect();
    // the capture has drained its socket once its file stops growing
    let mut captured_len = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&capture).map(|m| m.len()).ok();
        if len.is_some() && len == captured_len {
            break;
        }
        captured_len = len;
    }
    // Payload placed by sequence number: a retransmitted segment lands where it was first.
    let mut wire: HashMap<String, (Vec<u8>, std::collections::BTreeSet<String>)> = HashMap::new();
    for line in std::fs::read_to_string(&capture).expect("capture").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        // The recorder's port number may also be another test's client port (taken before the
        // recorder bound it): segments of connections the corpus did not make are not its.
        if !cases.iter().any(|c| c.2 == f[0]) {
            continue;
        }
        let entry = wire.entry(f[0].to_string()).or_default();
        if f[2] != "-" {
            entry.1.extend(f[2].split(',').map(str::to_string));
        }
        if f[3] != "-" {
            assert_ne!(
                f[1], "?",
                "the packet capture missed the SYN of client port {}: its segments cannot be placed",
                f[0]
            );
            let at = f[1].parse::<usize>().expect("seq") - 1;
            let bytes: Vec<u8> = (0..f[3].len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&f[3][i..i + 2], 16).expect("hex"))
                .collect();
            if entry.0.len() < at + bytes.len() {
                entry.0.resize(at + bytes.len(), 0);
            }
            entry.0[at..at + bytes.len()].copy_from_slice(&bytes);
        }
    }
    let out = cases
        .into_iter()
        .zip(received)
        .enumerate()
        .map(|(n, ((name, expected_headers, port), received))| {
            let (on_the_wire, tcp_options) = wire.remove(&port).unwrap_or_default();
            Case {
                name,
                expected_headers,
                sent: std::fs::read(dir.join(format!("case-{n}.bin"))).expect("sent bytes"),
                received,
                on_the_wire,
                tcp_options,
            }
        })
        .collect();
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

static CORPUS_RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `received` with every header seam added taken out, and how many there were: an added header
/// is `traceparent: 00-<32 hex>-<16 hex>-01` right after a request line, where `sent` (walked
/// alongside) does not have those bytes (a client's own traceparent may sit there too).
fn without_injected(received: &[u8], sent: &[u8]) -> (Vec<u8>, usize) {
    const LEN: usize = 70;
    let is_hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let mut out = Vec::with_capacity(received.len());
    let (mut i, mut found) = (0, 0);
    while i < received.len() {
        let rest = &received[i..];
        let after_request_line = out.ends_with(b" HTTP/1.1\r\n") || out.ends_with(b" HTTP/1.0\r\n");
        if after_request_line
            && rest.len() >= LEN
            && rest.starts_with(b"traceparent: 00-")
            && is_hex(&rest[16..48])
            && rest[48] == b'-'
            && is_hex(&rest[49..65])
            && &rest[65..LEN] == b"-01\r\n"
            && rest[16..48].iter().any(|&c| c != b'0')
            && rest[49..65].iter().any(|&c| c != b'0')
            && !sent[out.len().min(sent.len())..].starts_with(&rest[..LEN])
        {
            found += 1;
            i += LEN;
            continue;
        }
        out.push(received[i]);
        i += 1;
    }
    (out, found)
}

#[test]
fn corpus_arrives_byte_for_byte_with_exactly_the_expected_headers_and_options() {
    if !require_root() {
        return;
    }
    // both carriers: the header in the bytes, the TCP option beside them
    let env = [("SEAM_CONTEXT_PROPAGATION".to_string(), "all".to_string())];
    let cases = run_corpus(Some(&env), None, |_| {});
    assert!(cases.len() >= 15, "the whole corpus ran");
    for c in &cases {
        let (stripped, added) = without_injected(&c.received, &c.sent);
        assert_eq!(
            added,
            c.expected_headers,
            "{}: headers added; received starts {:?}",
            c.name,
            String::from_utf8_lossy(&c.received[..c.received.len().min(300)])
        );
        assert!(
            stripped == c.sent,
            "{}: {} bytes sent, {} received ({} after removing the added headers)",
            c.name,
            c.sent.len(),
            c.received.len(),
            stripped.len()
        );
        // the packet capture saw the same: the headers were added on the wire, nothing else
        let (captured, added_on_wire) = without_injected(&c.on_the_wire, &c.sent);
        assert_eq!(
            added_on_wire, c.expected_headers,
            "{}: headers in the capture",
            c.name
        );
        assert!(
            captured == c.sent,
            "{}: capture differs beyond the headers",
            c.name
        );
        // a request given a context also carried it in a kind-25 option; one left alone did not
        assert_eq!(
            c.tcp_options.contains("25"),
            c.expected_headers > 0,
            "{}: TCP options {:?}",
            c.name,
            c.tcp_options
        );
    }
}

#[test]
fn the_wire_is_as_without_seam_when_propagation_is_disabled_or_ctxprop_is_stopped() {
    if !require_root() {
        return;
    }
    let disabled = [(
        "SEAM_CONTEXT_PROPAGATION".to_string(),
        "disabled".to_string(),
    )];
    let enabled_then_stopped = [(
        "SEAM_CONTEXT_PROPAGATION".to_string(),
        "headers".to_string(),
    )];
    let runs = [
        ("no seam", run_corpus(None, None, |_| {})),
        ("disabled", run_corpus(Some(&disabled), None, |_| {})),
        (
            "ctxprop stopped",
            run_corpus(Some(&enabled_then_stopped), None, |stack| {
                let pid = stack.pid_of("ctxprop").expect("ctxprop runs");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .expect("signal ctxprop");
                stack
                    .wait_log(
                        "ctxprop",
                        "detaching; propagation counters",
                        Duration::from_secs(10),
                    )
                    .expect("ctxprop detached");
                for _ in 0..100 {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }),
        ),
    ];
    // The capture of a run without seam is the reference: the same bytes went on the wire, with
    // the same TCP options (kernel defaults: MSS, SACK, timestamps, window scale), and nothing else.
    let reference: HashMap<String, std::collections::BTreeSet<String>> = runs[0]
        .1
        .iter()
        .map(|c| (c.name.clone(), c.tcp_options.clone()))
        .collect();
    for (how, cases) in &runs {
        for c in cases {
            assert!(
                c.received == c.sent && c.on_the_wire == c.sent,
                "{how}: {}: {} bytes sent, {} received, {} captured",
                c.name,
                c.sent.len(),
                c.received.len(),
                c.on_the_wire.len()
            );
            assert_eq!(
                c.tcp_options, reference[&c.name],
                "{how}: {}: TCP options",
                c.name
            );
        }
    }
}

/// The sockhash problem: after a large upload and shutdown(SHUT_WR), a blocking recv() on a
/// socket in a sockhash returned EAGAIN when the FIN's ACK woke it. seam takes each socket out
/// of the sockhash as it leaves ESTABLISHED, so the application never sees that.
#[test]
fn a_large_upload_then_shutdown_and_blocking_recv_never_sees_eagain() {
    if !require_root() {
        return;
    }
    const SIZE: u64 = 1 << 30;
    const ROUNDS: u32 = 20;
    let port = seam_tests::free_port();
    let _sink = seam_tests::start_server("python3", "sink.py", port, "sink").expect("sink");
    let client = GatedShell::new(&format!(
        "timeout 600 python3 {} {port} {SIZE} {ROUNDS}",
        seam_tests::fixture("upload.py").display()
    ))
    .expect("client");
    let mut env = selector_env(&[], &[client.pid()]);
    env.push(("SEAM_CONTEXT_PROPAGATION".into(), "headers".into()));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(client.pid()).expect("targeted");
    let out = client.run().expect("uploads ran");
    let head = "POST /upload HTTP/1.1\r\nHost: sink\r\nContent-Length: 1073741824\r\n\r\n".len();
    // the server counted the body, the head and the one header seam added
    let expected = SIZE + head as u64 + 70;
    assert!(
        out.trim()
            .starts_with(&format!("rounds={ROUNDS} eagain=0 bytes={expected} ")),
        "{out}\n{}",
        stack.all_logs()
    );
    drop(stack);
    eprintln!("upload: {}", out.trim());
}

/// A connection the sk_msg program gives up on (here: not HTTP) is taken out of the sockhash, so
/// its sends stop paying for the sockhash path. Its client is blocked in recv() while that
/// happens; its bytes stay whole before and after, no read sees EAGAIN, and a blocking recv()
/// after shutdown(SHUT_WR) sees the end of the stream.
#[test]
fn a_connection_given_up_leaves_the_sockhash_and_its_bytes_stay_whole() {
    if !require_root() {
        return;
    }
    const ROUNDS: u32 = 40;
    // longer than a sweep (200 ms) and a stats publication (1 s) together
    const ECHO_DELAY_S: u32 = 4;
    let port = seam_tests::free_port();
    let _echo = seam_tests::start_server("python3", "echo.py", port, "echo").expect("echo");
    let client = GatedShell::new(&format!(
        "timeout 120 python3 {} {port} {ECHO_DELAY_S} {ROUNDS}",
        seam_tests::fixture("givenup.py").display(),
    ))
    .expect("client");
    let mut env = selector_env(&[], &[client.pid()]);
    env.push(("SEAM_CONTEXT_PROPAGATION".into(), "headers".into()));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(client.pid()).expect("targeted");
    let client = std::thread::spawn(move || client.run());
    let taken_out = stack.wait_stats("ctxprop", Duration::from_secs(20), |s| {
        s.get("given_back").unwrap_or(0) >= 1
    });
    let client_still_waiting = !client.is_finished();
    let out = client.join().expect("client thread").expect("client ran");
    let taken_out = taken_out.unwrap_or_else(|e| panic!("{e:#}\n{}", stack.all_logs()));
    assert_eq!(
        (
            taken_out.get("sockets"),
            taken_out.get("opaque"),
            taken_out.get("given_back")
        ),
        (Some(1), Some(1), Some(1)),
        "one socket taken, given up and taken out"
    );
    assert!(
        client_still_waiting,
        "the socket left the sockhash only after the client was done"
    );
    assert_eq!(out.trim(), format!("ok {ROUNDS}"), "{}", stack.all_logs());
}

/// `context_propagation` on a selector wins over ctxprop's own, both ways: a selector can keep
/// its processes' traffic untouched while the rest is propagated, or propagate for its processes
/// alone while the default is `disabled`.
#[test]
fn a_selector_overrides_context_propagation_both_ways() {
    if !require_root() {
        return;
    }
    let on = [(
        "SEAM_CONTEXT_PROPAGATION".to_string(),
        "headers".to_string(),
    )];
    for c in run_corpus(Some(&on), Some("disabled"), |_| {}) {
        assert!(
            c.received == c.sent,
            "override disabled: {} was modified",
            c.name
        );
        assert!(!c.tcp_options.contains("25"), "{}", c.name);
    }
    let off = [(
        "SEAM_CONTEXT_PROPAGATION".to_string(),
        "disabled".to_string(),
    )];
    let cases = run_corpus(Some(&off), Some("headers"), |_| {});
    for c in &cases {
        let (stripped, added) = without_injected(&c.received, &c.sent);
        assert_eq!(added, c.expected_headers, "override headers: {}", c.name);
        assert!(stripped == c.sent, "override headers: {}", c.name);
    }
    assert!(cases.iter().map(|c| c.expected_headers).sum::<usize>() > 0);
}
