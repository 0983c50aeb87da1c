//! Simulation implementation of the trait layer on madsim (feature `sim`,
//! built with `--cfg madsim`). Every call must happen inside a madsim node.
//!
//! Messages are madsim datagrams ([`madsim::net::Endpoint`]): the simulator
//! can drop, delay and reorder them, and partition nodes. Frames still carry
//! their crc32 so the same checks run as in production. Time, tasks and
//! randomness are the simulator's, so one seed gives one schedule.

use super::{Net, Runtime};
use crate::wire::frame::{decode_frame, encode_frame};
use madsim::rand::Rng;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// All distkv traffic uses one endpoint tag.
const TAG: u64 = 0x6469_7374_6b76; // "distkv"

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
        madsim::task::spawn(async move {
            // Ok even when the datagram is dropped: best effort by design.
            let _ = ep.send_to_raw(to, TAG, Box::new(frame)).await;
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
