//! HTTP/1.x capture end to end: real daemons, real kernel, real servers and clients, spans at a collector.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use seam_tests::otlp::{OtlpReceiver, ReceivedSpan};
use seam_tests::{
    free_port, require_root, selector_env, start_server, watch_server, GatedShell, Stack,
};

const WAIT: Duration = Duration::from_secs(20);

fn path_for(i: usize) -> (String, i64) {
    match i % 4 {
        0 => ("/status/200".to_string(), 200),
        1 => ("/status/404".to_string(), 404),
        2 => ("/status/503".to_string(), 503),
        _ => (format!("/item/{i}"), 200),
    }
}

/// 20 curl requests with different paths and statuses against one server; checks both sides.
fn server_and_curl_spans(interpreter: &str, fixture: &str, protocol: &str) {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("svc-{port}");
    let server = start_server(interpreter, fixture, port, &service).expect("server");
    let script: String = (0..20)
        .map(|i| {
            let (path, _) = path_for(i);
            format!("curl -s -o /dev/null -w '%{{http_code}}\\n' 'http://127.0.0.1:{port}{path}?n={i}'; ")
        })
        .collect();
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env(protocol));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    let codes = client.run().expect("curl ran");
    assert_eq!(codes.lines().count(), 20, "curl output: {codes}");

    let is_ours_server = |s: &ReceivedSpan| s.is_server() && s.service() == service;
    let is_ours_client = |s: &ReceivedSpan| {
        s.is_client() && s.attr("server.port").as_deref() == Some(&port.to_string())
    };
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| is_ours_server(s)).count() >= 20
            && all.iter().filter(|s| is_ours_client(s)).count() >= 20
    });
    // Let any stragglers arrive so "exactly 20" is meaningful.
    std::thread::sleep(Duration::from_millis(500));
    let spans = if spans.len() < rx.spans().len() {
        rx.spans()
    } else {
        spans
    };
    let mut servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| is_ours_server(s)).collect();
    let mut clients: Vec<&ReceivedSpan> = spans.iter().filter(|s| is_ours_client(s)).collect();
    assert_eq!(servers.len(), 20, "server spans\n{}", stack.all_logs());
    assert_eq!(clients.len(), 20, "client spans\n{}", stack.all_logs());
    servers.sort_by_key(|s| s.span.start_time_unix_nano);
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    for (i, (srv, cli)) in servers.iter().zip(&clients).enumerate() {
        let (path, status) = path_for(i);
        assert_eq!(srv.span.name, "GET");
        assert_eq!(srv.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(
            srv.attr("url.path").as_deref(),
            Some(path.as_str()),
            "span {i}"
        );
        assert_eq!(srv.attr("url.query"), Some(format!("n={i}")));
        assert_eq!(srv.attr_i64("http.response.status_code"), Some(status));
        assert_eq!(
            srv.span.status.as_ref().map_or(0, |s| s.code),
            if status >= 500 { 2 } else { 0 }
        );
        assert!(srv.duration() > Duration::ZERO && srv.duration() < Duration::from_secs(2));
        assert_eq!(
            srv.resource.get("process.pid"),
            Some(&server.pid().to_string())
        );
        assert_eq!(
            cli.attr("url.full"),
            Some(format!("http://127.0.0.1:{port}{path}?n={i}"))
        );
        assert_eq!(cli.attr_i64("http.response.status_code"), Some(status));
        assert_eq!(cli.service(), "curl");
        // Causal order only: curl wrote before the server read, and the server read before curl
        // got its answer. (End times are not ordered: on loopback the reader may return before
        // the writer's syscall exits.)
        assert!(
            cli.span.start_time_unix_nano <= srv.span.start_time_unix_nano,
            "span {i}: client starts {} ns after server\n{}",
            cli.span.start_time_unix_nano - srv.span.start_time_unix_nano,
            stack.all_logs()
        );
        assert!(
            srv.span.start_time_unix_nano <= cli.span.end_time_unix_nano,
            "span {i}: server starts after client ends"
        );
    }
    if protocol == "grpc" {
        assert!(rx.requests_via("grpc") > 0);
    } else {
        assert!(rx.requests_via("http") > 0);
    }
    let metrics = {
        let start = std::time::Instant::now();
        loop {
            let m = rx.metric_names();
            let both = [
                "http.server.request.duration",
                "http.client.request.duration",
            ]
            .iter()
            .all(|want| m.iter().any(|n| n == want));
            if both || start.elapsed() > WAIT {
                break m;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        metrics.iter().any(|n| n == "http.server.request.duration"),
        "{metrics:?}"
    );
    assert!(
        metrics.iter().any(|n| n == "http.client.request.duration"),
        "{metrics:?}"
    );
    let codes = stack.stop();
    assert!(
        codes.iter().all(|(_, c)| *c == Some(0)),
        "exit codes {codes:?}"
    );
}

#[test]
fn python_server_and_curl_over_grpc() {
    server_and_curl_spans("python3", "pyserver.py", "grpc");
}

#[test]
fn python_server_and_curl_over_http_protobuf() {
    server_and_curl_spans("python3", "pyserver.py", "http/protobuf");
}

#[test]
fn node_server_and_curl() {
    server_and_curl_spans("node", "nodeserver.js", "grpc");
}

fn keep_alive(batch: usize) {
    if !require_root() {
        return;
    }
    let w = watch_server("python3", "pyserver.py", "ka", &[], &[]).expect("watched server");
    let (rx, port, service, stack) = (&w.rx, w.port, w.service.as_str(), &w.stack);
    let out = Command::new("python3")
        .arg(seam_tests::fixture("kaclient.py"))
        .args([port.to_string(), "200".into(), batch.to_string()])
        .output()
        .expect("client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| s.service() == service).count() >= 200
    });
    let mut ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service() == service).collect();
    assert_eq!(ours.len(), 200, "{}", stack.all_logs());
    ours.sort_by_key(|s| s.span.start_time_unix_nano);
    let peer_ports: std::collections::HashSet<Option<String>> =
        ours.iter().map(|s| s.attr("network.peer.port")).collect();
    assert_eq!(peer_ports.len(), 1, "all on one connection");
    for (i, s) in ours.iter().enumerate() {
        assert_eq!(s.attr("url.path"), Some(format!("/ka/{i}")));
        assert_eq!(s.attr_i64("http.response.status_code"), Some(200));
    }
}

