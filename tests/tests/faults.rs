//! Fault survival: daemons killed under load come back without the services noticing, and what
//! was lost is accounted for by seam's own counters.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seam_tests::otlp::OtlpReceiver;
use seam_tests::{free_port, require_root, selector_env, start_server, Stack};

/// Requests at a steady pace, each on its own connection, numbered in its path; any answer but a
/// 200 (or no answer) is a failure the service would have seen.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    /// When each request was sent, by number.
    times: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn one_request(port: u16, n: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    // One write: a head split across segments is a different test.
    let request =
        format!("GET /fault/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200 ") || answer.starts_with(b"HTTP/1.0 200 ") {
        Ok(())
    } else {
        Err(format!(
            "answer {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ))
    }
}

impl Load {
    fn start(port: u16, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let (st, se, fa, ti) = (stop.clone(), sent.clone(), failures.clone(), times.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let n = se.load(Ordering::Relaxed);
                ti.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
                if let Err(e) = one_request(port, n) {
                    fa.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("request {n}: {e}"));
                }
                se.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            sent,
            failures,
            times,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn sent_at(&self, n: u64) -> Option<Instant> {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(n as usize)
            .copied()
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.sent(), failures)
    }
}

/// Request numbers the collector has a server span for.
fn spanned(rx: &OtlpReceiver) -> HashSet<u64> {
    rx.spans()
        .iter()
        .filter(|s| s.is_server())
        .filter_map(|s| s.attr("url.path")?.strip_prefix("/fault/")?.parse().ok())
        .collect()
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn counter(stack: &Stack, role: &str, name: &str) -> u64 {
    stack
        .stats(role)
        .ok()
        .and_then(|s| s.get(name))
        .unwrap_or(0)
}

#[test]
fn each_daemon_killed_under_load_comes_back_and_spans_resume() {
    if !require_root() {
        return;
    }
    let rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let server = start_server("python3", "pyserver.py", port, "steady").expect("server");
    let mut env = selector_env(&[port], &[]);
    env.extend(rx.exporter_env("grpc"));
    // Headers on: ctxprop has programs attached when it is killed.
    env.push(("SEAM_CONTEXT_PROPAGATION".into(), "all".into()));
    let stack = Stack::start_supervised(&env).expect("stack");
    stack.wait_target(server.pid()).expect("target");

    let load = Load::start(port, Duration::from_millis(20));
    let warm = rx.wait_for(Duration::from_secs(10), |s| !s.is_empty());
    assert!(!warm.is_empty(), "no spans before any fault");

    let mut report = Vec::new();
    // Spans an exporter held when it was killed: its own last published count of them.
    let mut held_by_killed_exporter = 0;
    for role in ["exporter", "correlator", "loader", "ctxprop", "discover"] {
        let before: Vec<(&str, u32)> = seam_tests::ROLES
            .iter()
            .map(|r| (*r, stack.pid_of(r).expect("running")))
            .collect();
        let victim = stack.pid_of(role).expect("running");
        if role == "exporter" {
            held_by_killed_exporter = counter(&stack, role, "spans_received")
                .saturating_sub(counter(&stack, role, "spans_exported"));
        }
        let ready_before = stack.log_count(role, " ready role=");
        let first_after = load.sent();
        let killed = Instant::now();
        kill9(victim);

        // Back: a new process that logged ready again.
        let deadline = killed + Duration::from_secs(15);
        while stack.log_count(role, " ready role=") <= ready_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let back = killed.elapsed();
        let first_after_back = load.sent();
        let new_pid = stack.pid_of(role).expect("restarted");
        assert_ne!(
            new_pid,
            victim,
            "{role} not restarted:\n{}",
            stack.all_logs()
        );
        assert!(
            stack.log_count(role, " ready role=") > ready_before,
            "{role} never ready again:\n{}",
            stack.log(role)
        );

        // Spans of requests sent once it is back arrive within 5 s of the kill.
        let resumed = rx.wait_for(Duration::from_secs(10), |_| {
            spanned(&rx).iter().any(|&n| n >= first_after_back)
        });
        let resume = spanned(&rx)
            .iter()
            .any(|&n| n >= first_after_back)
            .then(|| killed.elapsed());
        let first_span_after = spanned(&rx).into_iter().filter(|&n| n >= first_after).min();
        assert!(
            resume.is_some_and(|r| r <= Duration::from_secs(5)),
            "{role}: spans resumed after {resume:?} ({} spans in all)\n{}",
            resumed.len(),
            stack.all_logs()
        );
        // The others never stopped.
        for (other, pid) in before {
            if other != role {
                assert_eq!(
                    stack.pid_of(other),
                    Some(pid),
                    "{other} changed when {role} was killed"
                );
            }
        }
        let gap = first_span_after
            .and_then(|n| load.sent_at(n))
            .map(|t| t.saturating_duration_since(killed));
        report.push(format!(
            "{role} (killed at request {first_after}, back at {first_after_back}): back after {back:?}, spans resumed {resume:?} after the kill (first spanned request sent {gap:?} after it)"
        ));
    }

    let (sent, failures) = load.finish();
    assert!(failures.is_empty(), "the service saw errors: {failures:?}");
    // Everything still in flight drains; then count what never arrived.
    std::thread::sleep(Duration::from_secs(3));
    let got = spanned(&rx);
    let lost = (0..sent).filter(|n| !got.contains(n)).count() as u64;
    let counted: Vec<(&str, &str, u64)> = [
        ("correlator", "lost_events"),
        ("correlator", "spans_dropped"),
        ("correlator", "orphan_responses"),
        ("correlator", "unanswered_requests"),
        ("exporter", "spans_dropped"),
        ("exporter", "spans_export_failed"),
    ]
    .into_iter()
    .map(|(role, name)| (role, name, counter(&stack, role, name)))
    .collect();
    for r in &report {
        eprintln!("{r}");
    }
    eprintln!("{sent} requests, {} spans, {lost} lost", got.len());
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for n in (0..sent).filter(|n| !got.contains(n)) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    eprintln!("requests without a span: {runs:?}");
    for (role, name, value) in &counted {
        eprintln!("  {role}.{name} = {value}");
    }
    eprintln!("  spans the killed exporter held = {held_by_killed_exporter}");
    let accounted: u64 = counted.iter().map(|(_, _, v)| v).sum::<u64>() + held_by_killed_exporter;
    // Capture went on from the pinned links while no loader ran; the new one took them over.
    assert_eq!(counter(&stack, "loader", "pins_taken_over"), 1);
    // The new loader pinned the same programs' links as the one it replaced.
    let links_pinned = std::fs::read_dir(&stack.pin_dir)
        .expect("pin dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .count() as u64;
    assert!(links_pinned > 0);
    assert_eq!(counter(&stack, "loader", "links_taken_over"), links_pinned);
    // Every loss has a counter, give or take what a killed daemon did in its last second
    // before publishing (2 % of the load).
    assert!(
        lost <= accounted + sent / 50,
        "{lost} of {sent} requests have no span, {accounted} accounted for by counters:\n{}",
        stack.all_logs()
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_collector_down_for_a_minute_under_load_costs_bounded_memory_and_counted_drops() {
    if !require_root() {
        return;
    }
    let mut rx = OtlpReceiver::start().expect("collector");
    let port = free_port();
    let server = start_server("python3", "pyserver.py", port, "outage").expect("server");
    let mut env = selector_env(&[port], &[]);
    env.extend(rx.exporter_env("grpc"));
    let stack = Stack::start(&env).expect("stack");
    stack.wait_target(server.pid()).expect("target");
    let exporter = stack.pid_of("exporter").expect("exporter");

    let load = Load::start(port, Duration::from_millis(10));
    let warm = rx.wait_for(Duration::from_secs(10), |s| s.len() >= 50);
    assert!(warm.len() >= 50, "no spans before the outage");
    let rss_before = rss_kib(exporter);

    rx.pause();
    let down_from = load.sent();
    let outage = Duration::from_secs(60);
    let started = Instant::now();
    let mut rss_max = rss_before;
    while started.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(rss_kib(exporter));
    }
    let down_to = load.sent();
    let during = stack.stats("exporter").expect("exporter counters");
    rx.resume().expect("collector back");

    // Export resumes: spans of requests sent after the collector came back arrive.
    let resumed = rx.wait_for(Duration::from_secs(15), |_| {
        spanned(&rx).iter().any(|&n| n > down_to)
    });
    let (sent, failures) = load.finish();
    assert!(failures.is_empty(), "the service saw errors: {failures:?}");
    assert!(
        spanned(&rx).iter().any(|&n| n > down_to),
        "export never resumed ({} spans):\n{}",
        resumed.len(),
        stack.log("exporter")
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = stack.stats("exporter").expect("exporter counters");
    let corr = stack.stats("correlator").expect("correlator counters");
    let got = spanned(&rx);
    let missing = (0..sent).filter(|n| !got.contains(n)).count() as u64;
    let dropped = after.get("spans_export_failed").unwrap_or(0)
        + after.get("spans_dropped").unwrap_or(0)
        + corr.get("spans_dropped").unwrap_or(0);
    eprintln!(
        "outage: requests {down_from}..{down_to} of {sent}; exporter RSS {rss_before} KiB before, {rss_max} KiB at most during; \
         {missing} spans missing, {dropped} counted as dropped (export failed {:?}, export queue full {:?}, correlator queue full {:?}); \
         export queue depth during the outage {:?}",
        after.get("spans_export_failed"),
        after.get("spans_dropped"),
        corr.get("spans_dropped"),
        during.get("export_queue_depth"),
    );
    assert!(
        dropped > 0,
        "nothing counted as dropped while the collector was down"
    );
    // What never reached the collector is what the counters say was dropped.
    assert!(
        missing <= dropped + sent / 100,
        "{missing} spans missing but {dropped} counted"
    );
    assert!(
        rss_max <= rss_before + 32 * 1024,
        "exporter grew from {rss_before} KiB to {rss_max} KiB while the collector was down"
    );
}
