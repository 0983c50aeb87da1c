//! The trait layer: everything that is not deterministic goes through here.
//!
//! ```text
//!            core logic (kv, map, op, wire)  -- pure, no IO
//!                         |
//!        drivers (server, manager, client)  -- generic over R: Runtime
//!                         |
//!          +--------------+---------------+
//!   tokio_rt::TokioRuntime          sim_rt::SimRuntime (feature `sim`)
//!   TCP, tokio time, OS rng         madsim datagrams, simulated time, seeded rng
//!   FsDisk                          SimDisk (loses unsynced bytes on crash)
//! ```
//!
//! Drivers never call tokio, `std::time`, `std::thread` or sockets directly;
//! they call the [`Runtime`] they were given, so the simulator controls every
//! message, timer and random choice.

pub mod disk;
pub mod sim_disk;
#[cfg(feature = "sim")]
pub mod sim_rt;
pub mod tls;
pub mod tokio_rt;

pub use disk::{Disk, FsDisk};
pub use sim_disk::SimDisk;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A best-effort, message-oriented network endpoint, as Raft assumes: a sent
/// message may be lost, delayed, reordered or (in simulation) duplicated;
/// nothing is ever corrupted undetected (frames carry a crc32).
pub trait Net: Send + Sync + 'static {
    /// The dialable address others reach this endpoint at, if it listens.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Queues `payload` for `to` and returns at once. Never blocks; a message
    /// that cannot be queued (peer unreachable, queue full) is dropped.
    fn send(&self, to: SocketAddr, payload: Vec<u8>);
    /// Like [`Net::send`], and the returned receiver gets `()` if the payload
    /// certainly never left this process (the peer could not be reached, or
    /// its queue was full). Otherwise the sender is dropped (`Err`): the
    /// payload may have been delivered. The default knows nothing.
    fn send_tracked(&self, to: SocketAddr, payload: Vec<u8>) -> tokio::sync::oneshot::Receiver<()> {
        self.send(to, payload);
        tokio::sync::oneshot::channel().1
    }
    /// The next message that arrived, with the sender's address. Replies sent
    /// to that address reach the sender (for clients without a listen
    /// address, over the connection the message came on).
    fn recv(&self) -> impl Future<Output = io::Result<(SocketAddr, Vec<u8>)>> + Send;
    /// The channel `recv` reads from, if the endpoint has one to hand out
    /// (then `recv` no longer works): [`spawn_receiver`] gives it to the
    /// driver directly instead of relaying it through a task.
    fn take_inbox(&self) -> Option<tokio::sync::mpsc::Receiver<Received>> {
        None
    }
}

/// Process-level services: the clock, timers, tasks, randomness, sockets.
pub trait Runtime: Clone + Send + Sync + 'static {
    type Net: Net;
    /// Monotonic now (simulated time under the simulator). Comparable only
    /// within one process.
    fn now(&self) -> Instant;
    /// Wall-clock time in ms since the Unix epoch (simulated under the
    /// simulator), comparable across hosts as far as their clocks agree; it
    /// may jump (NTP). Used only where processes must agree on a time:
    /// session expiry by log time (`kv::Command`).
    fn unix_time_ms(&self) -> u64;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
    /// Runs `fut` in the background, on this process (simulated node).
    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static;
    /// Runs `f`, CPU-bound work of unbounded length (encoding a whole
    /// partition), where it does not stall the caller's event loop; the
    /// future resolves to its result. Production: a blocking-pool thread.
    /// The default (the simulator) runs it when the future is polled, in
    /// the task that awaits it, so a run stays deterministic.
    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        async move { f() }
    }
    /// A random number (seeded by the simulation under the simulator).
    fn rand_u64(&self) -> u64;
    /// Opens a network endpoint. With `listen`, accepts messages sent to that
    /// address, and advertises `advertise` (default: `listen`) as its own.
    /// Without it, the endpoint can only send and receive replies (clients).
    fn bind(
        &self,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) -> impl Future<Output = io::Result<Self::Net>> + Send;
}

/// Error of [`timeout`]: the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct Elapsed;

/// Runs `fut` until it finishes or `duration` passes, using the runtime's
/// timer. `biased;` keeps the choice deterministic under the simulator.
pub async fn timeout<R: Runtime, F: Future>(
    rt: &R,
    duration: Duration,
    fut: F,
) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        out = fut => Ok(out),
        _ = rt.sleep(duration) => Err(Elapsed),
    }
}

/// What [`spawn_receiver`] hands on: a datagram and its sender, or the
/// endpoint's error (after which nothing more comes).
pub type Received = io::Result<(SocketAddr, Vec<u8>)>;

/// Receives from `net` in a task of its own and hands each item on through
/// the returned channel (at most `capacity` waiting; the task waits when it
/// is full), or hands out the endpoint's own channel if it has one
/// ([`Net::take_inbox`]). `Net::recv` is not cancel-safe, so a driver that also waits
/// for timers cannot `select!` on it directly. The task stops after an
/// error or once the receiver is dropped.
pub fn spawn_receiver<R: Runtime>(
    rt: &R,
    net: std::sync::Arc<R::Net>,
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<Received> {
    if let Some(inbox) = net.take_inbox() {
        return inbox; // one task hop less per message (TcpNet)
    }
    let (inbox, received) = tokio::sync::mpsc::channel(capacity);
    rt.spawn(async move {
        loop {
            let item = net.recv().await;
            let stop = item.is_err();
            if inbox.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    received
}
