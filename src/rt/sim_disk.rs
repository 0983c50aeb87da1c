//! An in-memory disk that forgets what was not synced, for simulations.
//!
//! madsim's own fs keeps unsynced writes across a crash, which would hide
//! exactly the bugs we test for. This disk keeps, per file, the bytes a
//! reader sees (`data`, the page cache) apart from the bytes that survive a
//! power cut (`durable`), and keeps directory entries apart the same way.
//! [`SimDisk::crash`] rebuilds the image a power cut could leave: durable
//! bytes always; of unsynced appended bytes nothing, a prefix, or a prefix
//! whose last part is torn (garbage), as the caller's random source chooses.
//!
//! It is owned by the harness, outside the simulated node, so it outlives a
//! node's incarnations. It is plain Rust (no madsim), so unit tests use it too.

use super::Disk;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Inode = u64;

#[derive(Clone, Debug, Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Bumped by every change to `data`.
    generation: u64,
    /// The generation `durable` was taken at: a sync that started earlier
    /// than the one that set it must not overwrite it.
    durable_generation: u64,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<Inode, File>,
    /// Names as the running process sees them.
    names: BTreeMap<PathBuf, Inode>,
    /// Names as of the last `sync_dir` of their directory.
    durable_names: BTreeMap<PathBuf, Inode>,
    dirs: std::collections::BTreeSet<PathBuf>,
    next_inode: Inode,
    fail_writes: bool,
    fail_syncs: bool,
    /// Operations that failed because of `fail_writes` / `fail_syncs`.
    failures: Vec<InjectedFailure>,
    syncs: u64,
    /// Simulated time a file sync takes (only under the simulator).
    sync_delay: std::time::Duration,
    /// When recording, the durable image right after every successful sync.
    images: Option<Vec<State>>,
}

impl Clone for State {
    fn clone(&self) -> State {
        State {
            files: self.files.clone(),
            names: self.names.clone(),
            durable_names: self.durable_names.clone(),
            dirs: self.dirs.clone(),
            next_inode: self.next_inode,
            fail_writes: false,
            fail_syncs: false,
            failures: Vec::new(),
            syncs: self.syncs,
            sync_delay: self.sync_delay,
            images: None,
        }
    }
}

impl State {
    /// What a power cut right now that kept no unsynced byte would leave.
    fn durable_image(&self) -> State {
        let mut image = self.clone();
        image.names = image.durable_names.clone();
        let live: std::collections::BTreeSet<Inode> = image.names.values().copied().collect();
        image.files.retain(|inode, _| live.contains(inode));
        for file in image.files.values_mut() {
            file.data = file.durable.clone();
        }
        image
    }

    fn record_image(&mut self) {
        if self.images.is_some() {
            let image = self.durable_image();
            if let Some(images) = &mut self.images {
                images.push(image);
            }
        }
    }
}

/// Which operation an injected error failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedOp {
    /// `append` or `truncate` of a file.
    Write,
    /// `sync` of a file.
    Sync,
    /// `sync_dir` of a directory.
    SyncDir,
}

/// One operation that failed because of [`SimDisk::set_fail_writes`] or
/// [`SimDisk::set_fail_syncs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedFailure {
    pub op: FailedOp,
    pub path: PathBuf,
    /// When it failed (`Instant::now()`: simulated time under madsim).
    pub at: std::time::Instant,
}

