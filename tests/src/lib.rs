//! Shared harness for Doppel's end-to-end tests.
//!
//! * [`Node`] runs a real `doppel-node serve` process on a loopback port with
//!   its own data directory, waits for its ready line, and kills it on drop.
//!   It can be killed with SIGKILL ([`Node::kill9`]), stopped gracefully with
//!   SIGTERM ([`Node::terminate`]) and started again on the same data
//!   ([`Node::restart`]).
//! * [`Client`] is a blocking HTTP client with timeouts that never panics on
//!   4xx/5xx answers: every call returns a [`Resp`] holding the status, the
//!   Content-Type and the JSON body, with assertion helpers for success and
//!   for `application/problem+json` errors.
//! * [`Db`] addresses one database and wraps its routes (records, scans, alt
//!   lookups, batches, interactive transactions, snapshots, log, checksums);
//!   [`op`] builds transaction op objects.
//! * Auth: every node the harness starts is configured with the test keys of
//!   [`auth_toml`] (an HS256 key and an EdDSA key), and every [`Client`] sends the node
//!   administrator's token ([`admin_token`]) unless told otherwise
//!   ([`Client::with_token`], [`Client::without_token`], [`Client::with_authorization`]).
//!   [`token`] and [`keyring`] mint tokens for any tenant and role.
//! * [`postgres::Postgres`] runs a real PostgreSQL server (initdb, pg_ctl) for the
//!   tests of PostgreSQL targets.
//! * [`wait_until`] polls a condition against a deadline: tests never sleep
//!   to synchronise and never assert timings.

pub mod chaos;
pub mod cli;
pub mod etcd;
pub mod netns;
pub mod postgres;

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use doppel_server::tenancy::auth::{AuthConfig, KeyConfig, Keyring};
pub use doppel_server::tenancy::roles::Role;
use parking_lot::Mutex;
pub use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a spawned server may take to print its ready line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Overall timeout of every HTTP call made by the harness.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The request body limit the server enforces.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

const READY_PREFIX: &str = "doppel listening on ";
const STDERR_TAIL_LINES: usize = 300;
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

/// `kid` of the test HS256 key.
pub const HS_KID: &str = "test-hs";
/// `kid` of the test EdDSA key.
pub const ED_KID: &str = "test-ed";
/// The test HS256 secret (base64 of 32 bytes).
pub const HS_SECRET: &str = "2NHZLtpOIpiurLauq38zVWVVxFcodPJWgM1DuSXbe5Q=";
/// The test Ed25519 key pair.
pub const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB0f25soElzxs7LxgatwHt//EITWHF//WBb+3SWlTHWu\n-----END PRIVATE KEY-----\n";
pub const ED_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEMdOulg6NWBQBJ0fa2GnxtCVGcDWJcfmEeRZlO2bQ0U=\n-----END PUBLIC KEY-----\n";

/// The `[auth]` section of every harness node, as a config value.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        keys: vec![
            KeyConfig {
                kid: HS_KID.into(),
                alg: "HS256".into(),
                secret: Some(HS_SECRET.into()),
                public_key_pem: None,
                private_key_pem: None,
            },
            KeyConfig {
                kid: ED_KID.into(),
                alg: "EdDSA".into(),
                secret: None,
                public_key_pem: Some(ED_PUBLIC_PEM.into()),
                private_key_pem: Some(ED_PRIVATE_PEM.into()),
            },
        ],
        ..AuthConfig::default()
    }
}

/// The `[auth]` section of every harness node, as TOML to append to a config file.
pub fn auth_toml() -> String {
    let mut text = String::from("\n[auth]\nissuer = \"doppel\"\naudience = \"doppel\"\n");
    text.push_str(&format!(
        "[[auth.keys]]\nkid = \"{HS_KID}\"\nalg = \"HS256\"\nsecret = \"{HS_SECRET}\"\n"
    ));
    text.push_str(&format!(
        "[[auth.keys]]\nkid = \"{ED_KID}\"\nalg = \"EdDSA\"\npublic_key_pem = \"\"\"\n{ED_PUBLIC_PEM}\"\"\"\nprivate_key_pem = \"\"\"\n{ED_PRIVATE_PEM}\"\"\"\n"
    ));
    text
}

/// The keyring of the test keys (signs with the HS256 key by default).
pub fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| Keyring::new(&auth_config()).expect("test keys are valid"))
}

