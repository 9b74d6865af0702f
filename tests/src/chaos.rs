//! Fault-injecting TCP proxy ("chaos proxy") for Doppel's end-to-end tests.
//!
//! This module owns [`ChaosProxy`], a loopback proxy placed between two
//! replicating nodes. It forwards Doppel frames (a little-endian `u32` length
//! `N`, then `N` bytes) whole, in both [`Direction`]s, injecting per-direction
//! [`Faults`] (drop, duplicate, reorder, delay) decided per frame by a seeded
//! PRNG so runs are reproducible. It can also hold and release a direction,
//! cut every connection, refuse new ones, and count what it did ([`Stats`]).
//! Every thread reads with a short timeout and watches a shutdown flag, so
//! dropping the proxy closes every connection and joins its threads promptly.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest payload a frame may declare; a longer one closes its connection.
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes buffered per connection and direction while held; beyond this the
/// proxy stops reading, so TCP backpressure reaches the sender.
pub const HOLD_LIMIT: usize = 64 << 20;
/// Seed used by [`ChaosProxy::start`].
pub const DEFAULT_SEED: u64 = 0x5EED_D0FF_E1C4_A05A;
/// A frame held back by `reorder` is sent alone once no next frame has
/// arrived for this long, so reordering never loses a frame.
pub const REORDER_FLUSH: Duration = Duration::from_millis(50);

/// Socket read timeout and wait granularity of every proxy thread.
const POLL: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which way a frame travels through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client to the upstream node.
    ToUpstream,
    /// From the upstream node back to the client.
    ToClient,
}

/// Faults injected into one direction; `Faults::default()` injects none.
///
/// Each frame after the first `skip_first` of its connection is, in order:
/// dropped with probability `drop`; otherwise delayed by `delay` plus a
/// random `0..jitter`; held back with probability `reorder` (then sent right
/// after the next frame, or alone after [`REORDER_FLUSH`]); and written twice
/// with probability `duplicate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a frame is dropped.
    pub drop: f64,
    /// Probability that a frame is written twice.
    pub duplicate: f64,
    /// Probability that a frame is held back and sent after the next one.
    pub reorder: f64,
    /// Delay added before forwarding each frame.
    pub delay: Duration,
    /// Random extra delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// How many first frames of each connection (the handshake) are never
    /// faulted. Defaults to 1.
    pub skip_first: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            skip_first: 1,
        }
    }
}

/// Frame counters of one direction, summed over all connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Frames read from the sender.
    pub received: u64,
    /// Frames written to the receiver (a duplicated frame counts once).
    pub forwarded: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Extra copies written by `duplicate`.
    pub duplicated: u64,
    /// Frames held back by `reorder` and sent after their successor.
    pub reordered: u64,
    /// Connections closed for a frame declaring more than [`MAX_FRAME`].
    pub oversized: u64,
}

/// A snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and proxied (refused ones are not counted).
    pub accepted: u64,
    /// Connections closed at once because of [`ChaosProxy::refuse`].
    pub refused: u64,
    /// Proxied connections still open.
    pub active: u64,
    /// Client->upstream counters.
    pub to_upstream: DirStats,
    /// Upstream->client counters.
    pub to_client: DirStats,
}