#[test]
fn keep_alive_200_requests_in_order() {
    keep_alive(1);
}

#[test]
fn pipelined_requests_in_order() {
    keep_alive(10);
}

#[test]
fn large_upload_and_response_in_many_writes() {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("big-{port}");
    let server = start_server("python3", "pyserver.py", port, &service).expect("server");
    let body = std::env::temp_dir().join(format!("seam-5mb-{port}"));
    std::fs::write(&body, vec![b'a'; 5_000_000]).expect("body file");
    let script = format!(
        "curl -s -o /dev/null -X POST --data-binary @{} http://127.0.0.1:{port}/upload; \
         curl -s -o /dev/null 'http://127.0.0.1:{port}/bytes/200000?writes=50&delay_ms=10'",
        body.display()
    );
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server");
    stack.wait_target(client.pid()).expect("client");
    client.run().expect("curl");
    let spans = rx.wait_for(WAIT, |all| {
        all.iter()
            .filter(|s| s.attr("server.port") == Some(port.to_string()))
            .count()
            >= 4
    });
    let _ = std::fs::remove_file(&body);
    let find = |server: bool, path: &str| {
        spans
            .iter()
            .find(|s| s.is_server() == server && s.attr("url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no {path} span (server={server})\n{}", stack.all_logs()))
    };
    for server_side in [true, false] {
        let up = find(server_side, "/upload");
        assert_eq!(up.attr("http.request.method").as_deref(), Some("POST"));
        assert_eq!(up.attr_i64("http.request.body.size"), Some(5_000_000));
        assert_eq!(up.attr_i64("http.response.status_code"), Some(201));
        let down = find(server_side, "/bytes/200000");
        assert_eq!(down.attr_i64("http.response.body.size"), Some(200_000));
        // 50 writes 10 ms apart: the span must end with the last write, not the first.
        assert!(
            down.duration() >= Duration::from_millis(450),
            "{:?}",
            down.duration()
        );
        assert!(down.duration() < Duration::from_secs(5));
    }
}