/// A one-hour token for `tenant` ("*" for the node administrator) and `role`.
pub fn token(tenant: &str, role: Role) -> String {
    keyring()
        .issue(&format!("{}-{tenant}", role.name()), tenant, role, 3600)
        .expect("sign a test token")
}

/// The node administrator's token (tenant "*", admin) every client sends by default.
pub fn admin_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| token("*", Role::Admin))
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// A deadline `timeout` from now.
pub fn deadline_in(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// Polls `cond` until it holds (returns `true`) or `deadline` passes
/// (returns `false`). The condition is always evaluated at least once.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Polling interval only; correctness never depends on it.
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// Path of the `doppel-node` binary built by Cargo for these tests.
///
/// `cargo test` exports `CARGO_BIN_EXE_doppel-node` to integration tests (at
/// compile time for `env!` and at run time); `DOPPEL_NODE_BIN` overrides it.
/// As a last resort the binary is looked up next to the test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/doppel-node`).
pub fn node_binary() -> PathBuf {
    for var in ["DOPPEL_NODE_BIN", "CARGO_BIN_EXE_doppel-node"] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(format!("doppel-node{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "doppel-node binary not found at {}; run the tests with `cargo test -p doppel-tests`",
        path.display()
    );
    path
}

/// A running (or stopped) `doppel-node serve` process and its data directory.
///
/// The process is SIGKILLed when the `Node` is dropped; if the test is
/// panicking, the tail of the server's stderr is printed to help diagnosis.
pub struct Node {
    bin: PathBuf,
    data_dir: PathBuf,
    config: PathBuf,
    _config_dir: TempDir,
    _tmp: Option<TempDir>,
    child: Option<Child>,
    client: Client,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    starts: u32,
    /// Keep the API address across restarts (peers keep finding the node).
    sticky: bool,
    /// Run inside this host of a [`netns::Net`]: (namespace, address).
    host: Option<(String, String)>,
}

impl Node {
    /// Starts a server on a fresh temporary data directory owned by the node.
    pub fn start() -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("doppel-e2e-")
            .tempdir()
            .expect("create temp data dir");
        let data_dir = tmp.path().to_path_buf();
        Node::launch(data_dir, Some(tmp))
    }

    /// Starts a server on an existing data directory that the caller owns.
    pub fn start_in(dir: &Path) -> Node {
        Node::launch(dir.to_path_buf(), None)
    }

    /// Starts a sticky server (see [`Node::start_sticky`]) whose config file adds
    /// `extra` (TOML, e.g. a `[cluster]` table) to the test keys.
    pub fn start_configured(extra: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("doppel-e2e-")
            .tempdir()
            .expect("create temp data dir");
        let data_dir = tmp.path().to_path_buf();
        let mut node = Node::prepare(data_dir, Some(tmp), extra);
        node.sticky = true;
        node.spawn();
        node
    }

    /// Starts a sticky server inside host `i` of `net` (its own network stack), listening
    /// on the host's address; the node's client makes its calls from that host.
    pub fn start_on_host(net: &netns::Net, i: usize, extra: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("doppel-e2e-")
            .tempdir()
            .expect("create temp data dir");
        let data_dir = tmp.path().to_path_buf();
        let mut node = Node::prepare(data_dir, Some(tmp), extra);
        node.sticky = true;
        let h = &net.hosts[i];
        node.host = Some((h.ns.clone(), h.ip.clone()));
        node.spawn();
        node
    }

    /// Starts a server that keeps its API address when restarted, as a replication
    /// peer must (its links name it by URL).
    pub fn start_sticky() -> Node {
        let mut node = Node::start();
        node.sticky = true;
        node
    }

    fn launch(data_dir: PathBuf, tmp: Option<TempDir>) -> Node {
        let mut node = Node::prepare(data_dir, tmp, "");
        node.spawn();
        node
    }

    fn prepare(data_dir: PathBuf, tmp: Option<TempDir>, extra: &str) -> Node {
        let config_dir = tempfile::Builder::new()
            .prefix("doppel-e2e-config-")
            .tempdir()
            .expect("create temp config dir");
        let config = config_dir.path().join("doppel.toml");
        std::fs::write(&config, auth_toml() + extra).expect("write the test config");
        Node {
            bin: node_binary(),
            data_dir,
            config,
            _config_dir: config_dir,
            _tmp: tmp,
            child: None,
            client: Client::new("http://127.0.0.1:0"),
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
            sticky: false,
            host: None,
        }
    }

    /// Spawns the process and waits for its ready line. Panics (after killing
    /// the process, via `Drop`) if it does not become ready in time.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let generation = self.starts;
        let ip = self
            .host
            .as_ref()
            .map_or("127.0.0.1", |(_, ip)| ip.as_str());
        let listen = match (self.sticky, self.client.base.strip_prefix("http://")) {
            (true, Some(addr)) if !addr.ends_with(":0") => addr.to_string(),
            _ => format!("{ip}:0"),
        };
        let mut command = match &self.host {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let mut child = command
            .arg("serve")
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&listen)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));

        // Drain stdout forever (so the server never blocks on a full pipe),
        // forwarding lines to whoever still listens.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // Keep the tail of stderr (the server's logs) for failure reports.
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::clone(&self.stderr_tail);
        let echo = std::env::var_os("DOPPEL_TEST_ECHO").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[doppel #{generation}] {line}");
                }
                let mut tail = tail.lock();
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(format!("#{generation} {line}"));
            }
        });
        self.child = Some(child);

        let deadline = deadline_in(STARTUP_TIMEOUT);
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix(READY_PREFIX) {
                        break url.trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("server did not print its ready line within {STARTUP_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!(
                        "server closed stdout before its ready line (exit: {status:?})\n{}",
                        self.stderr_tail()
                    );
                }
            }
        };
        assert!(
            base.starts_with(&format!("http://{ip}:")),
            "unexpected ready line address {base:?}"
        );
        self.client = match &self.host {
            Some((ns, _)) => Client::new(&base).in_netns(ns),
            None => Client::new(&base),
        };
    }

    /// HTTP client bound to the current process (its port changes on restart).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base(&self) -> &str {
        &self.client.base
    }

    /// Full URL of `path` on the current process.
    pub fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    /// The data directory given to `--data`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL (`kill -9`) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit by itself. Panics if
    /// it has not exited within [`SHUTDOWN_TIMEOUT`] (it is then SIGKILLed).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid} failed");
        let deadline = deadline_in(SHUTDOWN_TIMEOUT);
        let mut status = None;
        wait_until(deadline, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// Starts the server again on the same data directory (a new port, unless the
    /// node is sticky). A process that is still running is first stopped gracefully.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(status.success(), "graceful shutdown exited with {status}");
        }
        self.spawn();
    }

    /// The last lines the server wrote to stderr (across restarts).
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock();
        let mut out = String::from("--- server stderr (tail) ---\n");
        for line in tail.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

