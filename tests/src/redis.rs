//! A real `redis-server` per test: a free port, a temporary directory, no
//! persistence. Never a mock: the Redis engine is tested against the server
//! Debian ships (`.ci/run` installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of its own: a free port, a temporary directory, no
/// persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Set by [`RedisServer::start_tls`]: TLS only, behind a password.
    tls: Option<Tls>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("stellwerk-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            dir,
            tls: None,
            child: None,
        };
        server.restart();
        server
    }

    /// A server that speaks TLS only (a certificate for `localhost` from a CA made for
    /// this server, see [`Self::ca_file`]) and wants `password`, as a computing centre's
    /// Redis on another machine would.
    pub fn start_tls(password: &str) -> RedisServer {
        let mut server = RedisServer::start();
        server.stop();
        server.tls = Some(Tls::make(&server.dir, password));
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>/`, or for [`Self::start_tls`]
    /// `rediss://:<password>@localhost:<port>/`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(tls) => format!("rediss://:{}@localhost:{}/", tls.password, self.port),
        }
    }

    /// The CA that signed a TLS server's certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|_| self.dir.join("ca.pem"))
    }

    /// Starts the server (again, after [`Self::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-auth-clients", "no", "--requirepass", &tls.password])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key")),
        };
        let child = command
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (Debian package redis-server; .ci/run installs it)",
            );
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, made with the `openssl` command.
struct Tls {
    password: String,
}

impl Tls {
    fn make(dir: &std::path::Path, password: &str) -> Tls {
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed (Debian package openssl)");
            assert!(status.success(), "openssl {args:?} failed");
        };
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stellwerk test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Tls {
            password: password.to_owned(),
        }
    }
}
