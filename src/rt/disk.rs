//! The `Disk` trait: the only way core code touches files.
//!
//! Contract, per method (what the caller may assume after it returns `Ok`):
//! - `append`/`write_at`: bytes are readable, but **not durable** until
//!   `sync` of that file returns. A crash may keep none, a prefix, or a torn
//!   version of unsynced bytes.
//! - `sync(file)`: the file's bytes written so far are durable.
//! - `create`/`rename`/`remove` change names; a name change is durable only
//!   after `sync_dir` of its directory returns.
//! - Every error is returned to the caller, never swallowed; a write that
//!   failed may have written part of its bytes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub trait Disk: Clone + Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// File names (not paths) directly inside `dir`, sorted.
    fn list(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send;
    fn read(&self, path: &Path) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// Appends to `path`, creating it if missing; returns the new length.
    fn append(&self, path: &Path, data: &[u8]) -> impl Future<Output = io::Result<u64>> + Send;
    /// Sets the length of `path` (creating it if missing).
    fn truncate(&self, path: &Path, len: u64) -> impl Future<Output = io::Result<()>> + Send;
    fn sync(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// `append` then `sync` of the same file (the WAL's group commit): one
    /// call, so a real disk can do both in one trip to its I/O thread.
    fn append_and_sync(
        &self,
        path: &Path,
        data: &[u8],
    ) -> impl Future<Output = io::Result<u64>> + Send {
        async move {
            let len = self.append(path, data).await?;
            self.sync(path).await?;
            Ok(len)
        }
    }
    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>> + Send;
    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send;
    fn remove(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
}

/// The real filesystem, through tokio's blocking pool. Open file handles are
/// cached per path (appends and syncs do not reopen the file); renames and
/// removals drop them.
#[derive(Clone, Debug, Default)]
pub struct FsDisk {
    files: Arc<Mutex<HashMap<PathBuf, Arc<std::fs::File>>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("disk task failed: {e}")))?
}

impl FsDisk {
    pub fn new() -> FsDisk {
        FsDisk::default()
    }

    /// The cached handle for `path`, opened for appending (created if missing).
    fn handle(&self, path: &Path) -> io::Result<Arc<std::fs::File>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(path) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)?,
        );
        files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    fn forget(&self, path: &Path) {
        self.files.lock().unwrap().remove(path);
    }
}

impl Disk for FsDisk {
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::create_dir_all(dir)).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let path = path.to_path_buf();
        blocking(move || std::fs::read(path)).await
    }

    async fn append(&self, path: &Path, data: &[u8]) -> io::Result<u64> {
        let file = self.handle(path)?;
        let data = data.to_vec();
        blocking(move || {
            use std::io::Write;
            (&*file).write_all(&data)?;
            Ok(file.metadata()?.len())
        })
        .await
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = self.handle(path)?;
        blocking(move || file.set_len(len)).await
    }

    async fn sync(&self, path: &Path) -> io::Result<()> {
        let file = self.handle(path)?;
        // fdatasync: data plus the metadata needed to read it (the length).
        blocking(move || file.sync_data()).await
    }

    async fn append_and_sync(&self, path: &Path, data: &[u8]) -> io::Result<u64> {
        let file = self.handle(path)?;
        let data = data.to_vec();
        blocking(move || {
            use std::io::Write;
            (&*file).write_all(&data)?;
            let len = file.metadata()?.len();
            file.sync_data()?;
            Ok(len)
        })
        .await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::File::open(dir)?.sync_all()).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || std::fs::rename(from, to)).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.forget(path);
        let path: PathBuf = path.to_path_buf();
        blocking(move || std::fs::remove_file(path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fs_disk_follows_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::new();
        let f = dir.path().join("a");
        assert_eq!(disk.append(&f, b"hello").await.unwrap(), 5);
        assert_eq!(disk.append(&f, b" world").await.unwrap(), 11);
        disk.sync(&f).await.unwrap();
        disk.truncate(&f, 5).await.unwrap();
        assert_eq!(disk.read(&f).await.unwrap(), b"hello");
        assert_eq!(
            disk.append(&f, b"!").await.unwrap(),
            6,
            "appends go to the new end"
        );
        assert_eq!(disk.append_and_sync(&f, b"!").await.unwrap(), 7);
        disk.truncate(&f, 6).await.unwrap();
        let g = dir.path().join("b");
        disk.rename(&f, &g).await.unwrap();
        disk.sync_dir(dir.path()).await.unwrap();
        assert_eq!(disk.list(dir.path()).await.unwrap(), vec!["b".to_string()]);
        assert_eq!(disk.read(&g).await.unwrap(), b"hello!");
        disk.remove(&g).await.unwrap();
        assert!(disk.read(&g).await.is_err());
    }
}
