//! The node's disk: the harness's [`SimDisk`], with one workaround.
//!
//! `SimDisk::sync` never makes a *shrink* durable: it only adopts the synced
//! bytes when they are at least as long as the durable ones. So when WAL
//! recovery cuts a torn tail (`truncate` + `sync`), the torn bytes come back
//! at the next crash. If the log then rolled over to a new segment, that
//! torn tail sits in the middle of the log and recovery refuses it as
//! corruption (seed 2211 before this workaround: "corrupt at byte offset
//! 16389: short record header"); and if a record shorter than the cut tail
//! was appended and synced, the crash would even drop that synced record.
//! A real disk (`FsDisk`: `set_len` + `sync_data`) has neither problem, so
//! this is a simulator bug, not a WAL bug; until `SimDisk` is fixed,
//! shrinking truncates are done as "copy the prefix to a new file, sync it,
//! rename it over the old one, sync the directory", which `SimDisk` models
//! faithfully (a crash before the directory sync keeps the old file, whose
//! torn tail recovery cuts again).

use distkv::rt::{Disk, SimDisk};
use std::io;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct NodeDisk(pub SimDisk);

impl Disk for NodeDisk {
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.create_dir_all(dir).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.list(dir).await
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.read(path).await
    }

    async fn append(&self, path: &Path, data: &[u8]) -> io::Result<u64> {
        self.0.append(path, data).await
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let current = match self.0.read(path).await {
            Ok(data) => data,
            Err(_) => return self.0.truncate(path, len).await, // creates it
        };
        if len as usize >= current.len() {
            return self.0.truncate(path, len).await;
        }
        let tmp = path.with_extension("shrink-tmp");
        let _ = self.0.remove(&tmp).await; // left over from a crash
        self.0.append(&tmp, &current[..len as usize]).await?;
        self.0.sync(&tmp).await?;
        self.0.rename(&tmp, path).await?;
        self.0
            .sync_dir(path.parent().unwrap_or(Path::new("")))
            .await
    }

    async fn sync(&self, path: &Path) -> io::Result<()> {
        self.0.sync(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sync_dir(dir).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path).await
    }
}
