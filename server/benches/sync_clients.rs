//! Synchronous commits, Doppel against Redis, with the same client for both.
//!
//! One small blocking client speaks both protocols over raw keep-alive sockets with
//! `TCP_NODELAY`: HTTP/1.1 `PUT …/records/{key}` to a Doppel source whose database has a
//! synchronous link, and RESP `SET` + `WAIT 1 0` (written in one send, as a pipelining
//! client does) to a Redis primary with one replica. Neither side gets a cleverer client
//! than the other, so the ratio is the servers'.
//!
//! Two measurements, each interleaved in rounds (Doppel, Redis, Doppel, …) so that the
//! machine's minute-to-minute swings fall on both:
//! - `latency`: one connection, one commit at a time: p50, p99, p99.9;
//! - `concurrent`: `--clients` connections, each committing in a loop for `--seconds`:
//!   commits/s and p50/p99.
//!
//! Beside each figure it prints the CPU seconds the client and each server process used
//! (from `/proc/PID/stat`), so a reader can see the client was not the bottleneck.
//!
//! ```sh
//! cargo bench --bench sync_clients -- --doppel 127.0.0.1:7101 --token "$TOKEN" \
//!   --path /v1/tenants/default/databases/sync/files/bench/records \
//!   --redis 127.0.0.1:6390 --pids "$A,$B,$RP,$RR" --clients 64
//! ```
//! `server/benches/vs_redis.sh` starts everything and runs it. `--sides doppel|redis`
//! measures one side, `--first-round N` numbers the rounds (and so the keys) from N, and
//! `--doppel-name` names the Doppel side in the output: the script uses them to run one
//! round per call when it compares two Doppel builds with Redis. Beside the CPU seconds
//! each line gives the CPU µs and the context switches (its threads going to sleep or
//! put off the CPU, from `/proc/PID/task/*/status`) per commit of every process, and
//! with `--syscalls` its system calls per commit (`perf stat -e raw_syscalls:sys_enter
//! -p PID` around the measurement). The latency figures' counts include the 200
//! warm-up commits, divided by the timed ones.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    doppel: String,
    token: String,
    path: String,
    redis: String,
    pids: Vec<(String, u32)>,
    commits: usize,
    rounds: usize,
    clients: usize,
    seconds: f64,
    value_bytes: usize,
    mode: String,
    /// `doppel`, `redis` or `both`.
    sides: String,
    /// The first round's number (keys are named by round): a script that runs one
    /// round per call, interleaving servers, keeps each call's keys new.
    first_round: usize,
    /// What this run calls the Doppel side (`doppel`; a script comparing two builds
    /// names them).
    doppel_name: String,
    /// Also count each process's system calls (`perf stat`, which must be allowed to
    /// attach to them).
    syscalls: bool,
}

