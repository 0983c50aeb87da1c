//! # distkv
//!
//! A distributed key-value store: tables split into key ranges (partitions),
//! partitions placed on servers by a manager, and clients that send one-shot
//! transactions (a batch of PUT/GET/SWAP/DELETE/SCAN that takes effect as a
//! whole).
//!
//! ```text
//!  client / benchmark ──(1) partition map──▶ manager (placement, map epochs)
//!         │                                      ▲ registration, heartbeats
//!         └──(2) commands to partition servers──▶ servers
//! ```
//!
//! Layout (see `ARCHITECTURE.md`):
//! - pure cores, no IO: [`key`], [`op`], [`map`] (placement), [`kv`] (the
//!   state machine), [`wire`] (frames and messages), [`manager::ManagerCore`],
//!   [`server::ServerCore`], [`cli::Repl`];
//! - the trait layer [`rt`]: `Runtime`/`Net`/`Disk`, with tokio and (feature
//!   `sim`) madsim implementations;
//! - thin drivers generic over the runtime: [`server::run_server`],
//!   [`manager::run_manager`], [`client::Client`];
//! - [`bench`]: the load generator and history writer;
//! - (feature `sim`) `bugs`, injectable bugs, and `simulation`, the
//!   seeded whole-cluster madsim scenario and its model checker.

#[cfg(all(feature = "sim", not(madsim)))]
compile_error!("feature `sim` requires `--cfg madsim` (see .cargo/config.toml)");

/// Whether `bug` is on (always `false` without feature `sim`), for code
/// compiled in both configurations.
#[macro_export]
macro_rules! bug {
    ($bug:ident) => {{
        #[cfg(feature = "sim")]
        let on = $crate::bugs::enabled($crate::bugs::Bug::$bug);
        #[cfg(not(feature = "sim"))]
        let on = false;
        on
    }};
}

pub mod backup;
pub mod bench;
#[cfg(feature = "sim")]
pub mod bugs;
pub mod checker;
pub mod cli;
pub mod client;
pub mod config;
pub mod hash;
pub mod key;
pub mod kv;
pub mod manager;
pub mod map;
pub mod metrics;
pub mod op;
pub mod raft;
pub mod resp;
pub mod rt;
pub mod server;
#[cfg(feature = "sim")]
pub mod simulation;
pub mod stats;
pub mod storage;
pub mod wire;
