//! TLS fixtures made by the tests themselves: a self-signed certificate and an HTTPS nginx.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{wait_port, Proc};

/// A self-signed certificate for 127.0.0.1 / localhost in its own directory.
#[derive(Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn make(tag: &str) -> Result<Self> {
        // tests of one binary run at once, some with the same tag: each gets its own directory
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "seam-tls-{tag}-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (install the openssl package)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir, cert, key })
    }

    /// Environment for the fixtures that speak TLS (server: TLS_CERT/TLS_KEY, client: TLS_CA).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TLS_CERT".into(), self.cert.display().to_string()),
            ("TLS_KEY".into(), self.key.display().to_string()),
            ("TLS_CA".into(), self.cert.display().to_string()),
        ]
    }
}

/// nginx serving HTTPS with keep-alive from `www` (one worker), optionally proxying `/r/` to an
/// HTTPS upstream on loopback (over keep-alive connections).
#[derive(Debug)]
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    pub www: PathBuf,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(certs: &Certs, port: u16, upstream: Option<u16>, protocols: &str) -> Result<Self> {
        let dir = certs.dir.join(format!("nginx-{port}"));
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), b"hello over tls\n")?;
        let proxy = if upstream.is_some() {
            "location /r/ { proxy_pass https://u; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_ssl_verify off; proxy_ssl_session_reuse on; }"
        } else {
            ""
        };
        let upstream_block = upstream.map_or(String::new(), |up| {
            format!("upstream u {{ server 127.0.0.1:{up}; keepalive 4; }}")
        });
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; keepalive_requests 100000; {upstream_block}\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_protocols {protocols};\n\
                 ssl_certificate {cert}; ssl_certificate_key {key}; root {www};\n\
                 {proxy} }} }}\n",
            d = dir.display(),
            cert = certs.cert.display(),
            key = certs.key.display(),
            www = www.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let proc = Proc { child };
        wait_port(port, Duration::from_secs(10))?;
        Ok(Self {
            proc,
            port,
            www,
            dir,
        })
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Writes a file of `len` bytes under the web root.
    pub fn put_file(&self, name: &str, len: usize) -> Result<()> {
        std::fs::write(self.www.join(name), vec![b'z'; len])?;
        Ok(())
    }
}

impl Drop for Nginx {
    /// A master killed outright leaves its worker running (and listening): asked to quit, it
    /// stops the worker first. `proc` then reaps it (or kills it, if it did not stop).
    fn drop(&mut self) {
        let master = nix::unistd::Pid::from_raw(self.proc.child.id() as i32);
        if nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.proc.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a fixture server (`python3 FILE PORT` or `node FILE PORT`) serving HTTPS with `certs`.
pub fn start_tls_server(
    interpreter: &str,
    fixture_name: &str,
    port: u16,
    service: &str,
    certs: &Certs,
    extra: &[(&str, &str)],
) -> Result<Proc> {
    let mut cmd = Command::new(interpreter);
    cmd.arg(crate::fixture(fixture_name))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service)
        .envs(certs.env())
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {interpreter} {fixture_name}"))?;
    let p = Proc { child };
    wait_port(port, Duration::from_secs(10))?;
    Ok(p)
}
