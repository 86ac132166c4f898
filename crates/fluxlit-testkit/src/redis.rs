//! A real Redis per test: Debian's `redis-server` (installed by `cargo xtask setup`) on a free
//! 127.0.0.1 port, without persistence (`--save '' --appendonly no`), killed on drop. It can be
//! stopped and started again on the same port, for outage tests. [`RedisServer::start_tls`]
//! also listens with TLS, with a certificate for 127.0.0.1 from a CA made for the server (the
//! `openssl` command, installed by `cargo xtask setup`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How long a started server gets to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// One `redis-server` process (or none, between [`RedisServer::stop`] and
/// [`RedisServer::restart`]).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// The TLS port ([`RedisServer::start_tls`]).
    tls_port: Option<u16>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is missing (with the command that installs it) or does not answer
    /// within 10 s (with its log).
    pub fn start() -> Self {
        Self::start_in(TempDir::new("redis"), None)
    }

    /// [`RedisServer::start`], also listening with TLS on another free port
    /// ([`RedisServer::tls_url`]); the server's certificate (EC P-256, `subjectAltName`
    /// IP 127.0.0.1) is signed by a CA made for it alone ([`RedisServer::ca_file`]). Clients
    /// need no certificate.
    ///
    /// # Panics
    /// As [`RedisServer::start`], and when `openssl` is missing or fails.
    pub fn start_tls() -> Self {
        let dir = TempDir::new("redis-tls");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write the certificate extensions");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=FluxLit test Redis CA",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run openssl ({e}): install it with `cargo xtask setup`")
                });
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::start_in(dir, Some(free_port()))
    }

    fn start_in(dir: TempDir, tls_port: Option<u16>) -> Self {
        let mut server = Self {
            port: free_port(),
            tls_port,
            child: None,
            dir,
        };
        // Another test may take the port between our probe and the server's bind: try again.
        let mut last = String::new();
        for _ in 0..5 {
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    server.port = free_port();
                    server.tls_port = server.tls_port.map(|_| free_port());
                }
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:<TLS port>/` ([`RedisServer::start_tls`]).
    ///
    /// # Panics
    /// When the server was started without TLS.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{port}/")
    }

    /// The PEM file of the CA that signed the TLS certificate ([`RedisServer::start_tls`]).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The port, the same across [`RedisServer::stop`] and [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, as a crash) and waits for it to exit; the port stays ours.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port (empty: nothing was persisted).
    ///
    /// # Panics
    /// When it does not answer `PING` within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(self.tls_port.map_or_else(Vec::new, |p| {
                let d = self.dir.path();
                vec![
                    "--tls-port".to_owned(),
                    p.to_string(),
                    "--tls-cert-file".to_owned(),
                    d.join("server.crt").display().to_string(),
                    "--tls-key-file".to_owned(),
                    d.join("server.key").display().to_string(),
                    "--tls-ca-cert-file".to_owned(),
                    d.join("ca.crt").display().to_string(),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]
            }))
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run redis-server ({e}): install it with `cargo xtask setup` or `apt-get install redis-server`"
                )
            })?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if ping(self.port) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server exited ({status}); log:\n{}",
                    self.log()
                ));
            }
            if start.elapsed() > READY_WITHIN {
                let log = self.log();
                self.kill();
                return Err(format!(
                    "no PONG on port {} within {READY_WITHIN:?}; log:\n{log}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
