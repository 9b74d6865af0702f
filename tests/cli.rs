//! End-to-end tests of the `doppel` command line, run as the real binary (`doppel-node`
//! is `doppel_server::cli::main`, the same program as `doppel`):
//!
//! * `serve --config FILE`: the TOML keys `data`, `listen`, `log_format` and `[node]`
//!   are honoured (data lands in the configured directory and survives a restart,
//!   automatic snapshots and idle-transaction cancelling follow `[node]`), flags override
//!   the file, and an unknown key, bad TOML, a bad value or a missing file make the
//!   process exit non-zero naming the file;
//! * `--log-format json` makes every stderr log line a JSON object;
//! * every client subcommand (`health`, `db create/list/show/delete`, `put`, `get`,
//!   `scan`, `lookup`, `txn` from a file and from stdin, `del`, `snapshot`, `log`,
//!   `checksums`) against a running node, checking the printed JSON and the node's
//!   state over HTTP; keys and alternate-key values with spaces, slashes, `%`, `?`, `#`
//!   and non-ASCII characters; and the errors a user meets (404 not-found, refused
//!   transactions, an unreachable node, bad arguments);
//! * `restore` follows the restore operation to its end (and `--dry-run` plans only);
//! * `bench` with a small load.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use doppel_tests::*;
use parking_lot::Mutex;

/// Upper bound for one client command (they normally take milliseconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for `bench` with the small load used here.
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for the node's upkeep (a 1 s tick) to act on `[node]` settings.
const UPKEEP_TIMEOUT: Duration = Duration::from_secs(30);