/// What a crash did to the unsynced bytes, for logs and assertions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrashReport {
    pub unsynced_bytes: u64,
    pub kept_bytes: u64,
    pub torn_files: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Makes later writes (`append`, `truncate`) fail with an I/O error.
    pub fn set_fail_writes(&self, fail: bool) {
        self.state.lock().unwrap().fail_writes = fail;
    }

    /// Makes later `sync`/`sync_dir` calls fail with an I/O error.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.state.lock().unwrap().fail_syncs = fail;
    }

    /// How many operations have failed with an injected error since the
    /// last [`SimDisk::take_failures`].
    pub fn failure_count(&self) -> usize {
        self.state.lock().unwrap().failures.len()
    }

    /// The operations that failed with an injected error since the last
    /// call, oldest first.
    pub fn take_failures(&self) -> Vec<InjectedFailure> {
        std::mem::take(&mut self.state.lock().unwrap().failures)
    }

    /// Makes every `sync` take `delay` of simulated time, so crashes can
    /// land in the middle of one. Needs the madsim runtime (feature `sim`).
    #[cfg(feature = "sim")]
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().sync_delay = delay;
    }

    /// Starts recording the durable disk image after every successful
    /// `sync`/`sync_dir` (for tests that reopen every possible crash state).
    pub fn record_sync_images(&self) {
        self.state.lock().unwrap().images = Some(Vec::new());
    }

    /// The images recorded so far, each a separate disk.
    pub fn sync_images(&self) -> Vec<SimDisk> {
        let st = self.state.lock().unwrap();
        st.images
            .iter()
            .flatten()
            .map(|image| SimDisk {
                state: Arc::new(Mutex::new(image.clone())),
            })
            .collect()
    }

    /// How many images have been recorded.
    pub fn sync_image_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .images
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// Number of successful file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    /// Simulates a power cut. `rand(n)` must return a number in `0..n`; pass
    /// the simulation's seeded generator so the outcome follows the seed.
    pub fn crash(&self, mut rand: impl FnMut(u64) -> u64) -> CrashReport {
        let mut st = self.state.lock().unwrap();
        let mut report = CrashReport::default();
        st.names = st.durable_names.clone();
        for file in st.files.values_mut() {
            let appended =
                file.data.len() > file.durable.len() && file.data.starts_with(&file.durable);
            if appended {
                let tail = &file.data[file.durable.len()..];
                report.unsynced_bytes += tail.len() as u64;
                let keep = match rand(3) {
                    0 => 0,
                    1 => tail.len(),
                    _ => rand(tail.len() as u64 + 1) as usize,
                };
                let mut kept = tail[..keep].to_vec();
                if keep > 0 && rand(4) == 0 {
                    // Torn write: the last few kept bytes are garbage.
                    let torn = (rand(8) as usize + 1).min(keep);
                    for b in &mut kept[keep - torn..] {
                        *b = rand(256) as u8;
                    }
                    report.torn_files += 1;
                }
                report.kept_bytes += keep as u64;
                let mut data = file.durable.clone();
                data.extend_from_slice(&kept);
                file.durable = data;
            }
            file.data = file.durable.clone();
        }
        let live: std::collections::BTreeSet<Inode> = st.names.values().copied().collect();
        st.files.retain(|inode, _| live.contains(inode));
        report
    }

    /// Drops every unsynced byte and name (the worst-case power cut).
    pub fn crash_drop_all(&self) {
        self.crash(|_| 0);
    }

    /// Replaces the disk by an empty one (an operator wiped the server's
    /// data, or the machine got a new disk). Files still open see nothing
    /// more; the node must be stopped first.
    pub fn wipe(&self) {
        let mut st = self.state.lock().unwrap();
        st.files.clear();
        st.names.clear();
        st.durable_names.clear();
        st.dirs.clear();
    }
}

impl State {
    /// The injected error for `op` on `path`, if one is due (and records it).
    fn injected(&mut self, op: FailedOp, path: &Path) -> io::Result<()> {
        let (fail, what) = match op {
            FailedOp::Write => (self.fail_writes, "write"),
            FailedOp::Sync | FailedOp::SyncDir => (self.fail_syncs, "fsync"),
        };
        if !fail {
            return Ok(());
        }
        self.failures.push(InjectedFailure {
            op,
            path: path.to_path_buf(),
            at: std::time::Instant::now(),
        });
        Err(io::Error::other(format!("injected {what} error")))
    }

    fn file_mut(&mut self, path: &Path, create: bool) -> io::Result<&mut File> {
        let inode = match self.names.get(path) {
            Some(inode) => *inode,
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !parent.as_os_str().is_empty() && !self.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let inode = self.next_inode;
                self.next_inode += 1;
                self.names.insert(path.to_path_buf(), inode);
                self.files.insert(inode, File::default());
                inode
            }
            None => return Err(not_found(path)),
        };
        Ok(self.files.get_mut(&inode).expect("named inode exists"))
    }
}

