//! Traces across hosts: each "host" is a network namespace with its own seam stack scoped to its
//! own processes, joined to the others by veth on a bridge; same-host black-box linking is off,
//! so every link between hosts comes from the `traceparent` ctxprop injected.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use seam_tests::chain::{by_request, hex, hop_with, interpreter, request_id, service_log};
use seam_tests::netns::Hosts;
use seam_tests::otlp::{OtlpReceiver, ReceivedSpan};
use seam_tests::{require_root, selector_env, GatedShell, Proc, Stack};

const MIDDLE_PORT: u16 = 18000;
const BACK_PORT: u16 = 18001;

/// One hop (`hop.py` in thread mode, or `hop.js`) on `host`, listening on its address.
fn hop_on(hosts: &Hosts, host: usize, file: &str, port: u16, next: &str, log: &Path) -> Proc {
    let mut cmd = hosts.command(host, interpreter(file));
    cmd.env("HOP_BIND", hosts.addr(host));
    hop_with(cmd, file, port, next, "thread", log)
}

/// A seam stack for one host: its own pids only, `context_propagation` = `mode`, no black-box
/// links.
fn stack_for(pids: &[u32], rx: &OtlpReceiver, mode: &str) -> Stack {
    let mut env = selector_env(&[], pids);
    env.extend(rx.exporter_env("grpc"));
    env.push(("SEAM_DISABLE_BLACK_BOX".into(), "1".into()));
    env.push(("SEAM_CONTEXT_PROPAGATION".into(), mode.into()));
    let stack = Stack::start(&env).expect("stack");
    for &pid in pids {
        stack.wait_target(pid).expect("targeted");
    }
    stack
}

/// Which request each span of a chain belongs to, by span id.
fn span_owners<'a, const N: usize>(
    by_request: &'a HashMap<String, [Option<&'a ReceivedSpan>; N]>,
) -> HashMap<&'a [u8], &'a str> {
    by_request
        .iter()
        .flat_map(|(id, chain)| {
            chain
                .iter()
                .flatten()
                .map(move |s| (&s.span.span_id[..], id.as_str()))
        })
        .collect()
}

struct Outcome {
    complete: usize,
    wrong_parents: usize,
    total: usize,
}

impl Outcome {
    /// Says what linked, and fails on any wrong parent (whatever the fraction complete).
    fn report(&self, case: &str) {
        eprintln!(
            "three hosts, {case}: {}/{} complete",
            self.complete, self.total
        );
        assert_eq!(self.wrong_parents, 0, "{case}: wrong parents");
    }
}