impl std::ops::Deref for Node {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_tail());
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds `?a=1&b=2` from pairs (empty string for no pairs).
pub fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// A request body.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// No body at all.
    Empty,
    /// A JSON document (`Content-Type: application/json`).
    Json(&'a Value),
    /// Raw bytes with the given Content-Type.
    Raw(&'a str, &'a [u8]),
}

/// One HTTP answer. The body is parsed as JSON when possible (else `Null`);
/// `text` always holds it verbatim.
#[derive(Clone, Debug)]
pub struct Resp {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub content_type: Option<String>,
    /// The `Retry-After` header, when the server sent one.
    pub retry_after: Option<String>,
    pub text: String,
    pub body: Value,
}

impl Resp {
    fn new(method: &str, url: &str, status: u16, ct: Option<String>, bytes: Vec<u8>) -> Resp {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            method: method.to_string(),
            url: url.to_string(),
            status,
            content_type: ct,
            retry_after: None,
            text,
            body,
        }
    }

    /// The problem `code` of an error body, if any.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// Media type without parameters, lowercased (e.g. `application/json`).
    pub fn media_type(&self) -> Option<String> {
        self.content_type.as_deref().map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected status: {self}");
        &self.body
    }

    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        self.expect(200)
    }

    /// Asserts an RFC 9457 problem answer with this status and code: media
    /// type `application/problem+json`, and `type`, `title`, `status`,
    /// `detail` and `code` fields as documented. Returns the body.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            (self.status, self.code()),
            (status, Some(code)),
            "expected problem {status} {code}: {self}"
        );
        assert_eq!(
            self.media_type().as_deref(),
            Some("application/problem+json"),
            "problem Content-Type: {self}"
        );
        let b = &self.body;
        assert_eq!(
            b["type"],
            json!(format!("/problems#{code}")),
            "problem type: {self}"
        );
        assert_eq!(b["status"], json!(status), "problem status field: {self}");
        assert!(b["title"].is_string(), "problem title: {self}");
        assert!(
            b["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "problem detail: {self}"
        );
        b
    }
}

