//! `doppel serve --demo`: a small live topology for trying the console. The node started
//! by the command is node `a`; it starts two more `doppel serve` processes (`b` and `c`,
//! data under `<data>/demo-b` and `<data>/demo-c`, API on free loopback ports) that
//! share one signing key (`<data>/demo.toml`), so one admin token works on all three.
//! Once all answer, it creates a `shop` database on `a` with some orders (first run
//! only) and applies the topology `demo`: `a/shop → b/shop` (sync) and
//! `a/shop → c/shop` (async). Each node is started with its name (`--name a`, `b`, `c`),
//! which the console shows beside its id. The children stop when the command stops.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::tenancy::auth::{AuthConfig, KeyConfig};

/// The other two nodes; they are killed when this is dropped, and stop by themselves
/// when this process dies (their standard input closes).
pub struct Children {
    nodes: Vec<(String, Child, String)>,
}

impl Children {
    /// `(name, API URL)` of each child node.
    pub fn urls(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|(name, _, url)| (name.clone(), url.clone()))
            .collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo's shared key: made on the first run, kept in `<data>/demo.toml`.
pub fn auth(data: &Path) -> Result<(PathBuf, AuthConfig), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let path = data.join("demo.toml");
    if !path.exists() {
        let key = KeyConfig::generate_hs256("demo")?;
        let text = format!(
            "# The demo nodes' shared signing key (doppel serve --demo).\n[auth]\nkeys = [{{ kid = \"demo\", alg = \"HS256\", secret = \"{}\" }}]\n",
            key.secret.unwrap_or_default()
        );
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let file = super::serve::read_config(Some(&path))?;
    Ok((path, file.auth))
}

/// Start nodes `b` and `c`: the same binary, the demo's key, free loopback ports.
pub fn start_children(data: &Path, config: &Path) -> Result<Children, String> {
    let mut children = Children { nodes: Vec::new() };
    for name in ["b", "c"] {
        let data = data.join(format!("demo-{name}"));
        let args: [&OsStr; 4] = [
            "--config".as_ref(),
            config.as_ref(),
            "--name".as_ref(),
            name.as_ref(),
        ];
        let (child, url, lines) =
            start_node(&data, &args).map_err(|e| format!("demo node {name}: {e}"))?;
        // Keep reading its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        children.nodes.push((name.to_string(), child, url));
    }
    Ok(children)
}

/// What a child node still has to say on its standard output.
pub type NodeOutput = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Start `doppel serve` (this very binary, or the one `DOPPEL_NODE_BINARY` names: a
/// benchmark of two builds runs the same client against either) on `data`, on a free
/// loopback port, with
/// `extra` arguments: the child, its API URL and the rest of its standard output,
/// which the caller must keep reading (or drop). It ends when its standard input
/// closes, so it ends with this process however that ends; stopping it that way is a
/// graceful shutdown.
pub fn start_node(data: &Path, extra: &[&OsStr]) -> Result<(Child, String, NodeOutput), String> {
    let exe = match std::env::var_os("DOPPEL_NODE_BINARY") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let mut child = Command::new(&exe)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--exit-with-stdin"])
        .args(extra)
        // Its stdin is ours: when this process ends, however it ends, it closes.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("doppel listening on ") {
                    return Ok((child, url.trim().to_string(), lines));
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("stopped before it listened".into());
            }
        }
    }
}

/// One call to a demo node's API; a refusal is an error naming it.
fn call(token: &str, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    crate::remote::Client::new(url)
        .with_token(token)
        .call(method, url, body.as_ref())
        .map_err(|e| format!("{method} {url}: {e}"))
}

/// Seed node `a` (at `url`) with an admin `token` and apply the demo topology; prints
/// where everything is. Blocking.
pub fn seed(token: &str, url: &str, others: &[(String, String)]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, u) in others.iter().chain([&("a".to_string(), url.to_string())]) {
        while call(token, "GET", &format!("{u}/v1/health"), None).is_err() {
            if Instant::now() > deadline {
                return Err(format!("demo node at {u} did not answer"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let db = format!("{url}/v1/tenants/default/databases/shop");
    if call(token, "GET", &db, None).is_err() {
        call(
            token,
            "POST",
            &format!("{url}/v1/tenants/default/databases"),
            Some(json!({"name": "shop", "files": [
                {"name": "orders", "alt_keys": ["customer"]}, {"name": "lines"}]})),
        )?;
        let ops: Vec<Value> = (1..=200)
            .map(|i| {
                json!({"op": "upsert", "file": "orders", "key": format!("o-{i:04}"),
                       "alt": {"customer": format!("c{}", i % 12)},
                       "data": {"total": i * 3, "items": i % 5 + 1}})
            })
            .collect();
        call(
            token,
            "POST",
            &format!("{db}/transactions"),
            Some(json!({"ops": ops})),
        )?;
    }
    let mut nodes = serde_json::Map::new();
    nodes.insert("a".into(), json!({"url": url}));
    for (name, u) in others {
        nodes.insert(name.clone(), json!({"url": u}));
    }
    call(
        token,
        "POST",
        &format!("{url}/v1/tenants/default/topologies"),
        Some(json!({"name": "demo", "nodes": nodes, "links": [
            {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"}, "mode": "sync"},
            {"from": {"node": "a", "database": "shop"}, "to": {"node": "c", "database": "shop"}}]})),
    )?;
    println!(
        "doppel demo: node a {url}, {}",
        others
            .iter()
            .map(|(n, u)| format!("node {n} {u}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "doppel demo: topology 'demo' applied (a/shop -> b/shop sync, a/shop -> c/shop async)"
    );
    println!("doppel demo token: {token}");
    println!("(open {url}/ and log in with it)");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(())
}
