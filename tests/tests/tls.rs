//! HTTPS without keys: plaintext read through OpenSSL uprobes, on real TLS with certificates the tests make.

use std::time::Duration;

use seam_tests::otlp::{OtlpReceiver, ReceivedSpan};
use seam_tests::tls::{start_tls_server, Certs, Nginx};
use seam_tests::{free_port, require_root, selector_env, GatedShell, Stack};

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the loader has probed `n` more OpenSSL files than the log showed before.
fn wait_probed(stack: &Stack) {
    stack
        .wait_log("loader", "OpenSSL probed", Duration::from_secs(10))
        .expect("OpenSSL probed");
}

fn is_tls_span(s: &ReceivedSpan) -> bool {
    s.attr("url.scheme").as_deref() == Some("https")
        && s.attr("seam.capture").as_deref() == Some("tls")
}

fn settle(rx: &OtlpReceiver, pred: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    rx.wait_for(WAIT, pred);
    // stragglers arrive now or never: "exactly N" means something
    std::thread::sleep(Duration::from_millis(700));
    rx.spans()
}

#[test]
fn python_https_server_and_urllib_client_both_give_spans() {
    if !require_root() {
        return;
    }
    let certs = Certs::make("py").expect("certs");
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("pytls-{port}");
    let server =
        start_tls_server("python3", "pyserver.py", port, &service, &certs, &[]).expect("server");
    let urls: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "https://127.0.0.1:{port}/status/{}",
                if i % 2 == 0 { 200 } else { 404 }
            )
        })
        .collect();
    let script = format!(
        "TLS_CA={} python3 {} {} 2>&1",
        certs.cert.display(),
        seam_tests::fixture("tlsclient.py").display(),
        urls.join(" ")
    );
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    wait_probed(&stack);
    let out = client.run().expect("client ran");
    assert_eq!(out.lines().count(), 10, "client output: {out}");

    let ours_server = |s: &ReceivedSpan| s.is_server() && s.service() == service;
    let ours_client = |s: &ReceivedSpan| {
        s.is_client() && s.attr("server.port").as_deref() == Some(&port.to_string())
    };
    let spans = settle(&rx, |all| {
        all.iter().filter(|s| ours_server(s)).count() >= 10
            && all.iter().filter(|s| ours_client(s)).count() >= 10
    });
    let mut servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| ours_server(s)).collect();
    let mut clients: Vec<&ReceivedSpan> = spans.iter().filter(|s| ours_client(s)).collect();
    assert_eq!(servers.len(), 10, "server spans\n{}", stack.all_logs());
    assert_eq!(clients.len(), 10, "client spans\n{}", stack.all_logs());
    servers.sort_by_key(|s| s.span.start_time_unix_nano);
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    for (i, (srv, cli)) in servers.iter().zip(&clients).enumerate() {
        let status = if i % 2 == 0 { 200 } else { 404 };
        for s in [srv, cli] {
            assert!(
                is_tls_span(s),
                "span {i} not marked TLS: {:?}",
                s.span.attributes
            );
            assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
            assert_eq!(s.attr("url.path"), Some(format!("/status/{status}")));
            assert_eq!(s.attr_i64("http.response.status_code"), Some(status));
            assert_eq!(
                s.attr_i64("http.response.body.size"),
                Some(7),
                "body is \"status\\n\""
            );
        }
        assert_eq!(
            cli.attr("url.full"),
            Some(format!("https://127.0.0.1:{port}/status/{status}"))
        );
        // the client's span is the server's parent: same host, linked by the connection
        assert_eq!(srv.span.trace_id, cli.span.trace_id, "span {i}: one trace");
        assert_eq!(
            srv.span.parent_span_id, cli.span.span_id,
            "span {i}: parent"
        );
    }
    drop(server);
    stack
        .wait_log("loader", "OpenSSL probes removed", Duration::from_secs(10))
        .expect("probes go with the last user");
}

