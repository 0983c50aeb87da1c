//! Simulation implementation of the trait layer on madsim (feature `sim`,
//! built with `--cfg madsim`). Every call must happen inside a madsim node.
//!
//! Messages are madsim datagrams ([`madsim::net::Endpoint`]): the simulator
//! can drop, delay and reorder them, and partition nodes. madsim never
//! duplicates a datagram, so [`SimNet::send`] does: with the probability set
//! by [`set_duplication`] (per thread, i.e. per simulation; 0 by default) it
//! sends a second copy a little later. Frames still carry their crc32 so the
//! same checks run as in production. Time, tasks and randomness are the
//! simulator's, so one seed gives one schedule.

use super::{Net, Runtime};
use crate::wire::frame::{decode_frame, encode_frame};
use madsim::rand::Rng;
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// All distkv traffic uses one endpoint tag.
const TAG: u64 = 0x6469_7374_6b76; // "distkv"

/// The longest extra delay of a duplicate, on top of the network's latency.
pub const DUPLICATE_DELAY_MAX: Duration = Duration::from_millis(10);

thread_local! {
    /// Probability that a datagram is sent twice (see [`set_duplication`]).
    static DUPLICATION: Cell<f64> = const { Cell::new(0.0) };
    /// Copies sent since the last [`set_duplication`].
    static COPIES: Cell<u64> = const { Cell::new(0) };
}

/// Makes [`SimNet::send`] on this thread send each datagram twice with
/// probability `rate` (`0.0` turns duplication off), the copy after an extra
/// delay of up to [`DUPLICATE_DELAY_MAX`]. A madsim simulation runs on one
/// thread, so this is per simulation; set it at the start of each run.
/// Also resets the count of [`copies_sent`].
pub fn set_duplication(rate: f64) {
    assert!((0.0..=1.0).contains(&rate), "duplication rate {rate}");
    DUPLICATION.with(|d| d.set(rate));
    COPIES.with(|c| c.set(0));
}

/// Duplicates sent on this thread since the last [`set_duplication`].
pub fn copies_sent() -> u64 {
    COPIES.with(Cell::get)
}

/// The current duplication probability of this thread.
pub fn duplication() -> f64 {
    DUPLICATION.with(Cell::get)
}

#[derive(Clone, Debug, Default)]
pub struct SimRuntime;

pub struct SimNet {
    ep: Arc<madsim::net::Endpoint>,
    advertise: Option<SocketAddr>,
}

impl Runtime for SimRuntime {
    type Net = SimNet;

    fn now(&self) -> Instant {
        madsim::time::Instant::now()
    }

    fn unix_time_ms(&self) -> u64 {
        // Simulated: the same clock on every node, starting at a seeded
        // date in 2022.
        madsim::time::TimeHandle::current()
            .now_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        madsim::time::sleep(duration)
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // On the current simulated node: the task dies when the node is killed.
        madsim::task::spawn(fut);
    }

    fn rand_u64(&self) -> u64 {
        madsim::rand::thread_rng().gen()
    }

    async fn bind(
        &self,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) -> io::Result<SimNet> {
        let addr = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let ep = madsim::net::Endpoint::bind(addr).await?;
        let bound = ep.local_addr()?;
        Ok(SimNet {
            ep: Arc::new(ep),
            advertise: listen.map(|_| advertise.unwrap_or(bound)),
        })
    }
}

impl Net for SimNet {
    fn local_addr(&self) -> Option<SocketAddr> {
        self.advertise
    }

    fn send(&self, to: SocketAddr, payload: Vec<u8>) {
        let ep = self.ep.clone();
        let frame = encode_frame(&payload);
        // No random draw unless duplication is on: runs without it keep
        // their schedule.
        let rate = duplication();
        let copy = (rate > 0.0)
            .then(|| {
                let mut rng = madsim::rand::thread_rng();
                rng.gen_bool(rate).then(|| {
                    COPIES.with(|c| c.set(c.get() + 1));
                    let extra = rng.gen_range(Duration::ZERO..=DUPLICATE_DELAY_MAX);
                    (frame.clone(), extra)
                })
            })
            .flatten();
        madsim::task::spawn(async move {
            // Ok even when the datagram is dropped: best effort by design.
            let _ = ep.send_to_raw(to, TAG, Box::new(frame)).await;
            if let Some((frame, extra)) = copy {
                // The copy goes through the network on its own (it may be
                // lost, delayed or reordered too).
                madsim::time::sleep(extra).await;
                let _ = ep.send_to_raw(to, TAG, Box::new(frame)).await;
            }
        });
    }

    async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        loop {
            let (data, from) = self.ep.recv_from_raw(TAG).await?;
            let Ok(frame) = data.downcast::<Vec<u8>>() else {
                continue;
            };
            match decode_frame(&frame) {
                Ok((payload, _)) => return Ok((from, payload.to_vec())),
                Err(e) => tracing::warn!(%from, "dropping bad frame: {e}"),
            }
        }
    }
}
