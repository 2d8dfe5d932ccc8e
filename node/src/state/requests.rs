//! Recently applied request ids and their answers: what makes a retried
//! proposal take effect at most once.
//!
//! This is replicated state, not a cache: every replica applies the same log
//! and so remembers and forgets the same ids at the same entries (eviction is
//! by count, in log order). It is stored beside the model and carried in
//! snapshots, so a restarted node or one restored from a snapshot answers a
//! retry exactly as the others do.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tollgate_proto::{codec, CommandResult};

use crate::store::Op;

/// How many request ids are remembered. A retry comes within seconds of the
/// original; this covers thousands of writes in between.
pub const REMEMBERED: usize = 4096;

pub const PREFIX: &[u8] = b"r/";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub request_id: u128,
    /// Log index of the entry that first carried the request.
    pub index: u64,
    pub answer: CommandResult,
}

#[derive(Default)]
pub struct RecentRequests {
    by_id: HashMap<u128, (u64, CommandResult)>,
    /// Request ids in the order they were applied.
    order: VecDeque<u128>,
}

fn key(request_id: u128) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&request_id.to_be_bytes());
    k
}

impl RecentRequests {
    /// Rebuilds from stored (or snapshotted) entries, in any order.
    pub fn from_entries(mut entries: Vec<Remembered>) -> Self {
        entries.sort_by_key(|e| e.index);
        let mut recent = RecentRequests::default();
        for e in entries {
            recent.order.push_back(e.request_id);
            recent.by_id.insert(e.request_id, (e.index, e.answer));
        }
        recent
    }

    pub fn answer(&self, request_id: u128) -> Option<&CommandResult> {
        self.by_id.get(&request_id).map(|(_, a)| a)
    }

    /// Remembers an answer; returns the storage writes (including forgetting
    /// the oldest id once more than [`REMEMBERED`] are held).
    pub fn remember(
        &mut self,
        request_id: u128,
        index: u64,
        answer: &CommandResult,
    ) -> Result<Vec<Op>, codec::CodecError> {
        let entry = Remembered { request_id, index, answer: answer.clone() };
        let mut ops = vec![Op::Put(key(request_id), codec::encode(&entry)?)];
        self.by_id.insert(request_id, (index, answer.clone()));
        self.order.push_back(request_id);
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                ops.push(Op::Delete(key(old)));
            }
        }
        Ok(ops)
    }

    pub fn entries(&self) -> Vec<Remembered> {
        self.order
            .iter()
            .filter_map(|id| {
                self.by_id.get(id).map(|(index, answer)| Remembered {
                    request_id: *id,
                    index: *index,
                    answer: answer.clone(),
                })
            })
            .collect()
    }

    /// Storage writes that store every remembered request (snapshot install).
    pub fn puts(&self) -> Result<Vec<Op>, codec::CodecError> {
        self.entries().into_iter().map(|e| Ok(Op::Put(key(e.request_id), codec::encode(&e)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::command::Applied;

    #[test]
    fn forgets_the_oldest_in_log_order_and_says_so_in_storage() {
        let mut recent = RecentRequests::default();
        for i in 0..REMEMBERED as u128 {
            recent.remember(i, i as u64, &Ok(Applied::Deleted)).unwrap();
        }
        assert!(recent.answer(0).is_some());
        let ops = recent.remember(99_999, 99_999, &Ok(Applied::Nothing)).unwrap();
        assert!(recent.answer(0).is_none(), "the oldest id is forgotten");
        assert!(matches!(&ops[1], Op::Delete(k) if *k == key(0)));
        let rebuilt = RecentRequests::from_entries(recent.entries());
        assert_eq!(rebuilt.answer(99_999), Some(&Ok(Applied::Nothing)));
        assert_eq!(rebuilt.order, recent.order);
    }
}