/// `n` GETs of `paths` (cycled) by one curl over one keep-alive connection; curl prints
/// "status size new-connections" per transfer.
fn curl_script(certs: &Certs, port: u16, paths: &[&str], n: usize, tls_flags: &str) -> String {
    let transfers: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "'https://127.0.0.1:{port}{}' -o /dev/null",
                paths[i % paths.len()]
            )
        })
        .collect();
    format!(
        "curl -s {tls_flags} --cacert {} -w '%{{http_code}} %{{size_download}} %{{num_connects}}\\n' {}",
        certs.cert.display(),
        transfers.join(" ")
    )
}

/// nginx HTTPS with keep-alive and curl: 100 requests on one connection give 100 server and 100
/// client spans, with method, path, status and sizes; the last is a 5 MB body read in many
/// SSL_read calls, whose size and end must be right.
fn nginx_keepalive(protocols: &str, tls_flags: &str) {
    if !require_root() {
        return;
    }
    const N: usize = 100;
    const BIG: usize = 5 * 1024 * 1024;
    let certs = Certs::make("nginx").expect("certs");
    let rx = OtlpReceiver::start().expect("collector");
    let nginx = Nginx::start(&certs, free_port(), None, protocols).expect("nginx");
    nginx.put_file("big.bin", BIG).expect("big file");
    let port = nginx.port;
    // 99 small requests (200 and 404 alternating), then the big one, all on one connection
    let mut script = curl_script(&certs, port, &["/index.html", "/missing"], N - 1, tls_flags);
    script.push_str(&format!(" 'https://127.0.0.1:{port}/big.bin' -o /dev/null"));
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(nginx.proc.pid()).expect("nginx targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    wait_probed(&stack);
    // Debian's SSL_read/SSL_write begin with an instruction the kernel single-steps: their
    // shared internal functions are probed instead (one trap per call, not a trap and a step),
    // and this test's spans come through them.
    assert!(
        stack.log("loader").contains("functions=3 internal=2"),
        "libssl's read and write probed at their internal functions:\n{}",
        stack.log("loader")
    );
    let out = client.run().expect("curl ran");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), N, "curl output: {out}");
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "one connection for all requests: {out}");

    let port_text = port.to_string();
    let ours = |s: &ReceivedSpan| s.attr("server.port").as_deref() == Some(port_text.as_str());
    let spans = settle(&rx, |all| {
        all.iter().filter(|s| ours(s) && s.is_server()).count() >= N
            && all.iter().filter(|s| ours(s) && s.is_client()).count() >= N
    });
    let mut servers: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| ours(s) && s.is_server()).collect();
    let mut clients: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| ours(s) && s.is_client()).collect();
    assert_eq!(servers.len(), N, "server spans\n{}", stack.all_logs());
    assert_eq!(clients.len(), N, "client spans\n{}", stack.all_logs());
    servers.sort_by_key(|s| s.span.start_time_unix_nano);
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    for (i, (srv, cli)) in servers.iter().zip(&clients).enumerate() {
        let fields: Vec<&str> = lines[i].split_whitespace().collect();
        let (status, size): (i64, i64) = (
            fields[0].parse().expect("status"),
            fields[1].parse().expect("size"),
        );
        let path = if i == N - 1 {
            "/big.bin"
        } else if i % 2 == 0 {
            "/index.html"
        } else {
            "/missing"
        };
        for s in [srv, cli] {
            assert!(
                is_tls_span(s),
                "span {i} not marked TLS: {:?}",
                s.span.attributes
            );
            assert_eq!(
                s.attr("http.request.method").as_deref(),
                Some("GET"),
                "span {i}"
            );
            assert_eq!(s.attr("url.path").as_deref(), Some(path), "span {i}");
            assert_eq!(
                s.attr_i64("http.response.status_code"),
                Some(status),
                "span {i}"
            );
            assert_eq!(
                s.attr_i64("http.response.body.size"),
                Some(size),
                "span {i}"
            );
        }
        // same host: the client's span is the server's parent, linked by the connection
        assert_eq!(
            srv.span.parent_span_id,
            cli.span.span_id,
            "span {i}: server {}..{}, client {}..{}",
            srv.span.start_time_unix_nano,
            srv.span.end_time_unix_nano,
            cli.span.start_time_unix_nano,
            cli.span.end_time_unix_nano
        );
    }
    let (srv, cli) = (servers[N - 1], clients[N - 1]);
    assert_eq!(srv.attr_i64("http.response.body.size"), Some(BIG as i64));
    // the client's span ends when its last SSL_read returns, after nginx wrote the last byte
    assert!(
        cli.span.end_time_unix_nano + 2_000_000 >= srv.span.end_time_unix_nano,
        "client ends {} before server {}",
        cli.span.end_time_unix_nano,
        srv.span.end_time_unix_nano
    );
    assert!(nginx
        .error_log()
        .lines()
        .all(|l| !l.contains("[crit]") && !l.contains("[alert]")));
}

