//! Production implementation of the trait layer: tokio tasks and timers, and a
//! [`TcpNet`] that carries best-effort messages over TCP connections.
//!
//! ```text
//!  send(to, payload) --> peers[to] outbox (bounded) --> writer task --> TCP
//!        (no connection yet: dial in the background, then drain the outbox)
//!  TCP --> reader task: header check, length limit, crc --> inbox --> recv()
//! ```
//! Each connection starts with a `Hello` frame naming the caller's advertised
//! address. A server's incoming connection is filed under that address, so
//! replies and later messages reuse it; a client (no address) is filed under
//! its socket's peer address. A bad frame closes its connection with a logged
//! reason; everyone else is unaffected. With TLS on ([`super::tls`]) every
//! connection is mutual TLS first; a peer without a certificate of the
//! cluster's CA is refused before any frame is read.

use super::{Net, Received, Runtime};
use crate::wire::frame::{encode_frame, FrameHeader, FRAME_HEADER_LEN, FRAME_PAYLOAD_LEN_MAX};
use crate::wire::{decode_msg, encode_msg, Msg};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Frames waiting to be written to one peer; more are dropped (best effort).
const OUTBOX_FRAMES_MAX: usize = 16 * 1024;
/// Received messages not yet taken by `recv`; readers wait when it is full.
const INBOX_FRAMES_MAX: usize = 64 * 1024;
/// How long a dial or an incoming handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Buffered bytes per connection writer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Buffered bytes per connection reader: one `recv` takes every frame that
/// has arrived (a burst of small frames costs one syscall, not two each).
const READ_BUFFER_BYTES: usize = 64 * 1024;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
type FrameReader = BufReader<ReadHalf>;

/// A connection's two halves: TCP's own, or TLS's over it.
fn halves<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ReadHalf, WriteHalf) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

fn tcp_halves(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

#[derive(Clone, Debug, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Net = TcpNet;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_time_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(fut);
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl std::future::Future<Output = T> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = tokio::task::spawn_blocking(f);
        async move {
            match task.await {
                Ok(t) => t,
                // Blocking tasks are never cancelled; pass a panic on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    }

    fn rand_u64(&self) -> u64 {
        rand::random()
    }

    async fn bind(
        &self,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) -> io::Result<TcpNet> {
        TcpNet::bind(listen, advertise).await
    }
}

/// A frame waiting in an outbox. `undelivered` (from `send_tracked`) is
/// told if the frame is dropped without being written to a connection.
struct Outgoing {
    frame: Vec<u8>,
    undelivered: Option<oneshot::Sender<()>>,
}

impl Outgoing {
    fn dropped(self) {
        if let Some(tx) = self.undelivered {
            let _ = tx.send(());
        }
    }
}

struct Peer {
    conn_id: u64,
    outbox: mpsc::Sender<Outgoing>,
}

struct Shared {
    advertise: Option<SocketAddr>,
    inbox_tx: mpsc::Sender<Received>,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    next_conn_id: AtomicU64,
}

/// Best-effort messages over TCP. See the module docs.
pub struct TcpNet {
    shared: Arc<Shared>,
    /// `None` once handed out by [`Net::take_inbox`].
    inbox: tokio::sync::Mutex<Option<mpsc::Receiver<Received>>>,
}

impl TcpNet {
    pub async fn bind(
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) -> io::Result<TcpNet> {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_FRAMES_MAX);
        let mut advertise = advertise;
        let listener = match listen {
            Some(addr) => {
                // Name the address: "Address already in use" alone does not
                // say which process should move.
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                let bound = listener.local_addr()?;
                // Port 0 binds an ephemeral port: advertise the real one.
                advertise = Some(match advertise {
                    Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
                    Some(a) => a,
                    None => bound,
                });
                Some(listener)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            advertise,
            inbox_tx,
            peers: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        });
        if let Some(listener) = listener {
            tokio::spawn(accept_loop(shared.clone(), listener));
        }
        Ok(TcpNet {
            shared,
            inbox: tokio::sync::Mutex::new(Some(inbox_rx)),
        })
    }
}

impl Net for TcpNet {
    fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.advertise
    }

    fn send(&self, to: SocketAddr, payload: Vec<u8>) {
        self.enqueue(to, payload, None);
    }

    fn send_tracked(&self, to: SocketAddr, payload: Vec<u8>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(to, payload, Some(tx));
        rx
    }

    async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "network endpoint closed");
        match self.inbox.lock().await.as_mut() {
            Some(inbox) => inbox.recv().await.unwrap_or_else(|| Err(closed())),
            None => Err(io::Error::other("the inbox was handed to a receiver")),
        }
    }

    fn take_inbox(&self) -> Option<mpsc::Receiver<Received>> {
        self.inbox.try_lock().ok()?.take()
    }
}

