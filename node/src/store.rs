//! The node's durable storage behind a small trait of our own, so the consensus
//! and state machine code never name sled (openraft no longer recommends sled
//! for its memory and space use; replacing it touches only this file).
//!
//! Data lives in a fixed set of [`Space`]s (sled trees). Writes to one space in
//! one [`Kv::batch`] are atomic. Nothing here is durable until [`Kv::flush`]
//! returns.

use std::future::Future;
use std::ops::RangeBounds;
use std::path::Path;

/// A fixed, small set of key spaces: adding one is a schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Raft log entries, keyed by big-endian index.
    Log,
    /// Vote, committed log id, last purged log id.
    Meta,
    /// The applied model, one key per object, plus the applied log id and membership.
    State,
    /// The current snapshot (meta and data).
    Snapshot,
}

/// One write in a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct KvError(String);

impl KvError {
    pub fn new(what: impl std::fmt::Display) -> Self {
        KvError(what.to_string())
    }
}

pub type KvResult<T> = Result<T, KvError>;

/// What the node needs from a key-value engine.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> KvResult<Option<Vec<u8>>>;
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> KvResult<()>;
    /// Applies every op, or none of them.
    fn batch(&self, space: Space, ops: Vec<Op>) -> KvResult<()>;
    /// Key-value pairs in key order within `range`.
    fn scan<R: RangeBounds<Vec<u8>>>(&self, space: Space, range: R) -> KvResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The first pair at or after `from` (for "what is the first log index").
    fn first(&self, space: Space) -> KvResult<Option<(Vec<u8>, Vec<u8>)>>;
    fn last(&self, space: Space) -> KvResult<Option<(Vec<u8>, Vec<u8>)>>;
    /// Makes every write so far durable.
    fn flush(&self) -> impl Future<Output = KvResult<()>> + Send;
}

/// Tuning for the sled engine.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// Page cache size in bytes; sled's default (1 GiB) is too much for a sidecar.
    pub cache_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions { cache_bytes: 64 << 20 }
    }
}

/// [`Kv`] on sled 0.34: one tree per [`Space`].
#[derive(Clone)]
pub struct SledKv {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
    snapshot: sled::Tree,
}

impl SledKv {
    pub fn open(dir: &Path, options: &SledOptions) -> KvResult<Self> {
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| KvError::new(format!("cannot open {}: {e}", dir.display())))?;
        let tree = |name: &str| db.open_tree(name).map_err(KvError::new);
        Ok(SledKv { log: tree("log")?, meta: tree("meta")?, state: tree("state")?, snapshot: tree("snapshot")?, db })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Log => &self.log,
            Space::Meta => &self.meta,
            Space::State => &self.state,
            Space::Snapshot => &self.snapshot,
        }
    }
}

/// Removes sled's unfinished snapshot files (`snap.<lsn>.generating`) from
/// `dir`. sled writes its snapshot to such a file and renames it when done,
/// so one left behind was never finished (say, its write hit a full disk).
/// sled 0.34.7 would read it all the same, as its newest snapshot, and then
/// refuse to open for good ("Read corrupted data"); without it, sled uses
/// its last finished snapshot and replays its log from there.
fn remove_unfinished_snapshots(dir: &Path) -> KvResult<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KvError::new(format!("cannot list {}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| KvError::new(format!("cannot remove the unfinished snapshot {}: {e}", path.display())))?;
            tracing::warn!(file = %path.display(), "removed an unfinished storage snapshot (a write that never completed)");
        }
    }
    Ok(())
}

impl Kv for SledKv {
    fn get(&self, space: Space, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.tree(space).get(key).map_err(KvError::new)?.map(|v| v.to_vec()))
    }

    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> KvResult<()> {
        self.tree(space).insert(key, value).map_err(KvError::new)?;
        Ok(())
    }

    fn batch(&self, space: Space, ops: Vec<Op>) -> KvResult<()> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
            }
        }
        self.tree(space).apply_batch(batch).map_err(KvError::new)
    }

    fn scan<R: RangeBounds<Vec<u8>>>(&self, space: Space, range: R) -> KvResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(space)
            .range(range)
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(KvError::new))
            .collect()
    }

    fn first(&self, space: Space) -> KvResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.tree(space).first().map_err(KvError::new)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn last(&self, space: Space) -> KvResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.tree(space).last().map_err(KvError::new)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    async fn flush(&self) -> KvResult<()> {
        self.db.flush_async().await.map_err(KvError::new)?;
        Ok(())
    }
}

/// Opens `dir` again in this process once the previous [`SledKv`] on it has
/// let go. Dropping a sled database returns at once, but its background
/// threads hold the directory's lock a moment longer, so an open right after
/// can fail with "could not acquire lock" (a restarted process never sees
/// this: the old one is gone). Waits for that event only, at most 10 s; any
/// other error panics. For tests of restarts.
#[cfg(test)]
pub async fn reopen(dir: &Path) -> SledKv {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledKv::open(dir, &SledOptions::default()) {
            Ok(kv) => return kv,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopening {}: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_is_visible_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledKv::open(dir.path(), &SledOptions::default()).unwrap();
            kv.batch(Space::Log, vec![Op::Put(vec![1], vec![10]), Op::Put(vec![2], vec![20])]).unwrap();
            kv.batch(Space::Log, vec![Op::Delete(vec![1])]).unwrap();
            kv.flush().await.unwrap();
        }
        let kv = reopen(dir.path()).await;
        assert_eq!(kv.scan(Space::Log, ..).unwrap(), vec![(vec![2], vec![20])]);
        assert_eq!(kv.get(Space::Meta, &[2]).unwrap(), None, "spaces are separate");
    }
}
