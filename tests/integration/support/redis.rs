//! A real `redis-server` (the Debian package) on a free loopback port, for shared limits.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    password: Option<String>,
}

impl RedisServer {
    /// Starts one, with no persistence; panics with a hint when `redis-server` is missing.
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// Starts one that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut r = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            password,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn binary() -> PathBuf {
        for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
            if std::path::Path::new(p).exists() {
                return p.into();
            }
        }
        panic!("redis-server is not installed: run scripts/setup.sh --test (Debian package redis-server)");
    }

    /// Starts the server again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(Self::binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_string(), p.clone()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not come up on port {}", self.port);
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r == "+PONG" || r.starts_with("-NOAUTH"))
    }

    /// One command in RESP; the first reply line (`+OK`, `:3`, `$5`...).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let encode = |args: &[&str]| {
            let mut req = format!("*{}\r\n", args.len());
            for a in args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            req
        };
        let mut req = String::new();
        if let Some(p) = &self.password {
            req.push_str(&encode(&["AUTH", p]));
        }
        req.push_str(&encode(args));
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        if self.password.is_some() {
            r.read_line(&mut line).ok()?;
            line.clear();
        }
        r.read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// Keys in database 0.
    pub fn dbsize(&self) -> u64 {
        self.command(&["DBSIZE"])
            .and_then(|r| r.strip_prefix(':').and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("DBSIZE failed on port {}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
