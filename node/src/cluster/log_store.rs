//! The Raft log and vote on [`Kv`]: entries in [`Space::Log`] keyed by
//! big-endian index (so key order is log order), vote and purge marker in
//! [`Space::Meta`].
//!
//! Appends and votes are flushed to disk before openraft is told they are
//! durable; that is what lets a restarted node keep its promises.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::codec;

use super::typ::{Entry, LogId, StorageError, Vote};
use super::{storage_err, TypeConfig};
use crate::store::{Kv, Op, Space};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// The log store. Cheap to clone: clones share the engine.
pub struct LogStore<K: Kv> {
    kv: Arc<K>,
    /// The committed index as openraft last reported it (for metrics).
    committed: Arc<AtomicU64>,
}

impl<K: Kv> Clone for LogStore<K> {
    fn clone(&self) -> Self {
        LogStore { kv: self.kv.clone(), committed: self.committed.clone() }
    }
}

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

impl<K: Kv> LogStore<K> {
    pub fn new(kv: Arc<K>, committed: Arc<AtomicU64>) -> Self {
        LogStore { kv, committed }
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        match self.kv.get(Space::Meta, key).map_err(|e| storage_err(subject.clone(), ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| storage_err(subject, ErrorVerb::Read, e)),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, e))?;
        self.kv.put(Space::Meta, key, &bytes).map_err(|e| storage_err(subject, ErrorVerb::Write, e))
    }

    async fn flush(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.kv.flush().await.map_err(|e| storage_err(subject, ErrorVerb::Write, e))
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
        codec::decode(bytes).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// Keys of all entries at or after `index`.
    fn keys_from(&self, index: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let pairs = self
            .kv
            .scan(Space::Log, index_key(index)..)
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(pairs.into_iter().map(|(k, _)| k).collect())
    }
}

impl<K: Kv> RaftLogReader<TypeConfig> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let pairs =
            self.kv.scan(Space::Log, (start, end)).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        pairs.iter().map(|(_, v)| Self::decode_entry(v)).collect()
    }
}

impl<K: Kv> RaftLogStorage<TypeConfig> for LogStore<K> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(PURGED, ErrorSubject::Logs)?;
        let last = match self.kv.last(Space::Log).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))? {
            Some((_, bytes)) => Some(Self::decode_entry(&bytes)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed.store(committed.map(|c| c.index).unwrap_or(0), Ordering::Relaxed);
        // Not flushed: openraft recomputes the commit index if this is lost.
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            ops.push(Op::Put(index_key(entry.log_id.index), bytes));
        }
        self.kv.batch(Space::Log, ops).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let flushed = self.kv.flush().await.map_err(|e| std::io::Error::other(e.to_string()));
        let failed = flushed.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(flushed);
        match failed {
            Some(e) => Err(storage_err(ErrorSubject::Logs, ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let ops = self.keys_from(log_id.index)?.into_iter().map(Op::Delete).collect();
        self.kv.batch(Space::Log, ops).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge first: a crash in between leaves entries that are
        // already covered by the marker, never a gap the marker does not explain.
        self.write_meta(PURGED, &log_id, ErrorSubject::Logs)?;
        self.flush(ErrorSubject::Logs).await?;
        let pairs = self
            .kv
            .scan(Space::Log, ..=index_key(log_id.index))
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let ops = pairs.into_iter().map(|(k, _)| Op::Delete(k)).collect();
        self.kv.batch(Space::Log, ops).map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
