//! A real S3 server for tests: one single-node Garage process on loopback ports.
//!
//! Garage (AGPL-3.0) is a separate process spoken to over HTTP, never linked. Build it once
//! with `scripts/install-garage.sh`; the binary is found through `MAILFLEET_GARAGE_BIN` or
//! at `~/.cache/mailfleet/tools/bin/garage`. The Python twin is `tests/e2e/s3server.py`.

use mailfleet_core::config::S3Config;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Ports below the kernel's ephemeral range, each handed out once per test process (the
/// reason is in tests/e2e/conftest.py `free_port`: port 0 gave the same port twice).
const PORT_LOW: u16 = 12000;
const PORT_HIGH: u16 = 15000;

fn free_port() -> u16 {
    static NEXT: OnceLock<Mutex<u16>> = OnceLock::new();
    let span = u32::from(PORT_HIGH - PORT_LOW);
    let next = NEXT.get_or_init(|| {
        let offset = (std::process::id().wrapping_mul(7919)) % span;
        Mutex::new(PORT_LOW + offset as u16)
    });
    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..span {
        let port = *next;
        *next = if port + 1 >= PORT_HIGH {
            PORT_LOW
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORT_LOW}-{}", PORT_HIGH - 1);
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// The garage binary, if installed.
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MAILFLEET_GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".cache/mailfleet/tools/bin/garage");
    p.is_file().then_some(p)
}

pub struct Garage {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub s3_port: u16,
    pub rpc_port: u16,
    pub admin_port: u16,
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    provisioned: bool,
}

impl Garage {
    /// Starts a provisioned Garage, or returns `None` (after a notice) when the binary is
    /// missing. Under CI a missing binary is a failure, not a skip.
    pub fn start_or_skip(test: &str) -> Option<Garage> {
        let Some(bin) = garage_bin() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "garage not found: run scripts/install-garage.sh (or set MAILFLEET_GARAGE_BIN)"
                );
            }
            eprintln!(
                "NOTICE: skipping {test}: garage not found; run scripts/install-garage.sh \
                 (or set MAILFLEET_GARAGE_BIN)"
            );
            return None;
        };
        let s3_port = free_port();
        let mut g = Garage {
            bin,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            s3_port,
            rpc_port: free_port(),
            admin_port: free_port(),
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "garage".into(),
            bucket: "mailfleet".into(),
            // Garage's formats: "GK" + 12 bytes of hex, and a 32-byte hex secret.
            access_key_id: format!("GK{}", random_hex(12)),
            secret_access_key: random_hex(32),
            provisioned: false,
        };
        g.write_config();
        g.start();
        Some(g)
    }

    /// A configuration for [`mailfleet_storage::blob::s3::S3BlobStore`] on this bucket.
    pub fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            key_prefix: "test/".into(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            path_style: true,
            ..S3Config::default()
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            meta = d.join("meta").display(),
            data = d.join("data").display(),
            rpc = self.rpc_port,
            secret = random_hex(32),
            region = self.region,
            s3 = self.s3_port,
            admin = self.admin_port,
            token = random_hex(32),
        );
        std::fs::write(self.config_path(), toml).expect("write garage.toml");
    }

    /// Starts the server (same data, same ports) and waits until it serves S3. The key and
    /// bucket are created at the first start only.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "garage already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("garage.log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        self.wait(deadline, "garage RPC", |g| {
            g.cli(&["status"]).status.success()
        });
        if !self.provisioned {
            self.provision();
            self.provisioned = true;
        }
        self.wait(deadline, "garage /health", |g| g.healthy());
    }

    fn provision(&self) {
        let id = self.cli_ok(&["node", "id", "-q"]);
        let node = id.trim().split('@').next().unwrap_or_default().to_string();
        self.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1GB", &node]);
        self.cli_ok(&["layout", "apply", "--version", "1"]);
        self.cli_ok(&[
            "key",
            "import",
            "--yes",
            "-n",
            "mailfleet-test",
            &self.access_key_id,
            &self.secret_access_key,
        ]);
        self.cli_ok(&["bucket", "create", &self.bucket]);
        self.cli_ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            &self.access_key_id,
        ]);
    }

    /// SIGTERM and wait (Garage shuts down cleanly); SIGKILL after 20 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// SIGSTOP: the process keeps its sockets (connections are accepted by the kernel)
    /// but answers nothing, like a hung server.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage CLI")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The admin API's `/health`: 200 once the node can serve requests.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
    }

    fn wait(&mut self, deadline: Instant, what: &str, ready: impl Fn(&Garage) -> bool) {
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!("garage exited ({status}): {}", self.log());
                }
            }
            if ready(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} not ready in time: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}