impl TcpNet {
    fn enqueue(&self, to: SocketAddr, payload: Vec<u8>, undelivered: Option<oneshot::Sender<()>>) {
        let item = Outgoing {
            frame: Vec::new(),
            undelivered,
        };
        if payload.len() > FRAME_PAYLOAD_LEN_MAX {
            tracing::error!(bytes = payload.len(), %to, "dropping oversized message");
            item.dropped();
            return;
        }
        let item = Outgoing {
            frame: encode_frame(&payload),
            ..item
        };
        let mut peers = self.shared.peers.lock().unwrap();
        let item = match peers.get(&to) {
            Some(peer) => match peer.outbox.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(item)) => {
                    tracing::warn!(%to, "outbox full, dropping message");
                    item.dropped();
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(item)) => {
                    peers.remove(&to);
                    item
                }
            },
            None => item,
        };
        let (outbox, rx) = mpsc::channel(OUTBOX_FRAMES_MAX);
        if let Err(e) = outbox.try_send(item) {
            unreachable!("a fresh channel has room: {e}");
        }
        let conn_id = self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        peers.insert(to, Peer { conn_id, outbox });
        tokio::spawn(dial(self.shared.clone(), to, conn_id, rx));
    }
}

impl Shared {
    fn forget(&self, key: SocketAddr, conn_id: u64) {
        let mut peers = self.peers.lock().unwrap();
        if peers.get(&key).is_some_and(|p| p.conn_id == conn_id) {
            peers.remove(&key);
        }
    }
}

/// The connection could not be made: nothing queued for it was sent.
fn undeliverable(
    shared: &Shared,
    to: SocketAddr,
    conn_id: u64,
    mut outbox: mpsc::Receiver<Outgoing>,
) {
    shared.forget(to, conn_id);
    outbox.close();
    while let Ok(item) = outbox.try_recv() {
        item.dropped();
    }
}

/// Why a dial failed: `tls` for a refused TLS handshake (worth a warning:
/// a certificate problem), else the peer was not there (routine).
struct DialError {
    tls: bool,
    why: String,
}

/// Opens a connection to `to`: TCP, then TLS if it is on, each within
/// [`HANDSHAKE_TIMEOUT`].
async fn connect(to: SocketAddr) -> Result<(ReadHalf, WriteHalf), DialError> {
    let fail = |tls: bool, why: String| Err(DialError { tls, why });
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return fail(false, format!("connect failed: {e}")),
        Err(_) => return fail(false, "connect timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = super::tls::get() else {
        return Ok(tcp_halves(stream));
    };
    let handshake = tls.connector.connect(tls.server_name.clone(), stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Ok(halves(stream)),
        Ok(Err(e)) => fail(true, format!("TLS handshake failed: {e}")),
        Err(_) => fail(true, "TLS handshake timed out".into()),
    }
}