impl std::ops::Index<&str> for Resp {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.body[key]
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.text.clone();
        if text.len() > 2000 {
            let mut cut = 2000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        write!(
            f,
            "{} {} -> {} [{}] {}",
            self.method,
            self.url,
            self.status,
            self.content_type.as_deref().unwrap_or("no content-type"),
            text
        )
    }
}

/// Blocking HTTP client for one server process. Cheap to clone; clones can
/// be moved into threads.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The `authorization` header sent with every request, if any.
    authorization: Option<String>,
    /// The network namespace requests are made from ([`netns`]), if not this one.
    netns: Option<String>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:41234`) with
    /// [`HTTP_TIMEOUT`] on every call.
    pub fn new(base: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout(HTTP_TIMEOUT)
            .timeout_connect(HTTP_TIMEOUT)
            .redirects(0)
            .build();
        Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            authorization: Some(format!("Bearer {}", admin_token())),
            netns: None,
        }
    }

    /// This client making its requests from inside network namespace `ns`.
    pub fn in_netns(&self, ns: &str) -> Client {
        Client {
            netns: Some(ns.to_string()),
            ..self.clone()
        }
    }

    /// This client sending `token` as its bearer token.
    pub fn with_token(&self, token: &str) -> Client {
        self.with_authorization(&format!("Bearer {token}"))
    }

    /// This client sending `value` verbatim as its `authorization` header.
    pub fn with_authorization(&self, value: &str) -> Client {
        Client {
            authorization: Some(value.to_string()),
            ..self.clone()
        }
    }

    /// This client sending no `authorization` header.
    pub fn without_token(&self) -> Client {
        Client {
            authorization: None,
            ..self.clone()
        }
    }

    /// Full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; `Err` only for transport failures (connection
    /// refused or reset, timeout), never for an HTTP error status.
    pub fn try_request(&self, method: &str, path: &str, body: Body<'_>) -> Result<Resp, String> {
        match &self.netns {
            Some(ns) => netns::within(ns, || self.request_here(method, path, body)),
            None => self.request_here(method, path, body),
        }
    }

    fn request_here(&self, method: &str, path: &str, body: Body<'_>) -> Result<Resp, String> {
        let url = self.url(path);
        let mut req = self.agent.request(method, &url);
        if let Some(authorization) = &self.authorization {
            req = req.set("authorization", authorization);
        }
        let result = match body {
            Body::Empty => req.call(),
            Body::Json(v) => req
                .set("Content-Type", "application/json")
                .send_string(&v.to_string()),
            Body::Raw(ct, bytes) => req.set("Content-Type", ct).send_bytes(bytes),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(format!("{method} {url}: {t}")),
        };
        let status = resp.status();
        let ct = resp.header("content-type").map(str::to_string);
        let retry_after = resp.header("retry-after").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?;
        let mut resp = Resp::new(method, &url, status, ct, bytes);
        resp.retry_after = retry_after;
        Ok(resp)
    }

    /// Sends a request; panics on transport failures only.
    #[track_caller]
    pub fn request(&self, method: &str, path: &str, body: Body<'_>) -> Resp {
        match self.try_request(method, path, body) {
            Ok(r) => r,
            Err(e) => panic!("transport error: {e}"),
        }
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, Body::Empty)
    }

    #[track_caller]
    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, Body::Empty)
    }

    #[track_caller]
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, Body::Json(body))
    }

    /// POST without any body (e.g. begin/commit/cancel, snapshots).
    #[track_caller]
    pub fn post_empty(&self, path: &str) -> Resp {
        self.request("POST", path, Body::Empty)
    }

    #[track_caller]
    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.request("PUT", path, Body::Json(body))
    }

    /// Sends `body` verbatim as `application/json` (for malformed input).
    #[track_caller]
    pub fn send_raw(&self, method: &str, path: &str, body: &str) -> Resp {
        self.request(method, path, Body::Raw("application/json", body.as_bytes()))
    }

    /// Sends a request over a raw TCP connection, writing the body from a
    /// separate thread while reading the answer, so a server that answers
    /// before consuming the whole body (e.g. 413) is still heard. Used for
    /// oversized bodies.
    pub fn send_streaming(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        let url = self.url(path);
        let hostport = self
            .base
            .strip_prefix("http://")
            .expect("http base url")
            .to_string();
        let stream =
            TcpStream::connect(&hostport).unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
        let authorization = self
            .authorization
            .as_ref()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: {content_type}\r\n\
             {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut writer_stream = stream.try_clone().expect("clone tcp stream");
        let writer = std::thread::spawn(move || {
            // Write errors are expected once the server has answered and closed.
            let _ = writer_stream.write_all(head.as_bytes());
            for chunk in body.chunks(64 * 1024) {
                if writer_stream.write_all(chunk).is_err() {
                    break;
                }
            }
        });

        let mut reader = stream;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = deadline_in(HTTP_TIMEOUT);
        let parsed = loop {
            if let Some(parsed) = parse_http_response(&buf, false) {
                break Some(parsed);
            }
            if Instant::now() >= deadline {
                break None;
            }
            match reader.read(&mut chunk) {
                Ok(0) => break parse_http_response(&buf, true),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break parse_http_response(&buf, true),
            }
        };
        let _ = reader.shutdown(Shutdown::Both);
        let _ = writer.join();
        let (status, ct, bytes) = parsed.unwrap_or_else(|| {
            panic!(
                "{method} {url}: no complete HTTP response; got {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(500)])
            )
        });
        Resp::new(method, &url, status, ct, bytes)
    }

    /// Creates a tenant; asserts 201.
    #[track_caller]
    pub fn create_tenant(&self, name: &str) {
        self.post("/v1/tenants", &json!({ "name": name }))
            .expect(201);
    }

    /// Creates a database in `tenant` from a full creation body; asserts 201
    /// and that the answer names the database.
    #[track_caller]
    pub fn create_db(&self, tenant: &str, spec: Value) -> Db {
        let name = spec["name"].as_str().expect("spec has a name").to_string();
        let path = format!("/v1/tenants/{}/databases", enc(tenant));
        let r = self.post(&path, &spec);
        assert_eq!(r.expect(201)["name"], json!(name), "create db answer: {r}");
        self.db(tenant, &name)
    }

    /// A handle on database `name` of `tenant` (no request is made).
    pub fn db(&self, tenant: &str, name: &str) -> Db {
        Db {
            client: self.clone(),
            tenant: tenant.to_string(),
            name: name.to_string(),
        }
    }
}

/// Free-function form of [`Client::create_db`].
#[track_caller]
pub fn create_db(client: &Client, tenant: &str, spec: Value) -> Db {
    client.create_db(tenant, spec)
}

/// Parses `HTTP/1.x status\r\nheaders\r\n\r\nbody` once complete. With
/// `eof` set, a body without length runs to the end of `buf`.
fn parse_http_response(buf: &[u8], eof: bool) -> Option<(u16, Option<String>, Vec<u8>)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut content_type = None;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_string()),
            "content-length" => content_length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let rest = &buf[head_end + 4..];
    if chunked {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_text = std::str::from_utf8(&rest[pos..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                return Some((status, content_type, body));
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    match content_length {
        Some(n) if rest.len() >= n => Some((status, content_type, rest[..n].to_vec())),
        Some(_) => None,
        None if eof => Some((status, content_type, rest.to_vec())),
        None => None,
    }
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

/// One database of one tenant on one server process. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    client: Client,
    pub tenant: String,
    pub name: String,
}

impl Db {
    /// The client this handle talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `/v1/tenants/{tenant}/databases/{db}` followed by `rest`.
    pub fn path(&self, rest: &str) -> String {
        format!(
            "/v1/tenants/{}/databases/{}{}",
            enc(&self.tenant),
            enc(&self.name),
            rest
        )
    }

    /// Path of one record.
    pub fn record_path(&self, file: &str, key: &str) -> String {
        self.path(&format!("/files/{}/records/{}", enc(file), enc(key)))
    }

    /// GET the database info.
    pub fn info(&self) -> Resp {
        self.client.get(&self.path(""))
    }

    /// `records` count of `file` in the database info (asserts 200).
    #[track_caller]
    pub fn record_count(&self, file: &str) -> u64 {
        let info = self.info();
        let files = info.ok()["files"].as_array().expect("info.files array");
        files
            .iter()
            .find(|f| f["name"] == json!(file))
            .and_then(|f| f["records"].as_u64())
            .unwrap_or_else(|| panic!("file {file} with a records count in {info}"))
    }

    /// PUT (upsert) a record.
    #[track_caller]
    pub fn put(&self, file: &str, key: &str, alt: Value, data: Value) -> Resp {
        self.client.put(
            &self.record_path(file, key),
            &json!({ "alt": alt, "data": data }),
        )
    }

    /// POST (insert) a record.
    #[track_caller]
    pub fn insert(&self, file: &str, key: &str, alt: Value, data: Value) -> Resp {
        self.client.post(
            &self.path(&format!("/files/{}/records", enc(file))),
            &json!({ "key": key, "alt": alt, "data": data }),
        )
    }

    /// GET a record.
    #[track_caller]
    pub fn get(&self, file: &str, key: &str) -> Resp {
        self.client.get(&self.record_path(file, key))
    }

    /// The record's `data`, or `None` when it is absent (404 not-found).
    #[track_caller]
    pub fn data(&self, file: &str, key: &str) -> Option<Value> {
        let r = self.get(file, key);
        match r.status {
            200 => {
                assert_eq!(r["key"], json!(key), "record key: {r}");
                Some(r["data"].clone())
            }
            404 => {
                r.expect_problem(404, "not-found");
                None
            }
            _ => panic!("unexpected answer reading a record: {r}"),
        }
    }

    /// DELETE a record.
    #[track_caller]
    pub fn delete(&self, file: &str, key: &str) -> Resp {
        self.client.delete(&self.record_path(file, key))
    }

    /// GET a range scan with optional `from`, `to` and `limit`.
    #[track_caller]
    pub fn scan(
        &self,
        file: &str,
        from: Option<&str>,
        to: Option<&str>,
        limit: Option<u64>,
    ) -> Resp {
        let mut q = Vec::new();
        if let Some(from) = from {
            q.push(("from", from.to_string()));
        }
        if let Some(to) = to {
            q.push(("to", to.to_string()));
        }
        if let Some(limit) = limit {
            q.push(("limit", limit.to_string()));
        }
        self.client
            .get(&self.path(&format!("/files/{}/records{}", enc(file), query(&q))))
    }

    /// Every record of `file` in key order, following `next` pages.
    #[track_caller]
    pub fn scan_all(&self, file: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..10_000 {
            let r = self.scan(file, from.as_deref(), None, Some(10_000));
            let page = r.ok()["records"].as_array().expect("records array").clone();
            out.extend(page);
            match &r["next"] {
                Value::Null => return out,
                Value::String(next) => from = Some(next.clone()),
                other => panic!("bad next {other}: {r}"),
            }
        }
        panic!("scan of {file} did not finish");
    }

    /// [`Self::scan_all`] without where records sit: the logical contents only.
    pub fn contents(&self, file: &str) -> Vec<Value> {
        let mut records = self.scan_all(file);
        for record in &mut records {
            if let Some(fields) = record.as_object_mut() {
                fields.remove("block");
                fields.remove("offset");
            }
        }
        records
    }

    /// GET records by alt key value.
    #[track_caller]
    pub fn alt(&self, file: &str, name: &str, value: &str) -> Resp {
        self.client.get(&self.path(&format!(
            "/files/{}/alt/{}/{}",
            enc(file),
            enc(name),
            enc(value)
        )))
    }

    /// Keys of the records with alt key `name` = `value`, in answer order.
    #[track_caller]
    pub fn alt_keys(&self, file: &str, name: &str, value: &str) -> Vec<String> {
        let r = self.alt(file, name, value);
        keys_of(&r.ok()["records"])
    }

    /// POST a batch transaction.
    #[track_caller]
    pub fn batch(&self, ops: Value) -> Resp {
        self.client
            .post(&self.path("/transactions"), &json!({ "ops": ops }))
    }

    /// POST a batch transaction; `Err` on transport failure.
    pub fn try_batch(&self, ops: Value) -> Result<Resp, String> {
        self.client.try_request(
            "POST",
            &self.path("/transactions"),
            Body::Json(&json!({ "ops": ops })),
        )
    }

    /// Begins an interactive transaction; asserts 201 and returns its number.
    #[track_caller]
    pub fn begin(&self) -> u64 {
        let r = self.client.post_empty(&self.path("/txns"));
        r.expect(201)["txn"]
            .as_u64()
            .unwrap_or_else(|| panic!("txn number in {r}"))
    }

    /// Adds ops to an interactive transaction.
    #[track_caller]
    pub fn ops(&self, txn: u64, ops: Value) -> Resp {
        self.client.post(
            &self.path(&format!("/txns/{txn}/ops")),
            &json!({ "ops": ops }),
        )
    }

    /// Adds ops with an explicit lock wait timeout.
    #[track_caller]
    pub fn ops_with_timeout(&self, txn: u64, ops: Value, lock_timeout_ms: u64) -> Resp {
        self.client.post(
            &self.path(&format!(
                "/txns/{txn}/ops?lock_timeout_ms={lock_timeout_ms}"
            )),
            &json!({ "ops": ops }),
        )
    }

    #[track_caller]
    pub fn commit(&self, txn: u64) -> Resp {
        self.client
            .post_empty(&self.path(&format!("/txns/{txn}/commit")))
    }

    #[track_caller]
    pub fn cancel(&self, txn: u64) -> Resp {
        self.client
            .post_empty(&self.path(&format!("/txns/{txn}/cancel")))
    }

    /// GET an interactive transaction's state.
    #[track_caller]
    pub fn txn(&self, txn: u64) -> Resp {
        self.client.get(&self.path(&format!("/txns/{txn}")))
    }

    /// POST a snapshot.
    #[track_caller]
    pub fn snapshot(&self) -> Resp {
        self.client.post_empty(&self.path("/snapshots"))
    }

    /// GET the snapshot list.
    #[track_caller]
    pub fn snapshots(&self) -> Resp {
        self.client.get(&self.path("/snapshots"))
    }

    /// GET log entries from serial `from` (at most `limit`).
    #[track_caller]
    pub fn log(&self, from: u64, limit: u64) -> Resp {
        self.client
            .get(&self.path(&format!("/log?from={from}&limit={limit}")))
    }

    /// Every log entry from serial `from` on, paging 1000 at a time.
    #[track_caller]
    pub fn log_from(&self, from: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut from = from;
        for _ in 0..10_000 {
            let r = self.log(from, 1000);
            let page = r.ok()["entries"].as_array().expect("entries array").clone();
            let Some(last) = page.last() else { return out };
            let last = last["serial"].as_u64().expect("serial");
            assert!(last >= from, "log went backwards: {r}");
            from = last + 1;
            out.extend(page);
        }
        panic!("log paging did not finish");
    }

    /// GET block checksums.
    #[track_caller]
    pub fn checksums(&self) -> Resp {
        self.client.get(&self.path("/checksums"))
    }
}

/// The `key` of every record in a `records` array.
pub fn keys_of(records: &Value) -> Vec<String> {
    records
        .as_array()
        .unwrap_or_else(|| panic!("records array expected, got {records}"))
        .iter()
        .map(|r| r["key"].as_str().expect("record key").to_string())
        .collect()
}

/// Builders for transaction op objects (`{"op", "file", "key", "alt"?, "data"?}`).
pub mod op {
    use super::{json, Value};

    pub fn insert(file: &str, key: &str, data: Value) -> Value {
        json!({ "op": "insert", "file": file, "key": key, "data": data })
    }

    pub fn insert_alt(file: &str, key: &str, alt: Value, data: Value) -> Value {
        json!({ "op": "insert", "file": file, "key": key, "alt": alt, "data": data })
    }

    pub fn update(file: &str, key: &str, data: Value) -> Value {
        json!({ "op": "update", "file": file, "key": key, "data": data })
    }

    pub fn update_alt(file: &str, key: &str, alt: Value, data: Value) -> Value {
        json!({ "op": "update", "file": file, "key": key, "alt": alt, "data": data })
    }

    pub fn upsert(file: &str, key: &str, data: Value) -> Value {
        json!({ "op": "upsert", "file": file, "key": key, "data": data })
    }

    pub fn upsert_alt(file: &str, key: &str, alt: Value, data: Value) -> Value {
        json!({ "op": "upsert", "file": file, "key": key, "alt": alt, "data": data })
    }

    pub fn delete(file: &str, key: &str) -> Value {
        json!({ "op": "delete", "file": file, "key": key })
    }
}

/// The usual test database: `orders` with alt key `customer`, and `lines`.
pub fn shop_spec(name: &str) -> Value {
    json!({
        "name": name,
        "files": [
            { "name": "orders", "alt_keys": ["customer"] },
            { "name": "lines" }
        ]
    })
}

// ---------------------------------------------------------------------------
// Replication
// ---------------------------------------------------------------------------

/// Creates a link on `source` from its database `db` to database `target_db` on
/// `target`; returns the link's id. `extra` is merged into the body (mode, ...).
pub fn create_link(
    source: &Client,
    db: &str,
    target: &Node,
    target_db: &str,
    extra: Value,
) -> String {
    let mut body = json!({"database": db, "target": {"url": target.base(), "database": target_db}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "target" {
                for (tk, tv) in v.as_object().expect("target is an object") {
                    b["target"][tk] = tv.clone();
                }
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    let resp = source.post(&format!("/v1/tenants/{DEFAULT_TENANT}/links"), &body);
    resp.expect(201)["id"]
        .as_str()
        .expect("a link id")
        .to_string()
}

/// The tenant the replication tests use.
pub const DEFAULT_TENANT: &str = "default";

/// Uploads `wasm` as plugin `name@1` of `role` to the default tenant of `node`.
pub fn upload_plugin(node: &Client, name: &str, role: &str, wasm: &[u8]) {
    let r = node.request(
        "PUT",
        &format!("/v1/tenants/{DEFAULT_TENANT}/plugins/{name}/1?role={role}"),
        Body::Raw("application/wasm", wasm),
    );
    assert!(r.status == 201 || r.status == 200, "{r}");
}

/// A link as the source shows it.
pub fn link_status(source: &Client, id: &str) -> Value {
    source
        .get(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}"))
        .ok()
        .clone()
}

/// Waits until link `id` on `source` reports `state`; panics with the link otherwise.
pub fn wait_link_state(source: &Client, id: &str, state: &str, timeout: Duration) {
    let reached = wait_until(deadline_in(timeout), || {
        link_status(source, id)["status"]["state"] == state
    });
    assert!(
        reached,
        "link never became {state}: {}",
        link_status(source, id)
    );
}

/// Waits until database `db` on `replica` has applied everything `source_db` on
/// `source` holds now and their block checksums are equal. Panics with both states
/// otherwise.
pub fn wait_identical(source: &Db, replica: &Db, timeout: Duration) {
    let deadline = deadline_in(timeout);
    let mut last = (Value::Null, Value::Null);
    let same = wait_until(deadline, || {
        let (a, b) = (source.info(), replica.info());
        if b.status != 200 || a.status != 200 {
            return false;
        }
        if a["last_serial"] != b["last_serial"] {
            last = (a["last_serial"].clone(), b["last_serial"].clone());
            return false;
        }
        let (ca, cb) = (source.checksums(), replica.checksums());
        last = (ca.body.clone(), cb.body.clone());
        ca.body == cb.body && a["last_serial"] == source.info()["last_serial"]
    });
    assert!(
        same,
        "replica did not become identical to its source: source {} vs replica {}",
        last.0, last.1
    );
}

/// A hostile filter component whose `filter` export traps at once (`unreachable`): every
/// batch it is given fails. Built here from WAT, following the canonical ABI by hand.
pub fn trapping_filter() -> Vec<u8> {
    let wat = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "contract-version") (result i32) (i32.const 1))
  (data (i32.const 16) "{}")
  (func (export "config-schema") (result i32)
    (i32.store (i32.const 32) (i32.const 16))
    (i32.store (i32.const 36) (i32.const 2))
    (i32.const 32))
  (func (export "configure") (param i32 i32) (result i32)
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.const 48))
  (func (export "filter") (param i32 i32 i32 i32) (result i32)
    unreachable)
)"#;
    let module = wat::parse_str(wat).expect("the hostile module parses");
    doppel_server::plugins::wrap::wrap_module(module, "filter").expect("the component encodes")
}