impl Disk for SimDisk {
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are durable at once: we do not model losing them.
        let mut st = self.state.lock().unwrap();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                st.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock().unwrap();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut st = self.state.lock().unwrap();
        Ok(st.file_mut(path, false)?.data.clone())
    }

    async fn append(&self, path: &Path, data: &[u8]) -> io::Result<u64> {
        let mut st = self.state.lock().unwrap();
        st.injected(FailedOp::Write, path)?;
        let file = st.file_mut(path, true)?;
        file.data.extend_from_slice(data);
        file.generation += 1;
        Ok(file.data.len() as u64)
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.injected(FailedOp::Write, path)?;
        let file = st.file_mut(path, true)?;
        file.data.resize(len as usize, 0);
        file.generation += 1;
        Ok(())
    }

    async fn sync(&self, path: &Path) -> io::Result<()> {
        // What the sync covers is what was written when it was called; if
        // the node dies before it returns, none of it is promised durable.
        let (covered, generation, delay) = {
            let mut st = self.state.lock().unwrap();
            st.injected(FailedOp::Sync, path)?;
            let delay = st.sync_delay;
            let file = st.file_mut(path, false)?;
            (file.data.clone(), file.generation, delay)
        };
        #[cfg(feature = "sim")]
        if !delay.is_zero() {
            madsim::time::sleep(delay).await;
        }
        #[cfg(not(feature = "sim"))]
        let _ = delay;
        let mut st = self.state.lock().unwrap();
        let file = st.file_mut(path, false)?;
        // Syncs are ordered by the state they captured, not by length: a
        // truncate followed by a sync must become durable too.
        if generation >= file.durable_generation {
            file.durable = covered;
            file.durable_generation = generation;
        }
        st.syncs += 1;
        st.record_image();
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.injected(FailedOp::SyncDir, dir)?;
        let st = &mut *st;
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, inode) in &st.names {
            if p.parent() == Some(dir) {
                st.durable_names.insert(p.clone(), *inode);
            }
        }
        st.record_image();
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_ones_do_not() {
        block(async {
            let d = SimDisk::new();
            let dir = Path::new("/db");
            let f = dir.join("log");
            d.create_dir_all(dir).await.unwrap();
            d.append(&f, b"durable").await.unwrap();
            d.sync(&f).await.unwrap();
            d.sync_dir(dir).await.unwrap();
            d.append(&f, b"-lost").await.unwrap();
            assert_eq!(
                d.read(&f).await.unwrap(),
                b"durable-lost",
                "reads see the page cache"
            );
            d.crash_drop_all();
            assert_eq!(d.read(&f).await.unwrap(), b"durable");
        });
    }

    #[test]
    fn a_crash_may_keep_a_prefix_of_unsynced_appends() {
        block(async {
            let d = SimDisk::new();
            let f = Path::new("/log");
            d.create_dir_all(Path::new("/")).await.unwrap();
            d.append(f, b"abc").await.unwrap();
            d.sync(f).await.unwrap();
            d.sync_dir(Path::new("/")).await.unwrap();
            d.append(f, b"defgh").await.unwrap();
            // rand: mode 2 (random prefix), prefix length 3, no tear.
            let mut answers = vec![2u64, 3, 1].into_iter();
            let report = d.crash(|_| answers.next().unwrap());
            assert_eq!(report.kept_bytes, 3);
            assert_eq!(d.read(f).await.unwrap(), b"abcdef");
        });
    }

    #[test]
    fn an_unsynced_rename_or_create_is_undone_by_a_crash() {
        block(async {
            let d = SimDisk::new();
            let dir = Path::new("/db");
            d.create_dir_all(dir).await.unwrap();
            d.append(&dir.join("tmp"), b"snap").await.unwrap();
            d.sync(&dir.join("tmp")).await.unwrap();
            d.rename(&dir.join("tmp"), &dir.join("snap")).await.unwrap();
            assert_eq!(d.list(dir).await.unwrap(), vec!["snap".to_string()]);
            d.crash_drop_all();
            assert!(
                d.list(dir).await.unwrap().is_empty(),
                "name was never made durable"
            );
            d.append(&dir.join("tmp"), b"snap").await.unwrap();
            d.sync(&dir.join("tmp")).await.unwrap();
            d.rename(&dir.join("tmp"), &dir.join("snap")).await.unwrap();
            d.sync_dir(dir).await.unwrap();
            d.crash_drop_all();
            assert_eq!(d.read(&dir.join("snap")).await.unwrap(), b"snap");
        });
    }

    #[test]
    fn a_synced_truncate_is_durable() {
        // Regression (found by sim_raft seed 2211): sync only adopted longer
        // contents, so a WAL tail cut during recovery came back after the
        // next crash.
        block(async {
            let d = SimDisk::new();
            let f = Path::new("/log");
            d.create_dir_all(Path::new("/")).await.unwrap();
            d.append(f, b"good-torn").await.unwrap();
            d.sync(f).await.unwrap();
            d.sync_dir(Path::new("/")).await.unwrap();
            d.truncate(f, 4).await.unwrap();
            d.sync(f).await.unwrap();
            d.crash_drop_all();
            assert_eq!(d.read(f).await.unwrap(), b"good");
        });
    }

    #[test]
    fn injected_errors_reach_the_caller() {
        block(async {
            let d = SimDisk::new();
            d.create_dir_all(Path::new("/")).await.unwrap();
            d.set_fail_writes(true);
            assert!(d.append(Path::new("/f"), b"x").await.is_err());
            d.set_fail_writes(false);
            d.append(Path::new("/f"), b"x").await.unwrap();
            d.set_fail_syncs(true);
            assert!(d.sync(Path::new("/f")).await.is_err());
            assert!(d.sync_dir(Path::new("/")).await.is_err());
            let ops: Vec<(FailedOp, PathBuf)> = d
                .take_failures()
                .into_iter()
                .map(|f| (f.op, f.path))
                .collect();
            assert_eq!(
                ops,
                vec![
                    (FailedOp::Write, PathBuf::from("/f")),
                    (FailedOp::Sync, PathBuf::from("/f")),
                    (FailedOp::SyncDir, PathBuf::from("/")),
                ]
            );
            assert_eq!(d.failure_count(), 0);
        });
    }
}