/// Host A (a Python client, `CONCURRENCY` keep-alive connections) → host B (`middle`) → host C
/// (Python): checks every span against the ids each hop received. Returns what linked.
fn across_three_hosts(middle: &str, mode: &str) -> Outcome {
    const TOTAL: usize = 300;
    const CONCURRENCY: usize = 8;
    let hosts = Hosts::create(3).expect("namespaces");
    let dir =
        std::env::temp_dir().join(format!("seam-hosts-{}-{middle}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let (middle_log, back_log) = (dir.join("middle.log"), dir.join("back.log"));
    let back = hop_on(&hosts, 2, "hop.py", BACK_PORT, "-", &back_log);
    let next = format!("http://{}:{BACK_PORT}", hosts.addr(2));
    let mid = hop_on(&hosts, 1, middle, MIDDLE_PORT, &next, &middle_log);
    hosts
        .wait_port(2, BACK_PORT, Duration::from_secs(10))
        .expect("back listens");
    hosts
        .wait_port(1, MIDDLE_PORT, Duration::from_secs(10))
        .expect("middle listens");
    let rx = OtlpReceiver::start().expect("collector");
    let client = GatedShell::new(&format!(
        "CHAIN_HOST={} ip netns exec {} python3 {} {MIDDLE_PORT} {TOTAL} {CONCURRENCY}",
        hosts.addr(1),
        hosts.name(0),
        seam_tests::fixture("chainclient.py").display(),
    ))
    .expect("client");
    let stacks = [
        stack_for(&[client.pid()], &rx, mode),
        stack_for(&[mid.pid()], &rx, mode),
        stack_for(&[back.pid()], &rx, mode),
    ];
    assert_eq!(client.run().expect("client ran").trim(), TOTAL.to_string());

    rx.wait_for(Duration::from_secs(60), |s| s.len() >= 4 * TOTAL);
    std::thread::sleep(Duration::from_millis(1000));
    let spans = rx.spans();
    let logs: String = stacks.iter().map(Stack::all_logs).collect();
    assert_eq!(spans.len(), 4 * TOTAL, "four spans per request\n{logs}");
    // [A→B, B, B→C, C] per request id
    let by_request = by_request::<4>(&spans, &[MIDDLE_PORT, BACK_PORT]);
    assert_eq!(by_request.len(), TOTAL);
    let owner = span_owners(&by_request);
    // What B and C received (hop.js does not log headers).
    let headers = |log: &Path| -> HashMap<String, String> {
        service_log(log)
            .into_iter()
            .filter(|f| f.len() >= 4 && f[2] == "1")
            .map(|f| (f[0].clone(), f[3].clone()))
            .collect()
    };
    let received = [headers(&middle_log), headers(&back_log)];
    if mode == "tcp" {
        // the option alone carried the context: no hop saw a header
        for log in [&middle_log, &back_log] {
            assert!(
                service_log(log).iter().all(|f| f.len() < 3 || f[2] == "0"),
                "{} received a traceparent header",
                log.display()
            );
        }
    }
    let (mut complete, mut wrong) = (0, 0);
    let mut traces: HashMap<&[u8], HashSet<&str>> = HashMap::new();
    for (id, chain) in &by_request {
        let chain: Vec<&ReceivedSpan> = chain.iter().map(|s| s.expect("all four")).collect();
        let mut exact = chain[0].span.parent_span_id.is_empty();
        for pair in chain.windows(2) {
            let (parent, child) = (pair[0], pair[1]);
            let p = &child.span.parent_span_id[..];
            if !p.is_empty() && owner.get(p).is_some_and(|o| o != id) {
                wrong += 1;
            }
            exact &= child.span.parent_span_id == parent.span.span_id
                && child.span.trace_id == parent.span.trace_id;
        }
        for s in &chain {
            traces
                .entry(&s.span.trace_id)
                .or_default()
                .insert(id.as_str());
        }
        // a header a hop received is exactly its caller's client span
        for (hop, got) in received.iter().enumerate() {
            if let Some(h) = got.get(id.as_str()) {
                let call = chain[2 * hop];
                let expected = format!(
                    "00-{}-{}-01",
                    hex(&call.span.trace_id),
                    hex(&call.span.span_id)
                );
                assert_eq!(h, &expected, "{id}: header received at hop {}", hop + 1);
            }
        }
        complete += usize::from(exact);
    }
    let shared = traces.values().filter(|ids| ids.len() > 1).count();
    assert_eq!(shared, 0, "no two requests share a trace");
    drop(stacks);
    Outcome {
        complete,
        wrong_parents: wrong,
        total: TOTAL,
    }
}

#[test]
fn three_hosts_with_a_thread_per_request_middle_are_one_trace_per_request() {
    if !require_root() {
        return;
    }
    let o = across_three_hosts("hop.py", "headers");
    o.report("Python middle");
    assert_eq!(
        o.complete, o.total,
        "every request one trace across the hosts"
    );
}

/// The TCP-option carrier alone (`context_propagation: tcp`; it carries what a header cannot,
/// e.g. TLS): the same chain, no header anywhere.
#[test]
fn three_hosts_linked_by_the_tcp_option_alone_are_one_trace_per_request() {
    if !require_root() {
        return;
    }
    let o = across_three_hosts("hop.py", "tcp");
    o.report("TCP option only");
    assert_eq!(
        o.complete, o.total,
        "every request one trace across the hosts"
    );
}

/// The propagation acceptance over TLS: 300 requests at concurrency 8 on keep-alive HTTPS
/// connections, a Python client on A → `middle` on B → hop.py on C, each server's certificate made
/// by the test; B calls C over HTTPS too when `tls_to_c`, else over plain HTTP. The plaintext is
/// only visible to the TLS library, so the capture chooses each request's context at SSL_write
/// and ctxprop's sockops carries it in the TCP option of the request's first segment. Asserts
/// that every link made is right and that at most `unlinked` requests are not one trace.
fn tls_across_three_hosts(middle: &str, tls_to_c: bool, mode: &str, unlinked: usize) {
    const TOTAL: usize = 300;
    const CONCURRENCY: usize = 8;
    let certs = seam_tests::tls::Certs::make("hosts").expect("certs");
    let hosts = Hosts::create(3).expect("namespaces");
    let logs = certs.dir.join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let hop = |host: usize, file: &str, tls: bool, port: u16, next: &str, log: &str| {
        let mut cmd = hosts.command(host, interpreter(file));
        cmd.env("HOP_BIND", hosts.addr(host));
        if tls {
            cmd.envs(certs.env());
        }
        hop_with(cmd, file, port, next, "thread", &logs.join(log))
    };
    let back = hop(2, "hop.py", tls_to_c, BACK_PORT, "-", "back.log");
    let scheme = if tls_to_c { "https" } else { "http" };
    let next = format!("{scheme}://{}:{BACK_PORT}", hosts.addr(2));
    let mid = hop(1, middle, true, MIDDLE_PORT, &next, "middle.log");
    hosts
        .wait_port(2, BACK_PORT, Duration::from_secs(10))
        .expect("back listens");
    hosts
        .wait_port(1, MIDDLE_PORT, Duration::from_secs(10))
        .expect("middle listens");
    let rx = OtlpReceiver::start().expect("collector");
    // The client is selected itself (a process a target starts is captured from its first
    // instruction, but its libssl is probed only once discover has seen it map the file).
    let mut cmd = hosts.command(0, "python3");
    cmd.arg(seam_tests::fixture("chainclient.py"))
        .args([
            MIDDLE_PORT.to_string(),
            TOTAL.to_string(),
            CONCURRENCY.to_string(),
        ])
        .env("CHAIN_HOST", hosts.addr(1))
        .env("TLS_CA", &certs.cert)
        .env("TLS_WAIT_STDIN", "1");
    let client = GatedShell::spawn(cmd).expect("client starts");
    let stacks = [
        stack_for(&[client.pid()], &rx, mode),
        stack_for(&[mid.pid()], &rx, mode),
        stack_for(&[back.pid()], &rx, mode),
    ];
    let tls_users = if tls_to_c { &stacks[..] } else { &stacks[..2] };
    for s in tls_users {
        s.wait_log("loader", "OpenSSL probed", Duration::from_secs(10))
            .expect("OpenSSL probed");
    }
    let out = client.run().expect("client ran");
    assert_eq!(out.trim(), TOTAL.to_string(), "client: {out}");
    rx.wait_for(Duration::from_secs(60), |s| s.len() >= 4 * TOTAL);
    std::thread::sleep(Duration::from_millis(1000));
    let spans = rx.spans();
    let all_logs: String = stacks.iter().map(Stack::all_logs).collect();
    assert_eq!(spans.len(), 4 * TOTAL, "four spans per request\n{all_logs}");
    let by_request = by_request::<4>(&spans, &[MIDDLE_PORT, BACK_PORT]);
    assert_eq!(by_request.len(), TOTAL);
    // Every link that exists is right; count the whole requests.
    let owner = span_owners(&by_request);
    let over_tls = if tls_to_c { 4 } else { 2 };
    let mut linked = [0usize; 3];
    let mut whole = 0;
    for (id, chain) in &by_request {
        let chain: Vec<&ReceivedSpan> = chain.iter().map(|s| s.expect("all four")).collect();
        assert!(
            chain[0].span.parent_span_id.is_empty(),
            "{id}: A's call is the root"
        );
        for (k, s) in chain.iter().enumerate() {
            let tls = s.attr("seam.capture").as_deref() == Some("tls");
            assert_eq!(tls, k < over_tls, "{id}: span {k} read through TLS or not");
        }
        let mut all = true;
        for (k, pair) in chain.windows(2).enumerate() {
            let parent = &pair[1].span.parent_span_id[..];
            assert!(
                parent.is_empty() || owner.get(parent) == Some(&id.as_str()),
                "{id} hop {k}: a parent from another request"
            );
            let ok = parent == &pair[0].span.span_id[..]
                && pair[1].span.trace_id == pair[0].span.trace_id;
            linked[k] += usize::from(ok);
            all &= ok;
        }
        whole += usize::from(all);
    }
    eprintln!(
        "TLS across three hosts, {middle} at B: {whole}/{TOTAL} whole; links per hop {linked:?}"
    );
    assert!(
        whole + unlinked >= TOTAL,
        "requests one trace across the hosts: {whole}, at least {} (links per hop {linked:?})\n{all_logs}",
        TOTAL - unlinked
    );
    drop(stacks);
}

#[test]
fn tls_across_three_hosts_is_one_trace_per_request_by_the_tcp_option() {
    if !require_root() {
        return;
    }
    tls_across_three_hosts("hop.py", true, "tcp", 0);
}

/// The TLS acceptance with the chain as stated, Node at B: A → B over HTTPS carries the context
/// in the TCP option; B's event loop serves eight connections' requests on one thread, so B's
/// calls to C (plain HTTP, headers) get their request's context from Node's async ids, which for
/// an HTTPS server includes the parser made when each connection's handshake ended.
#[test]
fn tls_to_a_node_middle_is_one_trace_per_request() {
    if !require_root() {
        return;
    }
    tls_across_three_hosts("hop.js", false, "all", 0);
}

/// HTTPS on both hops through Node at B: B's calls to C get their request's context where Node
/// hands them to OpenSSL (its async ids at SSL_write, the same rule as at a plaintext send), and
/// the TCP option carries it. Not yet placed: the first request on each new connection to C
/// (at most the agent's 16 sockets), which Node writes from the connection's handshake callback,
/// a turn later; they start a trace of their own at B, never a wrong one.
#[test]
fn tls_through_a_node_middle_links_each_request_on_an_open_connection() {
    if !require_root() {
        return;
    }
    tls_across_three_hosts("hop.js", true, "tcp", 16);
}

/// The propagation acceptance's chain as stated, Node at B: its event loop serves the eight
/// connections' requests interleaved on one thread, so the context each call carries is chosen
/// by Node's async ids as its write begins (the capture's probe on libuv's `uv__try_write`).
#[test]
fn three_hosts_with_a_node_middle_are_one_trace_per_request() {
    if !require_root() {
        return;
    }
    let o = across_three_hosts("hop.js", "headers");
    o.report("Node middle");
    assert_eq!(
        o.complete, o.total,
        "every request one trace across the hosts"
    );
}

/// One span the SDK on host B wrote (JSON lines from `sdkhop.py`).
#[derive(Debug)]
struct SdkSpan {
    name: String,
    kind: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

fn sdk_spans(path: &Path) -> Vec<SdkSpan> {
    let field = |line: &str, key: &str| -> String {
        let tag = format!("\"{key}\": \"");
        line.split_once(&tag)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap_or_default()
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| SdkSpan {
            name: field(l, "name"),
            kind: field(l, "kind"),
            trace_id: field(l, "trace_id"),
            span_id: field(l, "span_id"),
            parent_id: field(l, "parent_id"),
        })
        .collect()
}

/// Host B runs the OpenTelemetry Python SDK (instrumented by hand, no seam on B): its spans
/// continue the trace seam started on A, and seam on C continues B's.
#[test]
fn a_host_running_the_opentelemetry_sdk_instead_of_seam_continues_and_hands_on_the_trace() {
    if !require_root() {
        return;
    }
    const TOTAL: usize = 100;
    let python = seam_tests::repo_root().join("target/py-otel/bin/python");
    assert!(
        python.exists(),
        "scripts/test installs the OpenTelemetry SDK into target/py-otel"
    );
    let hosts = Hosts::create(3).expect("namespaces");
    let dir = std::env::temp_dir().join(format!("seam-hosts-sdk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let (sdk_file, back_log) = (dir.join("sdk.jsonl"), dir.join("back.log"));
    let back = hop_on(&hosts, 2, "hop.py", BACK_PORT, "-", &back_log);
    let _sdk = Proc {
        child: hosts
            .command(1, &python.display().to_string())
            .arg(seam_tests::fixture("sdkhop.py"))
            .args([
                MIDDLE_PORT.to_string(),
                format!("http://{}:{BACK_PORT}", hosts.addr(2)),
            ])
            .env("SDK_SPAN_FILE", &sdk_file)
            .env("HOP_BIND", hosts.addr(1))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sdk hop starts"),
    };
    hosts
        .wait_port(2, BACK_PORT, Duration::from_secs(10))
        .expect("back listens");
    hosts
        .wait_port(1, MIDDLE_PORT, Duration::from_secs(20))
        .expect("sdk hop listens");
    let rx = OtlpReceiver::start().expect("collector");
    let client = GatedShell::new(&format!(
        "CHAIN_HOST={} ip netns exec {} python3 {} {MIDDLE_PORT} {TOTAL} 4",
        hosts.addr(1),
        hosts.name(0),
        seam_tests::fixture("chainclient.py").display(),
    ))
    .expect("client");
    let stacks = [
        stack_for(&[client.pid()], &rx, "headers"),
        stack_for(&[back.pid()], &rx, "headers"),
    ];
    assert_eq!(client.run().expect("client ran").trim(), TOTAL.to_string());
    rx.wait_for(Duration::from_secs(60), |s| s.len() >= 2 * TOTAL);
    std::thread::sleep(Duration::from_millis(1000));
    let spans = rx.spans();
    let logs: String = stacks.iter().map(Stack::all_logs).collect();
    assert_eq!(
        spans.len(),
        2 * TOTAL,
        "seam: A's call and C's server span per request\n{logs}"
    );
    let sdk = sdk_spans(&sdk_file);
    assert_eq!(
        sdk.len(),
        2 * TOTAL,
        "the SDK's server and client span per request"
    );
    let calls: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| !s.is_server())
        .map(|s| (request_id(s).expect("id"), s))
        .collect();
    let served: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.is_server())
        .map(|s| (request_id(s).expect("id"), s))
        .collect();
    let received: HashMap<String, Vec<String>> = service_log(&back_log)
        .into_iter()
        .map(|f| (f[0].clone(), f))
        .collect();
    for (id, a) in &calls {
        let b_server = sdk
            .iter()
            .find(|s| s.kind == "SERVER" && s.name == format!("GET {id}"))
            .unwrap_or_else(|| panic!("{id}: the SDK's server span"));
        let b_client = sdk
            .iter()
            .find(|s| s.kind == "CLIENT" && s.parent_id == b_server.span_id)
            .unwrap_or_else(|| panic!("{id}: the SDK's client span"));
        let c = served[id];
        let trace = hex(&a.span.trace_id);
        assert_eq!(
            b_server.trace_id, trace,
            "{id}: the SDK continues seam's trace"
        );
        assert_eq!(
            b_server.parent_id,
            hex(&a.span.span_id),
            "{id}: under seam's client span"
        );
        assert_eq!(b_client.trace_id, trace, "{id}");
        assert_eq!(
            hex(&c.span.trace_id),
            trace,
            "{id}: seam on C continues the SDK's trace"
        );
        assert_eq!(
            hex(&c.span.parent_span_id),
            b_client.span_id,
            "{id}: under the SDK's call"
        );
        // C got exactly the SDK's header: seam on A added one, B's SDK replaced it with its own
        let got = &received[id.as_str()];
        assert_eq!(got[2], "1", "{id}: one traceparent at C");
        assert_eq!(
            got[3],
            format!("00-{trace}-{}-01", b_client.span_id),
            "{id}"
        );
    }
    assert_eq!(calls.len(), TOTAL);
    drop(stacks);
}