const READY_PREFIX: &str = "doppel listening on ";

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// A `doppel-node` command with an environment that cannot steer it: the `DOPPEL_*`
/// variables are removed, and logs are at `info` whatever `RUST_LOG` says.
fn doppel_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(node_binary());
    cmd.args(args)
        .env_remove("DOPPEL_URL")
        .env_remove("DOPPEL_TENANT")
        .env_remove("DOPPEL_DATA")
        .env_remove("DOPPEL_LISTEN")
        .env("DOPPEL_TOKEN", admin_token())
        .env("RUST_LOG", "info");
    cmd
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A finished command.
struct Run {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`doppel {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Asserts exit status 0 and returns stdout.
    #[track_caller]
    fn success(&self) -> &str {
        assert!(self.status.success(), "expected success: {self}");
        &self.stdout
    }

    /// Asserts success and parses stdout as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        let stdout = self.success();
        serde_json::from_str(stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self}"))
    }

    /// Asserts a non-zero exit and returns stderr.
    #[track_caller]
    fn failure(&self) -> &str {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a non-zero exit: {self}"
        );
        &self.stderr
    }
}

/// Runs `cmd` to completion (at most `timeout`), feeding it `stdin` if given.
#[track_caller]
fn run(mut cmd: Command, what: String, stdin: Option<&str>, timeout: Duration) -> Run {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `doppel {what}`: {e}"));
    let feeder = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let text = text.to_string();
        // Dropping the pipe at the end closes the command's stdin.
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let mut status = None;
    let finished = wait_until(deadline_in(timeout), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        finished,
        "`doppel {what}` did not finish within {timeout:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    Run {
        what,
        status: status.expect("finished"),
        stdout,
        stderr,
    }
}

/// Runs `doppel ARGS...`.
#[track_caller]
fn doppel(args: &[&str]) -> Run {
    run(doppel_command(args), args.join(" "), None, COMMAND_TIMEOUT)
}

/// Runs `doppel ARGS...` with `input` on stdin.
#[track_caller]
fn doppel_stdin(args: &[&str], input: &str) -> Run {
    run(
        doppel_command(args),
        args.join(" "),
        Some(input),
        COMMAND_TIMEOUT,
    )
}

/// Runs a client subcommand against `url`: `doppel ARGS... --url URL`.
#[track_caller]
fn client(url: &str, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--url", url]);
    doppel(&all)
}

/// [`client`], asserting success and returning the printed JSON.
#[track_caller]
fn client_json(url: &str, args: &[&str]) -> Value {
    client(url, args).json()
}

/// A path as a `&str` (temp paths are UTF-8 here).
fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------
// A `serve` process with arbitrary arguments
// ---------------------------------------------------------------------------

/// A `doppel serve ...` process started with the caller's arguments. It is SIGKILLed
/// on drop; its stderr is kept whole.
struct Served {
    child: Option<Child>,
    base: String,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Served {
    /// Starts `doppel ARGS...` in `cwd` and waits for its ready line.
    #[track_caller]
    fn start(args: &[&str], cwd: &Path) -> Served {
        let mut child = doppel_command(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn doppel serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr_lines);
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().push(line);
            }
        });
        let mut served = Served {
            child: Some(child),
            base: String::new(),
            stderr: stderr_lines,
            stderr_reader: Some(stderr_reader),
        };
        let deadline = deadline_in(STARTUP_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix(READY_PREFIX) {
                        served.base = url.trim().to_string();
                        break;
                    }
                }
                Err(_) => panic!(
                    "`doppel {}` printed no ready line\n{}",
                    args.join(" "),
                    served.stderr_text()
                ),
            }
        }
        let port = served
            .base
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("ready line address {:?}", served.base));
        assert!(
            port.parse::<u16>().is_ok_and(|p| p != 0),
            "ready line names a real port: {:?}",
            served.base
        );
        served
    }

    fn client(&self) -> Client {
        Client::new(&self.base)
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().clone()
    }

    fn stderr_text(&self) -> String {
        format!("--- server stderr ---\n{}", self.stderr_lines().join("\n"))
    }

    /// SIGTERM, then waits for the exit and for the whole of stderr.
    #[track_caller]
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}");
        let mut status = None;
        let exited = wait_until(deadline_in(SHUTDOWN_TIMEOUT), || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server ignored SIGTERM\n{}", self.stderr_text());
        }
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status.expect("exited")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_text());
        }
    }
}

/// Writes a config file and returns its path.
fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A TOML basic string holding `path`.
fn toml_str(path: &Path) -> String {
    serde_json::to_string(s(path)).expect("JSON string is TOML string")
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Asserts that every non-empty line parses as a JSON object with a level and
/// fields, and returns the parsed lines.
#[track_caller]
fn json_log_lines(lines: &[String]) -> Vec<Value> {
    let parsed: Vec<Value> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}"))
        })
        .collect();
    for line in &parsed {
        assert!(
            line["level"].is_string() && line["fields"].is_object(),
            "a structured log line: {line}"
        );
    }
    parsed
}

fn messages(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------

#[test]
fn serve_with_a_config_file_uses_its_data_dir_log_format_and_node_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("configured-data");
    let config = write_config(
        tmp.path(),
        "doppel.toml",
        &format!(
            "data = {}\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n\n\
             [node]\nsnapshot_every_entries = 5\nlock_timeout_ms = 250\n\
             txn_idle_timeout_secs = 1\n{}",
            toml_str(&data),
            auth_toml()
        ),
    );
    // Run in the temp dir: the default data dir would be ./doppel-data there.
    let mut served = Served::start(&["serve", "--config", s(&config)], tmp.path());
    let api = served.client();
    let shop = api.create_db("default", shop_spec("shop"));
    let txn = shop.begin();
    for i in 0..10 {
        shop.put(
            "orders",
            &format!("o{i}"),
            json!({ "customer": "ann" }),
            json!({ "n": i }),
        )
        .ok();
    }
    assert!(has_files(&data), "data went to {}", data.display());
    assert!(
        !tmp.path().join("doppel-data").exists(),
        "the default data dir is not used"
    );

    // [node]: upkeep snapshots whenever 5 or more updates follow the last snapshot
    // (the default is 1,000,000), so with all 10 written it settles at serial 6 or
    // more; the transaction left idle over txn_idle_timeout_secs = 1 is cancelled.
    let snapshotted = wait_until(deadline_in(UPKEEP_TIMEOUT), || {
        shop.info().ok()["snapshot_serial"].as_u64() >= Some(6)
    });
    assert!(snapshotted, "automatic snapshot: {}", shop.info());
    let cancelled = wait_until(deadline_in(UPKEEP_TIMEOUT), || shop.txn(txn).status == 404);
    assert!(cancelled, "idle transaction cancelled: {}", shop.txn(txn));
    shop.txn(txn).expect_problem(404, "not-found");
    assert!(!shop.snapshots().ok().as_array().unwrap().is_empty());

    // log_format = "json".
    assert!(wait_until(deadline_in(STARTUP_TIMEOUT), || {
        !served.stderr_lines().is_empty()
    }));
    let status = served.terminate();
    assert!(status.success(), "graceful exit: {status}");
    let logs = json_log_lines(&served.stderr_lines());
    assert!(messages(&logs).contains(&"node started"), "{logs:?}");

    // The same config again: everything is back, from the configured directory.
    let served = Served::start(&["serve", "--config", s(&config)], tmp.path());
    let shop = served.client().db("default", "shop");
    assert_eq!(shop.record_count("orders"), 10);
    assert_eq!(shop.data("orders", "o7"), Some(json!({ "n": 7 })));
    assert_eq!(shop.alt_keys("orders", "customer", "ann").len(), 10);
    assert!(shop.info().ok()["snapshot_serial"].as_u64() >= Some(6));
    assert!(!tmp.path().join("doppel-data").exists());
}

#[test]
fn serve_flags_override_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let from_config = tmp.path().join("from-config");
    let from_flag = tmp.path().join("from-flag");
    let config = write_config(
        tmp.path(),
        "doppel.toml",
        &format!(
            "data = {}\nlisten = \"127.0.0.1:1\"\n{}",
            toml_str(&from_config),
            auth_toml()
        ),
    );
    let mut served = Served::start(
        &[
            "serve",
            "--config",
            s(&config),
            "--data",
            s(&from_flag),
            "--listen",
            "127.0.0.1:0",
        ],
        tmp.path(),
    );
    assert_ne!(served.base, "http://127.0.0.1:1", "--listen wins");
    served.client().create_db("default", shop_spec("shop"));
    assert!(served.terminate().success());
    assert!(has_files(&from_flag), "--data wins over the config's data");
    assert!(!from_config.exists(), "the config's data dir is not used");
}

#[test]
fn serve_refuses_a_bad_config_file_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = "listen = \"127.0.0.1:0\"\n";
    let cases = [
        (
            "unknown-key.toml",
            format!("{listen}colour = \"blue\"\n"),
            "colour",
        ),
        (
            "unknown-node-key.toml",
            format!("{listen}[node]\nsnapshot_every = 5\n"),
            "snapshot_every",
        ),
        (
            "bad-syntax.toml",
            format!("{listen}data = \n[node\n"),
            "bad config",
        ),
        (
            "bad-value.toml",
            "listen = \"not an address\"\n".to_string(),
            "listen",
        ),
        (
            "no-workers.toml",
            format!("{listen}[node]\nworker_threads = 0\n"),
            "worker_threads",
        ),
        (
            "bad-type.toml",
            format!("{listen}[node]\nlock_timeout_ms = \"soon\"\n"),
            "lock_timeout_ms",
        ),
    ];
    for (name, text, mention) in cases {
        let path = write_config(tmp.path(), name, &text);
        let mut cmd = doppel_command(&["serve", "--config", s(&path)]);
        cmd.current_dir(tmp.path());
        let out = run(cmd, format!("serve --config {name}"), None, COMMAND_TIMEOUT);
        let stderr = out.failure();
        assert!(
            stderr.starts_with("doppel: bad config ") && stderr.contains(s(&path)),
            "the message names the file: {out}"
        );
        assert!(stderr.contains(mention), "the message says what: {out}");
        assert!(!out.stdout.contains(READY_PREFIX), "never listened: {out}");
    }
    assert!(
        !tmp.path().join("doppel-data").exists(),
        "no data dir was created"
    );

    let missing = tmp.path().join("missing.toml");
    let out = doppel(&["serve", "--config", s(&missing)]);
    let stderr = out.failure();
    assert!(
        stderr.contains("cannot read") && stderr.contains(s(&missing)),
        "a missing config file is named: {out}"
    );
}

#[test]
fn log_format_json_writes_structured_stderr_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), "auth.toml", &auth_toml());
    let args = |format| {
        [
            "serve",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            format,
        ]
    };
    let mut served = Served::start(&args("json"), tmp.path());
    served.client().create_db("default", shop_spec("shop"));
    assert!(served.terminate().success());
    let lines = json_log_lines(&served.stderr_lines());
    let said = messages(&lines);
    assert!(said.contains(&"node started"), "{said:?}");
    assert!(
        said.iter().any(|m| m.starts_with("shutting down")),
        "{said:?}"
    );
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()),
        "{lines:?}"
    );

    // The default text format is not JSON. (A request first: the node installs its
    // SIGTERM handler only once it serves, a moment after its ready line.)
    let mut served = Served::start(&args("text"), tmp.path());
    served.client().get("/v1/health").ok();
    assert!(served.terminate().success());
    let lines = served.stderr_lines();
    let started = lines
        .iter()
        .find(|l| l.contains("node started"))
        .unwrap_or_else(|| panic!("a node started line in {lines:?}"));
    assert!(serde_json::from_str::<Value>(started).is_err(), "{started}");
}

// ---------------------------------------------------------------------------
// Client subcommands
// ---------------------------------------------------------------------------

#[test]
fn help_lists_the_subcommands() {
    let out = doppel(&["--help"]);
    let help = out.success();
    for command in [
        "serve",
        "bench",
        "health",
        "db",
        "put",
        "get",
        "del",
        "scan",
        "lookup",
        "txn",
        "snapshot",
        "log",
        "checksums",
        "plugin",
        "link",
        "restore",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "--help lists {command}: {out}"
        );
    }
}

#[test]
fn health_and_database_subcommands() {
    let node = Node::start();
    let url = node.base();

    let health = client_json(url, &["health"]);
    assert_eq!(health["status"], json!("ok"), "{health}");

    let created = client_json(
        url,
        &[
            "db",
            "create",
            "shop",
            "--file",
            "orders:customer,status",
            "--file",
            "lines",
            "--block-size",
            "1024",
            "--durability",
            "sync",
            "--memory-quota-bytes",
            "8388608",
        ],
    );
    assert_eq!(created["name"], json!("shop"), "{created}");
    let info = node.db("default", "shop").info();
    let info = info.ok();
    assert_eq!(&created, info, "db create prints the database info");
    assert_eq!(
        info["files"],
        json!([
            { "name": "orders", "alt_keys": ["customer", "status"], "records": 0 },
            { "name": "lines", "alt_keys": [], "records": 0 }
        ])
    );
    assert_eq!(info["block_size"], json!(1024));
    assert_eq!(info["durability"], json!("sync"));
    assert_eq!(info["memory_quota_bytes"], json!(8_388_608));

    client_json(url, &["db", "create", "other", "--file", "t"]);
    let list = client_json(url, &["db", "list"]);
    let names: Vec<&Value> = list
        .as_array()
        .unwrap_or_else(|| panic!("db list prints an array: {list}"))
        .iter()
        .map(|d| &d["name"])
        .collect();
    assert!(
        names.contains(&&json!("shop")) && names.contains(&&json!("other")),
        "{list}"
    );

    let shown = client_json(url, &["db", "show", "shop"]);
    assert_eq!(&shown, node.db("default", "shop").info().ok());

    // Creating it again is refused with the API's problem.
    let again = client(url, &["db", "create", "shop", "--file", "t"]);
    assert!(again.failure().contains("409 already-exists"), "{again}");

    let deleted = client(url, &["db", "delete", "other"]);
    assert_eq!(deleted.success().trim(), "", "nothing to print: {deleted}");
    node.db("default", "other")
        .info()
        .expect_problem(404, "not-found");
    let shown = client(url, &["db", "show", "other"]);
    assert!(shown.failure().contains("404 not-found"), "{shown}");
    let list = client_json(url, &["db", "list"]);
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "other"),
        "{list}"
    );

    // Another tenant, through --tenant.
    node.create_tenant("acme");
    client_json(
        url,
        &["db", "create", "books", "--file", "t", "--tenant", "acme"],
    );
    node.db("acme", "books").info().ok();
    let acme = client_json(url, &["db", "list", "--tenant", "acme"]);
    assert_eq!(acme.as_array().map(Vec::len), Some(1), "{acme}");
}

/// Creates the usual shop database through the CLI.
fn create_shop(url: &str) -> Db {
    client_json(
        url,
        &[
            "db",
            "create",
            "shop",
            "--file",
            "orders:customer",
            "--file",
            "lines",
        ],
    );
    Client::new(url).db("default", "shop")
}

#[test]
fn record_subcommands_put_get_scan_lookup_and_del() {
    let node = Node::start();
    let url = node.base();
    let shop = create_shop(url);

    let put = client_json(
        url,
        &[
            "put",
            "shop",
            "orders",
            "o1",
            r#"{"total":1}"#,
            "--alt",
            "customer=ann",
        ],
    );
    assert_eq!(put["created"], json!(true), "{put}");
    assert_eq!(put["serial"], json!(1), "{put}");
    let got = shop.get("orders", "o1");
    assert_eq!(got.ok()["data"], json!({ "total": 1 }));
    assert_eq!(got.ok()["alt"], json!({ "customer": "ann" }));

    client_json(
        url,
        &["put", "shop", "orders", "o2", "7", "--alt", "customer=bob"],
    );
    client_json(
        url,
        &[
            "put",
            "shop",
            "orders",
            "o3",
            r#"["x", null]"#,
            "--alt",
            "customer=ann",
        ],
    );
    client_json(url, &["put", "shop", "lines", "o1/1", r#""A-1""#]);
    // Replacing a record.
    let replaced = client_json(
        url,
        &[
            "put",
            "shop",
            "orders",
            "o1",
            r#"{"total":2}"#,
            "--alt",
            "customer=ann",
        ],
    );
    assert_eq!(replaced["created"], json!(false), "{replaced}");

    let got = client_json(url, &["get", "shop", "orders", "o1"]);
    assert_eq!(got["key"], json!("o1"));
    assert_eq!(got["data"], json!({ "total": 2 }));
    assert_eq!(got["alt"], json!({ "customer": "ann" }));
    assert_eq!(&got, shop.get("orders", "o1").ok(), "same as the API");
    assert_eq!(
        client_json(url, &["get", "shop", "lines", "o1/1"])["data"],
        json!("A-1")
    );

    let all = client_json(url, &["scan", "shop", "orders"]);
    assert_eq!(keys_of(&all["records"]), ["o1", "o2", "o3"]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["records"][2]["data"], json!(["x", null]));
    let from = client_json(url, &["scan", "shop", "orders", "--from", "o2"]);
    assert_eq!(keys_of(&from["records"]), ["o2", "o3"]);
    let to = client_json(url, &["scan", "shop", "orders", "--to", "o2"]);
    assert_eq!(keys_of(&to["records"]), ["o1", "o2"]);
    let page = client_json(
        url,
        &["scan", "shop", "orders", "--from", "o1", "--limit", "1"],
    );
    assert_eq!(keys_of(&page["records"]), ["o1"]);
    assert_eq!(page["next"], json!("o2"), "{page}");
    let range = client_json(
        url,
        &[
            "scan", "shop", "orders", "--from", "o2", "--to", "o2", "--limit", "5",
        ],
    );
    assert_eq!(keys_of(&range["records"]), ["o2"]);

    let ann = client_json(url, &["lookup", "shop", "orders", "customer", "ann"]);
    assert_eq!(keys_of(&ann["records"]), ["o1", "o3"]);
    let nobody = client_json(url, &["lookup", "shop", "orders", "customer", "zed"]);
    assert_eq!(nobody["records"], json!([]));

    let deleted = client_json(url, &["del", "shop", "orders", "o1"]);
    assert!(deleted["serial"].as_u64().is_some(), "{deleted}");
    assert_eq!(shop.data("orders", "o1"), None);
    assert_eq!(shop.alt_keys("orders", "customer", "ann"), ["o3"]);
    assert_eq!(shop.record_count("orders"), 2);
}

#[test]
fn txn_subcommand_reads_ops_from_a_file_or_stdin() {
    let node = Node::start();
    let url = node.base();
    let shop = create_shop(url);
    shop.put("orders", "o1", json!({ "customer": "ann" }), json!(1))
        .ok();
    shop.put("orders", "o2", json!({ "customer": "bob" }), json!(2))
        .ok();

    let tmp = tempfile::tempdir().unwrap();
    let ops = json!({ "ops": [
        op::insert_alt("orders", "o3", json!({ "customer": "cat" }), json!({ "total": 3 })),
        op::insert("lines", "o3/1", json!({ "sku": "A-1" })),
        op::update("orders", "o2", json!(20)),
        op::delete("orders", "o1"),
    ]});
    let file = tmp.path().join("ops.json");
    std::fs::write(&file, serde_json::to_string_pretty(&ops).unwrap()).unwrap();
    let done = client_json(url, &["txn", "shop", s(&file)]);
    assert_eq!(done["count"], json!(4), "{done}");
    let (first, last) = (
        done["first_serial"].as_u64().unwrap(),
        done["last_serial"].as_u64().unwrap(),
    );
    assert_eq!(last - first + 1, 4, "{done}");
    assert_eq!(shop.data("orders", "o3"), Some(json!({ "total": 3 })));
    assert_eq!(shop.data("lines", "o3/1"), Some(json!({ "sku": "A-1" })));
    assert_eq!(shop.data("orders", "o2"), Some(json!(20)));
    assert_eq!(shop.data("orders", "o1"), None);
    assert_eq!(shop.alt_keys("orders", "customer", "cat"), ["o3"]);

    // `-` reads the ops from stdin.
    let stdin_ops = json!({ "ops": [op::upsert("lines", "o3/2", json!({ "sku": "B-2" }))] });
    let out = doppel_stdin(&["txn", "shop", "-", "--url", url], &stdin_ops.to_string());
    let done = out.json();
    assert_eq!(done["count"], json!(1), "{out}");
    assert_eq!(done["first_serial"], json!(last + 1), "{out}");
    assert_eq!(shop.data("lines", "o3/2"), Some(json!({ "sku": "B-2" })));

    // A refused transaction changes nothing and says why.
    let refused_ops = json!({ "ops": [
        op::upsert("lines", "o9/1", json!(1)),
        op::insert("orders", "o3", json!("duplicate")),
    ]});
    let out = doppel_stdin(
        &["txn", "shop", "-", "--url", url],
        &refused_ops.to_string(),
    );
    assert!(out.failure().contains("409 duplicate-key"), "{out}");
    assert_eq!(shop.data("lines", "o9/1"), None);
    assert_eq!(shop.data("orders", "o3"), Some(json!({ "total": 3 })));

    // Input that is not JSON, or a missing file, is reported before any request.
    let out = doppel_stdin(&["txn", "shop", "-", "--url", url], "{ops: nope");
    assert!(out.failure().contains("not JSON"), "{out}");
    let missing = tmp.path().join("missing.json");
    let out = client(url, &["txn", "shop", s(&missing)]);
    let stderr = out.failure();
    assert!(
        stderr.contains("cannot read") && stderr.contains(s(&missing)),
        "{out}"
    );
    assert_eq!(shop.info().ok()["last_serial"], json!(last + 1 + 2));
}

#[test]
fn snapshot_log_and_checksums_subcommands() {
    let node = Node::start();
    let url = node.base();
    let shop = create_shop(url);
    for i in 1..=5 {
        client_json(
            url,
            &[
                "put",
                "shop",
                "orders",
                &format!("o{i}"),
                &format!(r#"{{"n":{i}}}"#),
                "--alt",
                "customer=ann",
            ],
        );
    }
    client_json(
        url,
        &[
            "put",
            "shop",
            "orders",
            "o2",
            r#"{"n":22}"#,
            "--alt",
            "customer=bob",
        ],
    );
    client_json(url, &["del", "shop", "orders", "o3"]);

    let snapshot = client_json(url, &["snapshot", "shop"]);
    assert_eq!(snapshot["serial"], json!(7), "{snapshot}");
    let listed = shop.snapshots();
    let listed = listed.ok().as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["serial"], json!(7));
    assert_eq!(shop.info().ok()["snapshot_serial"], json!(7));

    // The default log view starts at serial 1.
    let log = client_json(url, &["log", "shop"]);
    let entries = log["entries"].as_array().expect("entries");
    let serials: Vec<u64> = entries
        .iter()
        .map(|e| e["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, (1..=7).collect::<Vec<_>>(), "{log}");
    assert_eq!(entries[0]["kind"], json!("insert"));
    assert_eq!(entries[0]["a"]["key"], json!("o1"));
    assert_eq!(entries[5]["kind"], json!("update"));
    assert_eq!(entries[5]["a"]["data"], json!({ "n": 22 }));
    assert_eq!(entries[5]["b"]["data"], json!({ "n": 2 }));
    assert_eq!(entries[6]["kind"], json!("delete"));
    assert_eq!(entries[6]["t"]["op"], json!("delete"));
    assert_eq!(&log, shop.log(1, 20).ok(), "same as the API");

    let window = client_json(url, &["log", "shop", "--from", "6", "--limit", "1"]);
    let window = window["entries"].as_array().expect("entries");
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["serial"], json!(6));

    let sums = client_json(url, &["checksums", "shop"]);
    let names: Vec<&Value> = sums["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| &f["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("orders"), &json!("orders#customer"), &json!("lines")]
    );
    let first = &sums["files"][0]["blocks"][0];
    assert_eq!(first["block"], json!(0), "{sums}");
    let hex = first["checksum"].as_str().expect("checksum");
    assert!(
        hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex}"
    );
    assert_eq!(&sums, shop.checksums().ok(), "same as the API");
}

#[test]
fn keys_and_values_with_special_characters_round_trip() {
    let node = Node::start();
    let url = node.base();
    let shop = create_shop(url);
    let keys = ["a b/ç", "100%?x#y&z=1", "../up", "日本語 🚀", "+plus"];
    for (i, key) in keys.iter().enumerate() {
        let data = format!(r#"{{"i":{i}}}"#);
        let alt = format!("customer={key} ü");
        client_json(url, &["put", "shop", "orders", key, &data, "--alt", &alt]);
    }
    for (i, key) in keys.iter().enumerate() {
        let got = client_json(url, &["get", "shop", "orders", key]);
        assert_eq!(got["key"], json!(key), "{got}");
        assert_eq!(got["data"], json!({ "i": i }));
        assert_eq!(got["alt"]["customer"], json!(format!("{key} ü")));
        // The API agrees on where each record is.
        assert_eq!(shop.data("orders", key), Some(json!({ "i": i })));
        let alt = client_json(
            url,
            &["lookup", "shop", "orders", "customer", &format!("{key} ü")],
        );
        assert_eq!(keys_of(&alt["records"]), [*key]);
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    let all = client_json(url, &["scan", "shop", "orders", "--limit", "100"]);
    assert_eq!(keys_of(&all["records"]), sorted);
    let bounded = client_json(
        url,
        &["scan", "shop", "orders", "--from", "a b/ç", "--to", "a b/ç"],
    );
    assert_eq!(keys_of(&bounded["records"]), ["a b/ç"]);

    client_json(url, &["del", "shop", "orders", "a b/ç"]);
    assert_eq!(shop.data("orders", "a b/ç"), None);
    assert_eq!(shop.record_count("orders"), keys.len() as u64 - 1);
}

#[test]
fn client_errors_exit_non_zero_with_a_clear_message() {
    let node = Node::start();
    let url = node.base();
    create_shop(url);

    let out = client(url, &["get", "shop", "orders", "missing"]);
    let stderr = out.failure();
    assert!(
        stderr.starts_with("doppel: ") && stderr.contains("404 not-found"),
        "{out}"
    );
    assert!(
        stderr.contains("missing"),
        "the detail names the record: {out}"
    );
    assert_eq!(out.stdout, "", "nothing on stdout: {out}");

    let out = client(url, &["del", "shop", "orders", "missing"]);
    assert!(out.failure().contains("404 not-found"), "{out}");
    let out = client(url, &["get", "nodb", "orders", "o1"]);
    assert!(out.failure().contains("404 not-found"), "{out}");
    let out = client(url, &["lookup", "shop", "orders", "nokey", "x"]);
    assert!(out.failure().contains("404 not-found"), "{out}");
    let out = client(url, &["put", "shop", "orders", "o1", "{not json"]);
    assert!(out.failure().contains("not JSON"), "{out}");
    // An empty key is refused by the client before any request.
    let out = client(url, &["put", "shop", "orders", "", "1"]);
    assert!(out.failure().contains("the key is empty"), "{out}");

    // Bad arguments are usage errors.
    let out = client(
        url,
        &["put", "shop", "orders", "o1", "1", "--alt", "noequals"],
    );
    assert!(out.failure().contains("name=value"), "{out}");
    let out = client(url, &["scan", "shop", "orders", "--limit", "many"]);
    out.failure();
    let out = doppel(&["frobnicate"]);
    assert!(out.failure().contains("frobnicate"), "{out}");
    assert_eq!(node.db("default", "shop").record_count("orders"), 0);

    // Nothing listens on this port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{port}");
    for args in [&["health"][..], &["get", "shop", "orders", "o1"][..]] {
        let out = client(&dead, args);
        let stderr = out.failure();
        assert!(
            stderr.starts_with("doppel: cannot reach ") && stderr.contains(&dead),
            "{out}"
        );
    }
    // Neither is a URL that is not one.
    let out = client("not-a-url", &["health"]);
    assert!(out.failure().starts_with("doppel: "), "{out}");
}

// ---------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------

#[track_caller]
fn bench(url: &str, records: &str) -> Run {
    let args = [
        "bench",
        "--url",
        url,
        "--records",
        records,
        "--batch",
        "100",
        "--connections",
        "2",
        "--reads",
        "200",
        "--db",
        "benchdb",
    ];
    run(doppel_command(&args), args.join(" "), None, BENCH_TIMEOUT)
}

#[test]
fn bench_loads_a_node_and_reports() {
    let node = Node::start();
    let out = bench(node.base(), "2000");
    let report = out.success();
    let line = |prefix: &str| {
        report
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("a `{prefix}` line: {out}"))
            .to_string()
    };
    assert!(
        line("writes:").starts_with("writes: 2000 records in 20 transactions of 100"),
        "{out}"
    );
    assert!(line("reads:").starts_with("reads: 200 point gets"), "{out}");
    let memory = line("memory:");
    let info = node.db("default", "benchdb").info();
    let info = info.ok();
    assert_eq!(info["files"][0]["records"], json!(2000), "{info}");
    assert_eq!(
        memory.split_whitespace().nth(1),
        Some(info["memory_bytes"].to_string().as_str()),
        "memory line reports the database's memory: {memory} / {info}"
    );

    // Running again recreates the database.
    let out = bench(node.base(), "300");
    assert!(
        out.success()
            .contains("writes: 300 records in 3 transactions"),
        "{out}"
    );
    let db = node.db("default", "benchdb");
    assert_eq!(db.info().ok()["files"][0]["records"], json!(300));
    assert!(db.data("bench", "k000000000299").is_some());
    assert_eq!(db.data("bench", "k000000000300"), None);
}

/// `bench --replica`: the logical chain measured live, in binary batches (the report
/// comes only once the link confirmed every record); a scenario it does not know is an
/// error that lists the ones it does.
#[test]
fn bench_measures_a_logical_chain_live_and_refuses_an_unknown_scenario() {
    let source = Node::start();
    let replica = Node::start();
    let with = |scenario: &str| {
        let args = [
            "bench",
            "--url",
            source.base(),
            "--replica",
            replica.base(),
            "--scenario",
            scenario,
            "--records",
            "2000",
            "--batch",
            "100",
            "--connections",
            "2",
            "--format",
            "binary",
            "--durability",
            "none",
            "--db",
            "chain",
        ];
        run(doppel_command(&args), args.join(" "), None, BENCH_TIMEOUT)
    };
    let out = with("logical-live");
    let report = out.success();
    assert!(
        report.contains(
            "logical, live: 2000 records (binary) written and applied by key through the same chain"
        ),
        "{out}"
    );
    assert!(
        !report.contains("logical: 2000"),
        "the catch-up is not run: {out}"
    );
    // The bench removes what it made, on both nodes.
    assert_eq!(replica.db("default", "chain").info().status, 404);

    let out = with("logicl");
    assert!(
        out.failure()
            .contains("unknown scenario 'logicl' (with --replica: all, async, sync,"),
        "{out}"
    );
}

/// `serve --demo`: three nodes and a topology between them, one token for all; the two
/// extra nodes end with the command, even when it is killed.
#[test]
fn serve_demo_starts_three_nodes_with_a_live_topology_and_they_end_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = doppel_command(&[
        "serve",
        "--demo",
        "--data",
        s(&data),
        "--listen",
        "127.0.0.1:0",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn doppel serve --demo");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().push(line);
            }
        });
    }
    let find = |prefix: &str| {
        lines
            .lock()
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    };
    let ready = wait_until(deadline_in(Duration::from_secs(60)), || {
        find("doppel demo token: ").is_some()
    });
    if !ready {
        let _ = child.kill();
        panic!("no demo token printed: {:?}", lines.lock());
    }
    let token = find("doppel demo token: ").unwrap();
    let a = find("doppel listening on ").unwrap();
    let nodes = find("doppel demo: node a ").unwrap();
    let others: Vec<String> = nodes
        .split(", ")
        .skip(1)
        .map(|n| n.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(others.len(), 2, "{nodes}");
    let client = Client::new(&a).with_token(&token);
    // Each node answers the name the topology gives it.
    assert_eq!(client.get("/v1/node").ok()["name"], "a");
    for (url, name) in others.iter().zip(["b", "c"]) {
        let node = Client::new(url).with_token(&token).get("/v1/node");
        assert_eq!(node.ok()["name"], name, "{url}");
    }
    let shown = client
        .get("/v1/tenants/default/topologies/demo")
        .ok()
        .clone();
    assert_eq!(shown["links"].as_array().map(Vec::len), Some(2), "{shown}");
    let source = client.db("default", "shop");
    for url in &others {
        let replica = Client::new(url).with_token(&token).db("default", "shop");
        wait_identical(&source, &replica, Duration::from_secs(60));
        assert_eq!(replica.record_count("orders"), 200);
    }
    // Killed outright, it still takes its two nodes with it.
    child.kill().expect("kill");
    child.wait().expect("wait");
    for url in &others {
        let gone = wait_until(deadline_in(Duration::from_secs(30)), || {
            Client::new(url)
                .try_request("GET", "/v1/health", Body::Empty)
                .is_err()
        });
        assert!(gone, "demo node {url} outlived its parent");
    }
    // Its log, written to a pipe (or a file), is plain text: no terminal colour codes.
    let log = log.join().expect("the log reader");
    assert!(log.contains("node started"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the log: {log:?}");
}

/// `doppel restore` follows the restore operation to its end and prints it; the
/// database is then as it was at the serial; `--dry-run` answers the plan only.
#[test]
fn restore_subcommand_follows_the_operation() {
    let node = Node::start();
    let url = node.base();
    let shop = create_shop(url);
    let first = client_json(url, &["put", "shop", "orders", "o1", r#"{"n":1}"#]);
    let point = first["serial"].as_u64().expect("a put answers its serial");
    client_json(url, &["put", "shop", "orders", "o2", r#"{"n":2}"#]);
    client_json(url, &["put", "shop", "orders", "o1", r#"{"n":11}"#]);

    let point_text = point.to_string();
    let plan = client_json(
        url,
        &["restore", "shop", "--serial", &point_text, "--dry-run"],
    );
    assert_eq!(plan["dry_run"], json!(true), "{plan}");
    assert_eq!(shop.data("orders", "o2"), Some(json!({"n": 2})));

    let done = client_json(url, &["restore", "shop", "--serial", &point_text]);
    assert_eq!(done["state"], json!("succeeded"), "{done}");
    assert_eq!(done["phase"], json!("finished"), "{done}");
    assert_eq!(shop.data("orders", "o1"), Some(json!({"n": 1})));
    assert_eq!(shop.data("orders", "o2"), None);

    let refused = client(url, &["restore", "shop"]);
    assert!(
        refused.failure().contains("--serial"),
        "a restore without a point names what is missing: {refused}"
    );
}