#[test]
fn nginx_https_tls13_keepalive_100_requests_and_a_5mb_body() {
    nginx_keepalive("TLSv1.3", "--tlsv1.3");
}

#[test]
fn nginx_https_tls12_keepalive_100_requests_and_a_5mb_body() {
    nginx_keepalive("TLSv1.2", "--tlsv1.2 --tls-max 1.2");
}

/// Node.js links OpenSSL into its executable: the probes go there, and its TLS sockets live on
/// memory BIOs (the ciphertext is read before SSL_read runs, and written after SSL_write).
#[test]
fn node_https_server_with_its_static_openssl_gives_server_spans() {
    if !require_root() {
        return;
    }
    let certs = Certs::make("node").expect("certs");
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("nodetls-{port}");
    let server =
        start_tls_server("node", "nodeserver.js", port, &service, &certs, &[]).expect("server");
    // six requests on one keep-alive connection, then six connections of one request each (Node
    // reuses freed SSL objects for new connections)
    let paths = ["/status/200", "/status/201", "/status/404"];
    let mut script = curl_script(&certs, port, &paths, 6, "");
    for i in 6..12 {
        script.push_str("; ");
        script.push_str(&curl_script(&certs, port, &paths[i % 3..=i % 3], 1, ""));
    }
    let client = GatedShell::new(&script).expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    stack
        .wait_log("loader", "kind=Executable", Duration::from_secs(10))
        .expect("node's executable probed");
    let out = client.run().expect("curl ran");
    assert_eq!(out.lines().count(), 12, "curl output: {out}");
    let ours = |s: &ReceivedSpan| s.is_server() && s.service() == service;
    let spans = settle(&rx, |all| all.iter().filter(|s| ours(s)).count() >= 12);
    let mut servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| ours(s)).collect();
    assert_eq!(servers.len(), 12, "server spans\n{}", stack.all_logs());
    servers.sort_by_key(|s| s.span.start_time_unix_nano);
    for (i, s) in servers.iter().enumerate() {
        let status = [200, 201, 404][i % 3];
        assert!(
            is_tls_span(s),
            "span {i} not marked TLS: {:?}",
            s.span.attributes
        );
        assert_eq!(
            s.attr("url.path"),
            Some(format!("/status/{status}")),
            "span {i}"
        );
        assert_eq!(
            s.attr_i64("http.response.status_code"),
            Some(status),
            "span {i}"
        );
    }
}

