//! How a node reaches another for replication: the [`Network`] a sender registers and
//! connects through, the [`Listener`] a receiver accepts from, and the connection they
//! hand over (boxed reading and writing halves). Production runs them over tokio TCP
//! ([`Tcp`], [`TcpAcceptor`]) and the target's REST API; the deterministic simulation
//! (`server/tests/sim.rs`, turmoil) runs the same sender and receiver code over its
//! virtual network. The protocol itself never names a socket type.
//!
//! Also here: [`blocking`], what the transport uses for CPU-bound or sled work inside
//! an async task. It is `block_in_place` on a multi-threaded runtime and runs inline on
//! a current-thread one (where `block_in_place` panics), such as each simulated host's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::links::{LinkDef, ReplicaRequest};
use super::Replication;

/// The reading half of a replication connection.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a replication connection.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// A boxed future, as the traits below return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One replication connection: its halves and who is at the other end.
pub struct Conn {
    pub rd: Reader,
    pub wr: Writer,
    pub peer: String,
}

/// How a sender reaches a link's target node.
pub trait Network: Send + Sync + 'static {
    /// Register the replica with the target node (its REST API in production): the
    /// target's replication address, or why it refused or could not be reached.
    fn register<'a>(
        &'a self,
        repl: &'a Arc<Replication>,
        def: &'a LinkDef,
        body: ReplicaRequest,
    ) -> BoxFuture<'a, Result<String, String>>;

    /// Open a connection to a replication address.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn>>;
}

/// Where a receiver takes its connections from.
pub trait Listener: Send + 'static {
    /// The next connection.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Conn>>;
}

/// The production network: the target's REST API ([`crate::remote`]) and TCP.
pub struct Tcp;

impl Network for Tcp {
    fn register<'a>(
        &'a self,
        repl: &'a Arc<Replication>,
        def: &'a LinkDef,
        body: ReplicaRequest,
    ) -> BoxFuture<'a, Result<String, String>> {
        let (repl, def) = (repl.clone(), def.clone());
        Box::pin(async move {
            let answer = tokio::task::spawn_blocking(move || {
                repl.target_client(&def)
                    .and_then(|c| c.send("PUT", &format!("/replicas/{}", def.id), &body))
                    .map_err(|e| match e.status() {
                        Some(_) => format!("the target refused the link: {e}"),
                        None => format!("the target's API did not answer: {e}"),
                    })
            })
            .await
            .map_err(|e| e.to_string())??;
            answer["replication"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "the target's answer has no replication address".to_string())
        })
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn>> {
        Box::pin(async move {
            let sock = tokio::net::TcpStream::connect(addr).await?;
            Ok(tcp_conn(sock, addr.to_string()))
        })
    }
}

/// The production listener: a bound TCP socket.
pub struct TcpAcceptor(pub tokio::net::TcpListener);

impl Listener for TcpAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Conn>> {
        Box::pin(async move {
            let (sock, peer) = self.0.accept().await?;
            Ok(tcp_conn(sock, peer.to_string()))
        })
    }
}

/// What a connection's reading half reads from the socket at once: a frame's length
/// and its messages (and the next frames' when they came together) in one system call
/// instead of two or more. A frame larger than this is read straight into its buffer.
const READ_BUFFER: usize = 64 * 1024;

/// A TCP socket as a connection (no Nagle delay: frames are written whole; reads
/// through a [`READ_BUFFER`]).
fn tcp_conn(sock: tokio::net::TcpStream, peer: String) -> Conn {
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    Conn {
        rd: Box::new(tokio::io::BufReader::with_capacity(READ_BUFFER, rd)),
        wr: Box::new(wr),
        peer,
    }
}

/// Run `f`, which blocks (CPU work, sled), from an async task: off the worker through
/// `block_in_place` on a multi-threaded runtime, inline on a current-thread one (the
/// only choice there; `block_in_place` would panic).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