impl Stats {
    fn dir_mut(&mut self, dir: Direction) -> &mut DirStats {
        match dir {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

/// A fault-injecting frame proxy listening on `127.0.0.1`. Dropping it stops
/// accepting, closes every connection and joins its threads.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ChaosProxy {
    /// Starts a proxy to `upstream` on an ephemeral loopback port, seeded
    /// with [`DEFAULT_SEED`].
    pub fn start(upstream: SocketAddr) -> io::Result<ChaosProxy> {
        Self::start_seeded(upstream, DEFAULT_SEED)
    }

    /// Starts a proxy to `upstream` whose random decisions derive from
    /// `seed`, the connection's accept order and the direction.
    pub fn start_seeded(upstream: SocketAddr, seed: u64) -> io::Result<ChaosProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = thread::Builder::new().name("chaos-accept".into()).spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&shared, &listener, upstream, seed)
        })?;
        Ok(ChaosProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults of `dir`, from the next frame on.
    pub fn set_faults(&self, dir: Direction, faults: Faults) {
        self.shared.update(|c| c.faults[dir as usize] = faults);
    }

    /// Back to a healthy network: removes the faults of both directions,
    /// releases both holds and stops refusing connections. Keeps the stats.
    pub fn heal(&self) {
        self.shared.update(|c| {
            c.faults = Default::default();
            c.held = [false; 2];
            c.refuse = false;
        });
    }

    /// Stops forwarding frames in `dir` on every connection: they are
    /// buffered (up to [`HOLD_LIMIT`] bytes per connection, then reading
    /// stops) until [`release`](Self::release).
    pub fn hold(&self, dir: Direction) {
        self.shared.update(|c| c.held[dir as usize] = true);
    }

    /// Ends a [`hold`](Self::hold): the buffered frames are forwarded in
    /// order (through the direction's faults), then new ones.
    pub fn release(&self, dir: Direction) {
        self.shared.update(|c| c.held[dir as usize] = false);
    }

    /// Closes every current connection at once, discarding buffered frames:
    /// both the client and upstream see their connection end. New connections
    /// are proxied as usual.
    pub fn cut(&self) {
        for (conn, _) in lock(&self.shared.conns).iter() {
            conn.close();
        }
    }

    /// While `on`, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.update(|c| c.refuse = on);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.control().stats
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (conn, _) in &conns {
            conn.close();
        }
        for (_, worker) in conns {
            let _ = worker.join();
        }
    }
}

/// Settings and counters, behind one mutex.
#[derive(Default)]
struct Control {
    faults: [Faults; 2],
    held: [bool; 2],
    refuse: bool,
    stats: Stats,
}

#[derive(Default)]
struct Shared {
    shutdown: AtomicBool,
    control: Mutex<Control>,
    /// Signalled when `control` or `shutdown` changes.
    changed: Condvar,
    conns: Mutex<Vec<(Arc<Conn>, JoinHandle<()>)>>,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.control)
    }

    fn update(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.control());
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for a change of the settings.
    fn wait(&self, timeout: Duration) {
        drop(self.changed.wait_timeout(self.control(), timeout));
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One proxied connection: clones of its sockets, to shut them down from
/// any thread.
#[derive(Default)]
struct Conn {
    closed: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

impl Conn {
    /// Registers `stream`; fails (and shuts it down) if already closed.
    fn attach(&self, stream: &TcpStream) -> io::Result<()> {
        let mut streams = lock(&self.streams);
        if self.is_closed() {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(ErrorKind::ConnectionAborted.into());
        }
        streams.push(stream.try_clone()?);
        Ok(())
    }

    fn close(&self) {
        let mut streams = lock(&self.streams);
        self.closed.store(true, Ordering::SeqCst);
        for stream in streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, upstream: SocketAddr, seed: u64) {
    let mut id = 0u64;
    while !shared.stopping() {
        lock(&shared.conns).retain(|(_, worker)| !worker.is_finished());
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                shared.wait(POLL);
                continue;
            }
        };
        let mut control = shared.control();
        if control.refuse {
            control.stats.refused += 1;
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        control.stats.accepted += 1;
        control.stats.active += 1;
        drop(control);
        let conn = Arc::new(Conn::default());
        let worker = thread::spawn({
            let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
            move || {
                let _ = serve(&shared, &conn, &client, upstream, seed, id);
                conn.close();
                shared.control().stats.active -= 1;
            }
        });
        lock(&shared.conns).push((conn, worker));
        id += 1;
    }
}

/// Connects to upstream and pumps both directions until both have ended.
fn serve(
    shared: &Shared,
    conn: &Conn,
    client: &TcpStream,
    upstream: SocketAddr,
    seed: u64,
    id: u64,
) -> io::Result<()> {
    conn.attach(client)?;
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT)?;
    conn.attach(&upstream)?;
    let pump = |dir: Direction, src: &TcpStream, dst: &TcpStream| -> io::Result<Pump<'_>> {
        src.set_read_timeout(Some(POLL))?;
        dst.set_nodelay(true)?;
        Ok(Pump {
            shared,
            conn,
            dir,
            src: src.try_clone()?,
            dst: dst.try_clone()?,
            partial: vec![0; 4],
            filled: 0,
            eof: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            pending: None,
            seen: 0,
            rng: SplitMix64(seed ^ SplitMix64((id << 1) | dir as u64).next_u64()),
        })
    };
    let to_upstream = pump(Direction::ToUpstream, client, &upstream)?;
    let to_client = pump(Direction::ToClient, &upstream, client)?;
    thread::scope(|scope| {
        scope.spawn(|| to_client.run());
        to_upstream.run();
    });
    Ok(())
}