/// Python front → nginx (proxy_pass https) → Python back, all TLS on one host: one trace per
/// request with every parent right, linked across processes by the connections alone.
#[test]
fn tls_chain_through_nginx_is_one_trace() {
    use seam_tests::chain::{by_request, hop_with};
    if !require_root() {
        return;
    }
    let certs = Certs::make("chain").expect("certs");
    let rx = OtlpReceiver::start().expect("collector");
    let dir = certs.dir.join("logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let (front_port, back_port) = (free_port(), free_port());
    let hop = |service: &str, port: u16, next: &str| {
        let mut cmd = std::process::Command::new("python3");
        cmd.env("OTEL_SERVICE_NAME", service).envs(certs.env());
        let p = hop_with(
            cmd,
            "hop.py",
            port,
            next,
            "thread",
            &dir.join(format!("{service}.log")),
        );
        seam_tests::wait_port(port, Duration::from_secs(10)).expect("hop listens");
        p
    };
    let back = hop("back", back_port, "-");
    let nginx =
        Nginx::start(&certs, free_port(), Some(back_port), "TLSv1.2 TLSv1.3").expect("nginx");
    let front = hop(
        "front",
        front_port,
        &format!("https://127.0.0.1:{}", nginx.port),
    );
    let ids: Vec<String> = (0..8).map(|i| format!("/r/{i}")).collect();
    let urls: Vec<String> = ids
        .iter()
        .map(|p| format!("https://127.0.0.1:{front_port}{p}"))
        .collect();
    let client = GatedShell::new(&format!(
        "TLS_CA={} python3 {} {}",
        certs.cert.display(),
        seam_tests::fixture("tlsclient.py").display(),
        urls.join(" ")
    ))
    .expect("client");
    let mut env = selector_env(&[front_port, nginx.port, back_port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    for pid in [front.pid(), nginx.proc.pid(), back.pid(), client.pid()] {
        stack.wait_target(pid).expect("targeted");
    }
    wait_probed(&stack);
    let out = client.run().expect("client ran");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("200 ")).count(),
        8,
        "client: {out}"
    );
    let ports = [front_port, nginx.port, back_port];
    let in_chain = |s: &ReceivedSpan| {
        s.attr_i64("server.port")
            .is_some_and(|p| ports.iter().any(|&q| i64::from(q) == p))
    };
    let spans = settle(&rx, |all| {
        all.iter().filter(|s| in_chain(s)).count() >= 8 * 6
    });
    let chain: Vec<ReceivedSpan> = spans.into_iter().filter(|s| in_chain(s)).collect();
    assert_eq!(chain.len(), 8 * 6, "spans\n{}", stack.all_logs());
    let requests = by_request::<6>(&chain, &ports);
    for id in &ids {
        let hops = requests
            .get(id)
            .unwrap_or_else(|| panic!("no spans for {id}"));
        let hops: Vec<&ReceivedSpan> = hops
            .iter()
            .map(|h| h.unwrap_or_else(|| panic!("{id}: a hop has no span")))
            .collect();
        assert!(
            hops[0].span.parent_span_id.is_empty(),
            "{id}: the client's call is the root"
        );
        for k in 1..6 {
            assert!(is_tls_span(hops[k]), "{id} hop {k} not TLS");
            assert_eq!(
                hops[k].span.trace_id, hops[0].span.trace_id,
                "{id} hop {k}: one trace"
            );
            assert_eq!(
                hops[k].span.parent_span_id,
                hops[k - 1].span.span_id,
                "{id} hop {k}: parent"
            );
        }
    }
}

/// A process that maps a "libssl" without OpenSSL's symbols: one clear line from the loader,
/// and its plain HTTP is still captured.
#[test]
fn a_libssl_without_openssl_symbols_is_reported_once_and_plain_capture_goes_on() {
    if !require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("seam-fake-ssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fake = dir.join("libssl.so.3");
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("zlib is installed");
    std::fs::copy(libz, &fake).expect("fake libssl");
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("fakessl-{port}");
    let server = seam_tests::start_server_env(
        "python3",
        "pyserver.py",
        port,
        &service,
        &[("PRELOAD_LIB", fake.to_str().expect("utf-8 path"))],
    )
    .expect("server");
    let client = GatedShell::new(&format!(
        "for i in 1 2 3; do curl -s -o /dev/null http://127.0.0.1:{port}/status/200; done"
    ))
    .expect("client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack
        .wait_log(
            "loader",
            "libssl without usable OpenSSL symbols",
            Duration::from_secs(10),
        )
        .expect("the fake library is reported");
    client.run().expect("curl ran");
    let ours = |s: &ReceivedSpan| s.is_server() && s.service() == service;
    let spans = settle(&rx, |all| all.iter().filter(|s| ours(s)).count() >= 3);
    let plain: Vec<&ReceivedSpan> = spans.iter().filter(|s| ours(s)).collect();
    assert_eq!(plain.len(), 3, "plain spans\n{}", stack.all_logs());
    assert!(plain
        .iter()
        .all(|s| s.attr("url.scheme").as_deref() == Some("http")));
    let log = stack.log("loader");
    assert_eq!(
        log.matches("libssl without usable OpenSSL symbols").count(),
        1,
        "one line for the file\n{log}"
    );
    assert!(stack
        .pid_of("loader")
        .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Node as an HTTPS client (memory BIOs: its socket I/O happens outside OpenSSL's calls), a new
/// connection per request, to a Python HTTPS server on this host: every request has its client
/// span, the first on each connection included (the handshake teaches which socket it uses), and
/// it is the server span's parent.
#[test]
fn node_https_client_spans_on_fresh_connections() {
    if !require_root() {
        return;
    }
    const N: usize = 12;
    let certs = Certs::make("nodeclient").expect("certs");
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let service = format!("pytls-{port}");
    let server =
        start_tls_server("python3", "pyserver.py", port, &service, &certs, &[]).expect("server");
    let urls: Vec<String> = (0..N)
        .map(|i| format!("https://127.0.0.1:{port}/status/20{}", i % 3))
        .collect();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(seam_tests::fixture("tlsclient.js"))
        .args(&urls)
        .env("TLS_CA", &certs.cert)
        .env("TLS_WAIT_STDIN", "1");
    let client = GatedShell::spawn(cmd).expect("node client");
    let mut env = selector_env(&[port], &[client.pid()]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("server targeted");
    stack.wait_target(client.pid()).expect("client targeted");
    stack
        .wait_log("loader", "kind=Executable", Duration::from_secs(10))
        .expect("node's executable probed");
    stack
        .wait_log("loader", "kind=Library", Duration::from_secs(10))
        .expect("the server's libssl probed");
    let out = client.run().expect("client ran");
    assert_eq!(out.lines().count(), N, "client output: {out}");
    let port_text = port.to_string();
    let ours = |s: &ReceivedSpan| s.attr("server.port").as_deref() == Some(port_text.as_str());
    let spans = settle(&rx, |all| {
        all.iter().filter(|s| ours(s) && s.is_client()).count() >= N
            && all.iter().filter(|s| ours(s) && s.is_server()).count() >= N
    });
    let mut clients: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| ours(s) && s.is_client()).collect();
    let mut servers: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| ours(s) && s.is_server()).collect();
    assert_eq!(clients.len(), N, "client spans\n{}", stack.all_logs());
    assert_eq!(servers.len(), N, "server spans\n{}", stack.all_logs());
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    servers.sort_by_key(|s| s.span.start_time_unix_nano);
    for (i, (cli, srv)) in clients.iter().zip(&servers).enumerate() {
        assert!(
            is_tls_span(cli),
            "span {i} not marked TLS: {:?}",
            cli.span.attributes
        );
        assert_eq!(
            cli.attr("url.path"),
            Some(format!("/status/20{}", i % 3)),
            "span {i}"
        );
        assert_eq!(
            cli.attr_i64("http.response.status_code"),
            Some(200 + (i % 3) as i64)
        );
        assert_eq!(
            srv.span.parent_span_id, cli.span.span_id,
            "span {i}: parent"
        );
    }
}
