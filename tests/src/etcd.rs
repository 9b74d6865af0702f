//! Real etcd for the cluster tests: Debian's `etcd` (3.4) started on free loopback ports
//! with a temporary data directory, one process per member, waited for (health, with a
//! deadline) and killed on drop. Members can be killed (`kill -9`), paused (SIGSTOP:
//! unreachable, as behind a cut link) and resumed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{deadline_in, wait_until};

/// How long etcd may take to answer healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client: String,
    peer: String,
    data: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in ([`crate::netns`]), if not this one.
    ns: Option<String>,
}

/// An etcd cluster of one or more members.
pub struct Etcd {
    members: Vec<Member>,
    initial: String,
    _dir: TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Whether `client` answers healthy.
fn healthy(client: &str) -> bool {
    ureq::get(&format!("{client}/health"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .is_some_and(|b| b.contains("\"true\""))
}

impl Etcd {
    /// One member inside host `i` of `net`, on the host's address.
    pub fn start_on_host(net: &crate::netns::Net, i: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("doppel-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let h = &net.hosts[i];
        let m = Member {
            name: "e0".into(),
            client: format!("http://{}:2379", h.ip),
            peer: format!("http://{}:2380", h.ip),
            data: dir.path().join("e0"),
            child: None,
            ns: Some(h.ns.clone()),
        };
        let mut etcd = Etcd {
            initial: format!("e0={}", m.peer),
            members: vec![m],
            _dir: dir,
        };
        etcd.spawn(0);
        etcd.wait_healthy(0);
        etcd
    }

    /// Start `n` members and wait until every one answers healthy.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("doppel-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("e{i}")),
                child: None,
                ns: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial,
            _dir: dir,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut command = match &m.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &m.client])
            .args(["--advertise-client-urls", &m.client])
            .args(["--listen-peer-urls", &m.peer])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            // Quick elections between members on loopback.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian: apt-get install etcd-server)");
        m.child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let client = &self.members[i].client;
        let check = || match &self.members[i].ns {
            Some(ns) => crate::netns::within(ns, || healthy(client)),
            None => healthy(client),
        };
        assert!(
            wait_until(deadline_in(HEALTHY_WITHIN), check),
            "etcd member {i} at {client} not healthy within {HEALTHY_WITHIN:?}"
        );
    }

    /// The client URLs, as `[cluster] etcd` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// `[cluster]` for a node named `node_id` of cluster `name`.
    pub fn cluster_toml(&self, name: &str, node_id: &str, lease_ttl_ms: u64) -> String {
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!(
            "\n[cluster]\nname = \"{name}\"\netcd = [{}]\nnode_id = \"{node_id}\"\nlease_ttl_ms = {lease_ttl_ms}\n",
            endpoints.join(", ")
        )
    }

    /// `kill -9` member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(c) = &self.members[i].child {
            let pid = libc::pid_t::try_from(c.id()).expect("pid fits");
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Freeze every member (SIGSTOP): etcd is unreachable, its state kept.
    pub fn pause(&self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGSTOP);
        }
    }

    /// Resume every member and wait until they answer healthy again.
    pub fn resume(&self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
        }
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_healthy(i);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}