/// `SplitMix64`: a small, fast, seedable PRNG.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A frame held back by `reorder`: the frame, whether to duplicate it, and
/// when it was held back.
type Pending = (Vec<u8>, bool, Instant);

fn expired(pending: &Pending) -> bool {
    pending.2.elapsed() >= REORDER_FLUSH
}

/// Forwards the frames of one direction of one connection.
struct Pump<'a> {
    shared: &'a Shared,
    conn: &'a Conn,
    dir: Direction,
    src: TcpStream,
    dst: TcpStream,
    /// The frame being read (header included), how much of it has arrived,
    /// and whether the sender has finished.
    partial: Vec<u8>,
    filled: usize,
    eof: bool,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    pending: Option<Pending>,
    seen: usize,
    rng: SplitMix64,
}

impl Pump<'_> {
    /// Pumps until end of stream (then half-closes the receiver) or until an
    /// error, cut or shutdown (then closes the whole connection).
    fn run(mut self) {
        match self.pump() {
            Ok(()) => {
                let _ = self.dst.shutdown(Shutdown::Write);
            }
            Err(_) => self.conn.close(),
        }
    }

    fn stopped(&self) -> bool {
        self.conn.is_closed() || self.shared.stopping()
    }

    fn count(&self, bump: impl FnOnce(&mut DirStats)) {
        bump(self.shared.control().stats.dir_mut(self.dir));
    }

    fn pump(&mut self) -> io::Result<()> {
        loop {
            if self.stopped() {
                return Err(ErrorKind::ConnectionAborted.into());
            }
            let held = self.shared.control().held[self.dir as usize];
            if !held {
                if let Some(frame) = self.queue.pop_front() {
                    self.queued_bytes -= frame.len();
                    self.forward(frame)?;
                    continue;
                }
                if self.eof {
                    return self.flush_pending();
                }
            }
            if self.eof || self.queued_bytes >= HOLD_LIMIT {
                self.shared.wait(POLL);
            } else if let Some(frame) = self.read_frame()? {
                self.count(|s| s.received += 1);
                self.queued_bytes += frame.len();
                self.queue.push_back(frame);
            } else if !held && self.pending.as_ref().is_some_and(expired) {
                self.flush_pending()?;
            }
        }
    }

    /// Reads until a whole frame has arrived (`Some`) or the read timed out
    /// or the stream ended (`None`), keeping partial data for the next call.
    fn read_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.filled == 4 && self.partial.len() == 4 {
                let header = self.partial[..4].try_into().expect("4-byte header");
                let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
                if len > MAX_FRAME {
                    self.count(|s| s.oversized += 1);
                    return Err(ErrorKind::InvalidData.into());
                }
                self.partial.resize(4 + len, 0);
            }
            if self.filled >= 4 && self.filled == self.partial.len() {
                self.filled = 0;
                return Ok(Some(std::mem::replace(&mut self.partial, vec![0; 4])));
            }
            match self.src.read(&mut self.partial[self.filled..]) {
                Ok(0) if self.filled == 0 => {
                    self.eof = true;
                    return Ok(None);
                }
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.next_f64() < probability
    }

    fn forward(&mut self, frame: Vec<u8>) -> io::Result<()> {
        let faults = self.shared.control().faults[self.dir as usize];
        self.seen += 1;
        if self.seen <= faults.skip_first {
            return self.send(&frame, false);
        }
        if self.chance(faults.drop) {
            self.count(|s| s.dropped += 1);
            return Ok(());
        }
        let jitter = faults.jitter.mul_f64(self.rng.next_f64());
        self.pause(faults.delay.saturating_add(jitter));
        let dup = self.chance(faults.duplicate);
        match self.pending.take() {
            Some((prev, prev_dup, _)) if faults.reorder > 0.0 => {
                self.send(&frame, dup)?;
                self.send(&prev, prev_dup)?;
                self.count(|s| s.reordered += 1);
            }
            Some((prev, prev_dup, _)) => {
                self.send(&prev, prev_dup)?;
                self.send(&frame, dup)?;
            }
            None if self.chance(faults.reorder) => {
                self.pending = Some((frame, dup, Instant::now()));
            }
            None => self.send(&frame, dup)?,
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some((frame, dup, _)) => self.send(&frame, dup),
            None => Ok(()),
        }
    }

    fn send(&mut self, frame: &[u8], dup: bool) -> io::Result<()> {
        self.dst.write_all(frame)?;
        if dup {
            self.dst.write_all(frame)?;
        }
        self.count(|s| {
            s.forwarded += 1;
            s.duplicated += u64::from(dup);
        });
        Ok(())
    }

    /// Sleeps for `duration`, waking early on cut or shutdown.
    fn pause(&self, duration: Duration) {
        let end = Instant::now() + duration;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.shared.wait(left.min(POLL));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{ToClient, ToUpstream};

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// An upstream that echoes every byte back on each connection.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = stream.try_clone().unwrap();
                thread::spawn(move || io::copy(&mut reader, &mut stream));
            }
        });
        addr
    }

    fn proxy() -> ChaosProxy {
        ChaosProxy::start(echo_server()).unwrap()
    }

    fn faults(set: impl FnOnce(&mut Faults)) -> Faults {
        let mut faults = Faults::default();
        set(&mut faults);
        faults
    }

    fn connect(proxy: &ChaosProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Sends all frames in one write, so they reach the proxy together.
    fn send(stream: &mut TcpStream, payloads: impl IntoIterator<Item = impl AsRef<[u8]>>) {
        let bytes: Vec<u8> = payloads
            .into_iter()
            .flat_map(|p| frame(p.as_ref()))
            .collect();
        stream.write_all(&bytes).unwrap();
    }

    fn recv(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut header = [0; 4];
        stream.read_exact(&mut header)?;
        let mut payload = vec![0; u32::from_le_bytes(header) as usize];
        stream.read_exact(&mut payload)?;
        Ok(payload)
    }

    fn nums(range: std::ops::RangeInclusive<u32>) -> impl Iterator<Item = [u8; 4]> {
        range.map(u32::to_le_bytes)
    }

    fn recv_nums(stream: &mut TcpStream, count: usize) -> Vec<u32> {
        let num = |p: Vec<u8>| u32::from_le_bytes(p.try_into().unwrap());
        (0..count).map(|_| num(recv(stream).unwrap())).collect()
    }

    /// The peer closed the connection (rather than the read timing out).
    fn assert_closed(stream: &mut TcpStream) {
        match recv(stream) {
            Ok(payload) => panic!("expected a closed connection, got {payload:?}"),
            Err(e) => assert!(!matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut
            )),
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn assert_echoes(proxy: &ChaosProxy) {
        let mut client = connect(proxy);
        send(&mut client, [b"ping"]);
        assert_eq!(recv(&mut client).unwrap(), b"ping");
    }

    #[test]
    fn frames_pass_unchanged_without_faults() {
        let proxy = proxy();
        let payloads = [
            vec![],
            b"hello".to_vec(),
            vec![7; 300_000],
            (0..=255).collect(),
        ];
        let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&proxy)).collect();
        for client in &mut clients {
            send(client, &payloads);
            let split = frame(b"split"); // written in pieces, reassembled
            client.write_all(&split[..2]).unwrap();
            client.write_all(&split[2..]).unwrap();
        }
        for client in &mut clients {
            for payload in &payloads {
                assert_eq!(&recv(client).unwrap(), payload);
            }
            assert_eq!(recv(client).unwrap(), b"split");
        }
        // The counters are bumped just after each write, so wait for them.
        let counted = |s: Stats| (s.to_upstream.forwarded, s.to_client.forwarded);
        wait_for("counters", || counted(proxy.stats()) == (15, 15));
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.active), (3, 3));
        assert_eq!(stats.to_upstream.dropped + stats.to_client.duplicated, 0);
    }

    #[test]
    fn drop_all_spares_only_the_first_frame() {
        let proxy = proxy();
        proxy.set_faults(ToUpstream, faults(|f| f.drop = 1.0));
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=10));
        wait_for("drops", || proxy.stats().to_upstream.dropped == 9);
        proxy.heal();
        send(&mut client, nums(11..=11));
        assert_eq!(recv_nums(&mut client, 2), [1, 11]);
    }

    #[test]
    fn duplicate_doubles_frames() {
        let proxy = proxy();
        proxy.set_faults(ToClient, faults(|f| f.duplicate = 1.0));
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=4));
        assert_eq!(recv_nums(&mut client, 7), [1, 2, 2, 3, 3, 4, 4]);
        wait_for("counters", || proxy.stats().to_client.duplicated == 3);
    }

    #[test]
    fn reorder_swaps_pairs_and_never_loses_a_frame() {
        let proxy = proxy();
        proxy.set_faults(ToUpstream, faults(|f| f.reorder = 1.0));
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=5));
        assert_eq!(recv_nums(&mut client, 5), [1, 3, 2, 5, 4]);
        // A lone frame is held back, then flushed when nothing follows it.
        send(&mut client, nums(6..=6));
        assert_eq!(recv_nums(&mut client, 1), [6]);
        assert_eq!(proxy.stats().to_upstream.reordered, 2);
    }

    #[test]
    fn hold_delivers_in_order_only_after_release() {
        let proxy = proxy();
        proxy.hold(ToUpstream);
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=5));
        wait_for("held frames", || proxy.stats().to_upstream.received == 5);
        assert_eq!(proxy.stats().to_upstream.forwarded, 0);
        proxy.release(ToUpstream);
        assert_eq!(recv_nums(&mut client, 5), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn cut_ends_connections_and_new_ones_work() {
        let proxy = proxy();
        let mut clients = [connect(&proxy), connect(&proxy)];
        for client in &mut clients {
            send(client, [b"hi"]);
            assert_eq!(recv(client).unwrap(), b"hi");
        }
        proxy.cut();
        clients.iter_mut().for_each(assert_closed);
        wait_for("no active connection", || proxy.stats().active == 0);
        assert_echoes(&proxy);
    }

    #[test]
    fn refuse_closes_new_connections_until_lifted() {
        let proxy = proxy();
        proxy.refuse(true);
        assert_closed(&mut connect(&proxy));
        assert_eq!(proxy.stats().refused, 1);
        proxy.refuse(false);
        assert_echoes(&proxy);
        assert_eq!(proxy.stats().accepted, 1);
    }

    #[test]
    fn oversized_frame_closes_the_connection() {
        let proxy = proxy();
        let mut client = connect(&proxy);
        client
            .write_all(&u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes())
            .unwrap();
        assert_closed(&mut client);
        assert_eq!(proxy.stats().to_upstream.oversized, 1);
        assert_echoes(&proxy);
    }

    #[test]
    fn delayed_frames_still_arrive_in_order() {
        let proxy = proxy();
        let slow = faults(|f| {
            (f.delay, f.jitter) = (Duration::from_millis(5), Duration::from_millis(5));
            f.skip_first = 0;
        });
        proxy.set_faults(ToUpstream, slow);
        proxy.set_faults(ToClient, slow);
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=8));
        assert_eq!(recv_nums(&mut client, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn dropping_the_proxy_closes_connections() {
        let proxy = proxy();
        proxy.hold(ToUpstream);
        let mut client = connect(&proxy);
        send(&mut client, nums(1..=3));
        wait_for("held frames", || proxy.stats().to_upstream.received == 3);
        drop(proxy);
        assert_closed(&mut client);
    }

    #[test]
    fn same_seed_gives_same_decisions() {
        let run = |seed| {
            let proxy = ChaosProxy::start_seeded(echo_server(), seed).unwrap();
            proxy.set_faults(ToUpstream, faults(|f| f.drop = 0.5));
            let mut client = connect(&proxy);
            send(&mut client, nums(1..=64));
            wait_for("decisions", || {
                let s = proxy.stats().to_upstream;
                s.forwarded + s.dropped == 64
            });
            proxy.heal();
            send(&mut client, nums(0..=0));
            let next = || Some(recv_nums(&mut client, 1)[0]).filter(|&n| n != 0);
            std::iter::from_fn(next).collect::<Vec<_>>()
        };
        let kept = run(42);
        assert!(kept.len() > 1 && kept.len() < 64, "kept {kept:?}");
        assert_eq!(kept, run(42));
    }
}