async fn dial(shared: Arc<Shared>, to: SocketAddr, conn_id: u64, outbox: mpsc::Receiver<Outgoing>) {
    let (read, mut write) = match connect(to).await {
        Ok(halves) => halves,
        Err(DialError { tls, why }) => {
            if tls {
                tracing::warn!(%to, "{why}");
            } else {
                tracing::debug!(%to, "{why}");
            }
            undeliverable(&shared, to, conn_id, outbox);
            return;
        }
    };
    let hello = encode_msg(&Msg::Hello {
        advertise: shared.advertise,
    })
    .expect("hello encodes");
    if let Err(e) = write.write_all(&encode_frame(&hello)).await {
        tracing::debug!(%to, error = %e, "handshake failed");
        undeliverable(&shared, to, conn_id, outbox);
        return;
    }
    let read = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    // We dialed it: it showed a member's certificate (its name was checked).
    tokio::spawn(read_loop(shared.clone(), read, to, conn_id, true));
    write_loop(shared, write, outbox, to, conn_id).await;
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(accept_one(shared.clone(), stream, peer));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_one(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // With TLS, whether the caller showed a member's certificate or only a
    // client's (`tls::is_member`); without, everyone is trusted alike.
    let mut member = true;
    let (read, write) = match super::tls::get() {
        None => tcp_halves(stream),
        Some(tls) => match super::tls::accept(&tls, stream, HANDSHAKE_TIMEOUT).await {
            Ok(stream) => {
                member = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .is_some_and(super::tls::is_member);
                halves(stream)
            }
            Err(why) => {
                tracing::warn!(%peer, "refusing a connection: {why}");
                return;
            }
        },
    };
    let mut read = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut read)).await;
    let advertise = match hello {
        Ok(Ok(Some(payload))) => match decode_msg(&payload) {
            Ok(Msg::Hello { advertise }) => advertise,
            Ok(other) => {
                tracing::warn!(%peer, "closing connection: expected Hello, got {other:?}");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, "closing connection: bad handshake: {e}");
                return;
            }
        },
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: no handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    // A client may not pose as a server: replies go back on its connection.
    let key = advertise.filter(|_| member).unwrap_or(peer);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (outbox, rx) = mpsc::channel(OUTBOX_FRAMES_MAX);
    let registered = {
        let mut peers = shared.peers.lock().unwrap();
        // Keep an existing connection to that peer (ours or an earlier one):
        // replacing it would close it and make two dialing servers churn.
        let live = peers.get(&key).is_some_and(|p| !p.outbox.is_closed());
        if !live {
            peers.insert(key, Peer { conn_id, outbox });
        }
        !live
    };
    if registered {
        tokio::spawn(write_loop(shared.clone(), write, rx, key, conn_id));
    }
    read_loop(shared, read, key, conn_id, member).await;
}

/// Reads one frame's payload; `Ok(None)` on a clean end of stream.
async fn read_frame(read: &mut FrameReader) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match read.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header =
        FrameHeader::parse(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; header.payload_len()];
    read.read_exact(&mut payload).await?;
    header
        .verify(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(payload))
}

/// Passes every frame from a connection to the endpoint's inbox. A
/// connection from a client certificate (`member` false) is closed at the
/// first message only cluster members send (Raft, registrations, ...).
async fn read_loop(
    shared: Arc<Shared>,
    mut read: FrameReader,
    key: SocketAddr,
    conn_id: u64,
    member: bool,
) {
    loop {
        match read_frame(&mut read).await {
            Ok(Some(payload)) if !member && !crate::wire::client_may_send(&payload) => {
                tracing::warn!(
                    peer = %key,
                    "closing connection: a client certificate sent a message only cluster members may send"
                );
                break;
            }
            Ok(Some(payload)) => {
                if shared.inbox_tx.send(Ok((key, payload))).await.is_err() {
                    break; // endpoint dropped
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(peer = %key, "closing connection: {e}");
                break;
            }
        }
    }
    shared.forget(key, conn_id);
}

async fn write_loop(
    shared: Arc<Shared>,
    write: WriteHalf,
    mut outbox: mpsc::Receiver<Outgoing>,
    key: SocketAddr,
    conn_id: u64,
) {
    // From here on a frame may reach the peer: dropping `undelivered`
    // (without a message) tells a tracked sender "maybe delivered".
    let mut write = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    'outer: while let Some(item) = outbox.recv().await {
        if write.write_all(&item.frame).await.is_err() {
            break;
        }
        // Batch whatever else is queued into the same flush.
        while let Ok(item) = outbox.try_recv() {
            if write.write_all(&item.frame).await.is_err() {
                break 'outer;
            }
        }
        if write.flush().await.is_err() {
            break;
        }
    }
    shared.forget(key, conn_id);
    // Frames still queued were never written.
    outbox.close();
    while let Ok(item) = outbox.try_recv() {
        item.dropped();
    }
}