/// A dual-stack server: curl over IPv6 ([::1]) and over IPv4 (mapped onto the IPv6 socket).
/// Both sides' spans carry the peer as it is (`::1`, and `127.0.0.1` rather than its mapped
/// form), and a client's `url.full` brackets the IPv6 literal.
#[test]
fn ipv6_and_mapped_ipv4_peers() {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("v6-{port}");
    let server = seam_tests::start_server_env(
        "python3",
        "pyserver.py",
        port,
        &service,
        &[("BIND_ADDR", "::")],
    )
    .expect("server");
    let hosts = ["[::1]", "127.0.0.1", "[::1]", "127.0.0.1"];
    let script: String = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!("curl -gs -o /dev/null 'http://{h}:{port}/status/200?n={i}'; sleep 0.05; ")
        })
        .collect();
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    client.run().expect("curl ran");
    let ours = |s: &ReceivedSpan| s.attr("server.port").as_deref() == Some(&port.to_string());
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| ours(s)).count() >= 2 * hosts.len()
    });
    let by_query = |server_side: bool, i: usize| {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| ours(s) && s.is_server() == server_side)
            .filter(|s| {
                s.attr("url.query") == Some(format!("n={i}"))
                    || s.attr("url.full")
                        .is_some_and(|u| u.ends_with(&format!("?n={i}")))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "request {i}, server side {server_side}\n{}",
            stack.all_logs()
        );
        found[0]
    };
    for (i, h) in hosts.iter().enumerate() {
        let ip = h.trim_start_matches('[').trim_end_matches(']');
        let srv = by_query(true, i);
        let cli = by_query(false, i);
        assert_eq!(srv.service(), service);
        assert_eq!(
            srv.attr("network.peer.address").as_deref(),
            Some(ip),
            "request {i}"
        );
        assert_eq!(
            srv.attr("client.address").as_deref(),
            Some(ip),
            "request {i}"
        );
        assert_eq!(
            srv.attr("server.address").as_deref(),
            Some(ip),
            "request {i}"
        );
        assert_eq!(cli.service(), "curl");
        assert_eq!(
            cli.attr("network.peer.address").as_deref(),
            Some(ip),
            "request {i}"
        );
        assert_eq!(
            cli.attr("url.full"),
            Some(format!("http://{h}:{port}/status/200?n={i}"))
        );
        assert_eq!(cli.attr_i64("http.response.status_code"), Some(200));
        // same-host link: the server span is the child of curl's
        assert_eq!(srv.span.trace_id, cli.span.trace_id, "request {i}");
        assert_eq!(srv.span.parent_span_id, cli.span.span_id, "request {i}");
    }
}

#[test]
fn plain_tcp_echo_makes_no_spans() {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start().expect("collector");
    let echo_port = free_port();
    let http_port = free_port();
    let echo = start_server("python3", "echo.py", echo_port, "echo").expect("echo");
    let http = start_server("python3", "pyserver.py", http_port, "control").expect("http");
    let mut env = selector_env(&[echo_port, http_port], &[]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(echo.pid()).expect("echo targeted");
    stack.wait_target(http.pid()).expect("http targeted");
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", echo_port)).expect("connect");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        for i in 0..50 {
            writeln!(s, "line {i} GET / HTTP/1.1 inside a line").expect("write");
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            assert!(line.starts_with(&format!("line {i}")));
        }
    }
    // A control request proves the pipeline was live while the echo traffic flowed.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{http_port}/control"),
        ])
        .status()
        .expect("curl");
    assert!(out.success());
    let spans = rx.wait_for(WAIT, |all| all.iter().any(|s| s.service() == "control"));
    assert!(
        spans.iter().any(|s| s.service() == "control"),
        "{}",
        stack.all_logs()
    );
    assert!(
        !spans.iter().any(|s| s.service() == "echo"),
        "echo made spans"
    );
    let logs = stack.all_logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[test]
