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
    s.attr("url.scheme").as_deref() == Some("https") && s.attr("seam.capture").as_deref() == Some("tls")
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
    let server = start_tls_server("python3", "pyserver.py", port, &service, &certs, &[])
        .expect("server");
    let urls: Vec<String> = (0..10)
        .map(|i| format!("https://127.0.0.1:{port}/status/{}", if i % 2 == 0 { 200 } else { 404 }))
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
            assert!(is_tls_span(s), "span {i} not marked TLS: {:?}", s.span.attributes);
            assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
            assert_eq!(s.attr("url.path"), Some(format!("/status/{status}")));
            assert_eq!(s.attr_i64("http.response.status_code"), Some(status));
            assert_eq!(s.attr_i64("http.response.body.size"), Some(7), "body is \"status\\n\"");
        }
        assert_eq!(
            cli.attr("url.full"),
            Some(format!("https://127.0.0.1:{port}/status/{status}"))
        );
        // the client's span is the server's parent: same host, linked by the connection
        assert_eq!(srv.span.trace_id, cli.span.trace_id, "span {i}: one trace");
        assert_eq!(srv.span.parent_span_id, cli.span.span_id, "span {i}: parent");
    }
    drop(server);
    stack
        .wait_log("loader", "OpenSSL probes removed", Duration::from_secs(10))
        .expect("probes go with the last user");
}
