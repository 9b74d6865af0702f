//! Hosts on separate network stacks for partition tests: one network namespace per host
//! (`ip netns`), each joined by a veth pair to a bridge that lives in a namespace of its
//! own (the hub), addresses `10.231.X.{1..}/24` that exist only inside these namespaces.
//! Cutting a host sets its veth end on the bridge down; healing sets it up again. Needs
//! root (CI runs as root). Everything is deleted on drop.
//!
//! Processes run inside with `ip netns exec` ([`Net::command`]); the test's own calls
//! reach them from a thread that joined the host's namespace ([`Net::enter`], `setns(2)`
//! acts on the calling thread only).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host: its namespace and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: String,
    /// Its veth end on the bridge (in the hub).
    port: String,
}

/// A bridge and the hosts on it.
pub struct Net {
    hub: String,
    pub hosts: Vec<Host>,
}

impl Net {
    /// `n` hosts on one bridge, every link up.
    pub fn new(n: usize) -> Net {
        let tag = format!(
            "{:x}{:x}",
            std::process::id() % 0xfff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let subnet =
            (std::process::id() as usize * 7 + NEXT.load(Ordering::SeqCst) as usize) % 250 + 1;
        let hub = format!("d{tag}hub");
        ip(&["netns", "add", &hub]);
        let mut net = Net {
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("d{tag}h{i}");
            ip(&["netns", "add", &ns]);
            let (inner, port) = (format!("d{tag}i{i}"), format!("d{tag}p{i}"));
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &port]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &port, "netns", &hub]);
            let addr = format!("10.231.{subnet}.{}", i + 1);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &port, "up"]);
            net.hosts.push(Host { ns, ip: addr, port });
        }
        net
    }

    /// Cut host `i` off the bridge.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.hosts[i].port, "down"]);
    }

    /// Put host `i` back on the bridge.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.hosts[i].port, "up"]);
    }

    /// A command that runs `program` inside host `i`.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }
}

/// Move the calling thread into namespace `ns` (for its network only).
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file we hold open; it changes this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Run `f` on a thread inside namespace `ns`.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("a thread in a namespace panicked")
    })
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .output();
    }
}