fn incoming_traceparent_is_continued() {
    if !require_root() {
        return;
    }
    let w = watch_server("python3", "pyserver.py", "tp", &[], &[]).expect("watched server");
    let (rx, port, service, stack) = (&w.rx, w.port, w.service.as_str(), &w.stack);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (path, header) in [
        ("/valid", tp),
        (
            "/invalid",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ),
    ] {
        let ok = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-H",
                &format!("traceparent: {header}"),
            ])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .status()
            .expect("curl");
        assert!(ok.success());
    }
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| s.service() == service).count() >= 2
    });
    let by_path = |p: &str| {
        spans
            .iter()
            .find(|s| s.service() == service && s.attr("url.path").as_deref() == Some(p))
            .unwrap_or_else(|| panic!("no span for {p}\n{}", stack.all_logs()))
    };
    let valid = by_path("/valid");
    assert_eq!(
        hex(&valid.span.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(hex(&valid.span.parent_span_id), "00f067aa0ba902b7");
    let invalid = by_path("/invalid");
    assert_ne!(
        hex(&invalid.span.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert!(invalid.span.parent_span_id.is_empty());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn chunked_response_ends_with_its_last_chunk() {
    if !require_root() {
        return;
    }
    let w = watch_server("node", "nodeserver.js", "chunk", &[], &[]).expect("watched server");
    let (rx, port, service, stack) = (&w.rx, w.port, w.service.as_str(), &w.stack);
    // Two on one connection: the first must end on its terminator, not when the second starts.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/chunked/40"))
        .arg(format!("http://127.0.0.1:{port}/status/204"))
        .status()
        .expect("curl");
    assert!(out.success());
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| s.service() == service).count() >= 2
    });
    let chunked = spans
        .iter()
        .find(|s| s.service() == service && s.attr("url.path").as_deref() == Some("/chunked/40"))
        .unwrap_or_else(|| panic!("no chunked span\n{}", stack.all_logs()));
    // 40 chunks 5 ms apart: at least ~195 ms, and the body is 40 000 bytes plus chunk framing.
    assert!(
        chunked.duration() >= Duration::from_millis(190),
        "{:?}",
        chunked.duration()
    );
    let body = chunked.attr_i64("http.response.body.size").expect("size");
    assert!((40_000..41_000).contains(&body), "{body}");
    let next = spans
        .iter()
        .find(|s| s.service() == service && s.attr("url.path").as_deref() == Some("/status/204"))
        .expect("second request");
    assert!(next.span.start_time_unix_nano >= chunked.span.end_time_unix_nano);
}

/// Responses sent whole by one `writev` or `sendmsg`, head in the first buffer and body in the
/// second: the capture ships the head only, and the send's last bytes tell a chunked body's end.
/// Each client holds its connection open until the spans are in, so neither a close nor a next
/// request can be what ended them.
#[test]
fn vectored_responses_end_with_their_send() {
    if !require_root() {
        return;
    }
    let w = watch_server("python3", "pyserver.py", "vec", &[], &[]).expect("watched server");
    let (rx, port, service, stack) = (&w.rx, w.port, w.service.as_str(), &w.stack);
    let cases = [
        ("writev", 0, 3000),
        ("sendmsg", 0, 3000),
        // one 3000-byte chunk: "bb8\r\n", the data, "\r\n", then "0\r\n\r\n"
        ("writev", 1, 3012),
        ("sendmsg", 1, 3012),
    ];
    let paths: Vec<String> = cases
        .iter()
        .map(|(call, chunked, _)| format!("/vectored/3000?call={call}&chunked={chunked}"))
        .collect();
    let mut clients = Vec::new();
    for path in &paths {
        let mut child = Command::new("python3")
            .arg(seam_tests::fixture("holdclient.py"))
            .arg(port.to_string())
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("client output");
        assert_eq!(
            line.trim(),
            "3000",
            "{path}: the client read the whole body"
        );
        clients.push(child);
    }
    let spans = rx.wait_for(WAIT, |all| {
        all.iter().filter(|s| s.service() == service).count() >= cases.len()
    });
    for child in &mut clients {
        assert!(
            child.try_wait().expect("client state").is_none(),
            "a client left before the spans were in"
        );
    }
    for ((call, chunked, body), path) in cases.iter().zip(&paths) {
        let span = spans
            .iter()
            .find(|s| {
                s.service() == service
                    && s.attr("url.query").as_deref() == path.split_once('?').map(|(_, q)| q)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no span for {call} chunked={chunked} while its connection was open\n{}",
                    stack.all_logs()
                )
            });
        assert_eq!(span.attr_i64("http.response.status_code"), Some(200));
        assert_eq!(
            span.attr_i64("http.response.body.size"),
            Some(*body),
            "{call} chunked={chunked}"
        );
    }
    for mut child in clients {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