fn args() -> Args {
    let mut a = Args {
        doppel: String::new(),
        token: String::new(),
        path: String::new(),
        redis: String::new(),
        pids: Vec::new(),
        commits: 5_000,
        rounds: 3,
        clients: 64,
        seconds: 3.0,
        value_bytes: 100,
        mode: "all".into(),
        sides: "both".into(),
        first_round: 0,
        doppel_name: "doppel".into(),
        syscalls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` adds `--bench`; it takes no value.
        if flag == "--bench" {
            continue;
        }
        if flag == "--syscalls" {
            a.syscalls = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--doppel" => a.doppel = value,
            "--token" => a.token = value,
            "--path" => a.path = value,
            "--redis" => a.redis = value,
            "--pids" => {
                a.pids = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.split_once('=') {
                        Some((name, pid)) => (name.to_string(), pid.parse().expect("a pid")),
                        None => (s.to_string(), s.parse().expect("a pid")),
                    })
                    .collect()
            }
            "--commits" => a.commits = value.parse().expect("a count"),
            "--rounds" => a.rounds = value.parse().expect("a count"),
            "--clients" => a.clients = value.parse().expect("a count"),
            "--seconds" => a.seconds = value.parse().expect("seconds"),
            "--value-bytes" => a.value_bytes = value.parse().expect("a size"),
            "--mode" => a.mode = value,
            "--sides" => a.sides = value,
            "--first-round" => a.first_round = value.parse().expect("a number"),
            "--doppel-name" => a.doppel_name = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One keep-alive connection speaking one of the two protocols.
enum Conn {
    Http {
        s: TcpStream,
        head: String,
        body: Vec<u8>,
        buf: Vec<u8>,
    },
    Resp {
        s: TcpStream,
        value: Vec<u8>,
        buf: Vec<u8>,
    },
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

impl Conn {
    fn doppel(a: &Args) -> Conn {
        let body = format!(r#"{{"data":"{}"}}"#, "v".repeat(a.value_bytes));
        Conn::Http {
            s: connect(&a.doppel),
            head: format!(
                "Host: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                a.doppel,
                a.token,
                body.len()
            ),
            body: body.into_bytes(),
            buf: Vec::with_capacity(4096),
        }
    }

    fn redis(a: &Args) -> Conn {
        Conn::Resp {
            s: connect(&a.redis),
            value: vec![b'v'; a.value_bytes],
            buf: Vec::with_capacity(256),
        }
    }

    /// One synchronous commit of `key`; panics on any refusal (a bench must not count
    /// failures as commits).
    fn commit(&mut self, path: &str, key: &str) {
        match self {
            Conn::Http { s, head, body, buf } => {
                let mut req = Vec::with_capacity(head.len() + body.len() + 128);
                write!(req, "PUT {path}/{key} HTTP/1.1\r\n").unwrap();
                req.extend_from_slice(head.as_bytes());
                req.extend_from_slice(body);
                s.write_all(&req).expect("send");
                let (status, _) = read_http(s, buf);
                assert_eq!(status, 200, "Doppel refused a commit");
            }
            Conn::Resp { s, value, buf } => {
                let mut req = Vec::with_capacity(value.len() + 128);
                write!(
                    req,
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                    key.len(),
                    value.len()
                )
                .unwrap();
                req.extend_from_slice(value);
                req.extend_from_slice(b"\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n");
                s.write_all(&req).expect("send");
                let ok = read_line(s, buf);
                assert_eq!(ok, b"+OK", "Redis refused a SET");
                let acks = read_line(s, buf);
                assert_eq!(acks, b":1", "WAIT did not reach the replica");
            }
        }
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).expect("read");
    assert!(n > 0, "the server closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

fn read_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return line;
        }
        fill(s, buf);
    }
}

/// Read one HTTP/1.1 answer with a Content-Length body: (status, body length).
fn read_http(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, usize) {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf);
    };
    let head = std::str::from_utf8(&buf[..end]).expect("an HTTP head");
    let status: u16 = head[9..12].parse().expect("a status");
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        fill(s, buf);
    }
    buf.drain(..end + len);
    (status, len)
}

fn us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

/// CPU seconds (user + system) of a process so far.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn own_cpu() -> f64 {
    cpu_of(std::process::id())
}

/// Context switches (voluntary and involuntary) of a process's live threads so far:
/// how often its threads went to sleep or were put off the CPU.
fn switches_of(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// `perf stat` counting a process's system calls until [`SyscallCount::stop`].
struct SyscallCount {
    perf: std::process::Child,
    out: std::path::PathBuf,
}

impl SyscallCount {
    fn start(pid: u32) -> Option<SyscallCount> {
        let out =
            std::env::temp_dir().join(format!("sync_clients-{}-{pid}.perf", std::process::id()));
        let perf = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(SyscallCount { perf, out })
    }

    /// Stop counting: the system calls counted (None if perf could not count).
    fn stop(mut self) -> Option<u64> {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(self.perf.id() as i32, libc::SIGINT) };
        self.perf.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok()?;
        let _ = std::fs::remove_file(&self.out);
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))?
            .split(',')
            .next()?
            .parse()
            .ok()
    }
}

/// CPU seconds used by the client and each named process while `f` ran, and per
/// commit (`commits` of what `f` returns) in µs, with each process's context switches
/// per commit (and its system calls, with `--syscalls`).
fn with_cpu<T>(a: &Args, f: impl FnOnce() -> T, commits: impl Fn(&T) -> usize) -> (T, String) {
    let counting: Vec<Option<SyscallCount>> = a
        .pids
        .iter()
        .map(|(_, p)| a.syscalls.then(|| SyscallCount::start(*p)).flatten())
        .collect();
    if a.syscalls {
        // Time for perf to attach before the first commit.
        std::thread::sleep(Duration::from_millis(300));
    }
    let before: Vec<f64> = a.pids.iter().map(|(_, p)| cpu_of(*p)).collect();
    let switched: Vec<u64> = a.pids.iter().map(|(_, p)| switches_of(*p)).collect();
    let me = own_cpu();
    let out = f();
    let n = commits(&out).max(1) as f64;
    let spent = own_cpu() - me;
    let mut cpu = format!("client {spent:.2}");
    let mut per = format!("client {:.1}", spent / n * 1e6);
    let mut switches = String::new();
    for (((name, pid), b), s) in a.pids.iter().zip(before).zip(switched) {
        let spent = cpu_of(*pid) - b;
        cpu.push_str(&format!(", {name} {spent:.2}"));
        per.push_str(&format!(", {name} {:.1}", spent / n * 1e6));
        let sep = if switches.is_empty() { "" } else { ", " };
        let s = switches_of(*pid).saturating_sub(s) as f64 / n;
        switches.push_str(&format!("{sep}{name} {s:.2}"));
    }
    let mut line =
        format!("CPU s: {cpu}; CPU µs per commit: {per}; context switches per commit: {switches}");
    if a.syscalls {
        let counted: Vec<String> = a
            .pids
            .iter()
            .zip(counting)
            .map(|((name, _), c)| match c.and_then(SyscallCount::stop) {
                Some(calls) => format!("{name} {:.2}", calls as f64 / n),
                None => format!("{name} ?"),
            })
            .collect();
        line.push_str(&format!(
            "; system calls per commit: {}",
            counted.join(", ")
        ));
    }
    (out, line)
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Doppel,
    Redis,
}

impl Side {
    fn name(self, a: &Args) -> &str {
        match self {
            Side::Doppel => &a.doppel_name,
            Side::Redis => "redis",
        }
    }

    fn conn(self, a: &Args) -> Conn {
        match self {
            Side::Doppel => Conn::doppel(a),
            Side::Redis => Conn::redis(a),
        }
    }
}

fn latency(a: &Args, side: Side, round: usize) -> Vec<Duration> {
    let mut c = side.conn(a);
    for i in 0..200 {
        c.commit(&a.path, &format!("w{round}-{i}"));
    }
    let mut lat = Vec::with_capacity(a.commits);
    for i in 0..a.commits {
        let key = format!("l{round}-{i:08}");
        let t = Instant::now();
        c.commit(&a.path, &key);
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn concurrent(a: &Arc<Args>, side: Side, round: usize) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..a.clients)
        .map(|t| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = side.conn(&a);
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{round}-{t}-{i}");
                    let s = Instant::now();
                    c.commit(&a.path, &key);
                    lat.push(s.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a client thread"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, all)
}

fn main() {
    let a = Arc::new(args());
    let sides: Vec<Side> = match a.sides.as_str() {
        "doppel" => vec![Side::Doppel],
        "redis" => vec![Side::Redis],
        _ => vec![Side::Doppel, Side::Redis],
    };
    assert!(
        (a.doppel.is_empty() || !a.path.is_empty())
            && (!sides.contains(&Side::Doppel) || !a.doppel.is_empty())
            && (!sides.contains(&Side::Redis) || !a.redis.is_empty()),
        "--doppel with --path, and --redis, are needed for the sides measured"
    );
    if a.mode == "all" || a.mode == "latency" {
        let mut p50 = [Vec::new(), Vec::new()];
        for (n, round) in (a.first_round..a.first_round + a.rounds).enumerate() {
            for (i, side) in sides.iter().copied().enumerate() {
                let (lat, cpu) = with_cpu(&a, || latency(&a, side, round), Vec::len);
                println!(
                    "latency round {round} {}: {} commits, one connection: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({cpu})",
                    side.name(&a),
                    lat.len(),
                    us(&lat, 0.5),
                    us(&lat, 0.99),
                    us(&lat, 0.999)
                );
                p50[i].push(us(&lat, 0.5));
            }
            if sides.len() == 2 {
                println!(
                    "latency round {round}: doppel p50 / redis p50 = {:.2}",
                    p50[0][n] / p50[1][n]
                );
            }
        }
    }
    if a.mode == "all" || a.mode == "concurrent" {
        for round in a.first_round..a.first_round + a.rounds {
            let mut rate = [0.0; 2];
            for (i, side) in sides.iter().copied().enumerate() {
                let ((r, lat), cpu) =
                    with_cpu(&a, || concurrent(&a, side, round), |(_, lat)| lat.len());
                rate[i] = r;
                println!(
                    "concurrent round {round} {}: {} clients: {:.0} commits/s, p50 {:.1} µs, p99 {:.1} µs ({cpu})",
                    side.name(&a),
                    a.clients,
                    r,
                    us(&lat, 0.5),
                    us(&lat, 0.99)
                );
            }
            if sides.len() == 2 {
                println!(
                    "concurrent round {round}: doppel / redis commits/s = {:.2}",
                    rate[0] / rate[1]
                );
            }
        }
    }
}
