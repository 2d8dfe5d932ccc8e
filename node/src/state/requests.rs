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
    /// Each remembered id by its request part alone (the id less its last
    /// [`BODY_BITS`]): a request whose id differs only there reused an
    /// `Idempotency-Key` with another body. Derived, not stored.
    by_request: HashMap<u128, u128>,
}

/// The low bits of a request id that come from its body (see
/// [`idempotent_id`]).
pub const BODY_BITS: u32 = 32;

/// The first byte of every id made from an `Idempotency-Key`: only those are
/// told apart by body (a random id has it 1 time in 256, and then shares
/// the next 88 bits with another id practically never).
const IDEMPOTENT_TAG: u8 = 0xa5;

/// The request id of an admin write sent with an `Idempotency-Key`: the tag,
/// 88 bits of `request` (the SHA-256 of its method, path and key), then 32
/// of `body` (the SHA-256 of its body).
pub fn idempotent_id(request: &[u8; 32], body: &[u8; 32]) -> u128 {
    let mut id = [0u8; 16];
    id[0] = IDEMPOTENT_TAG;
    id[1..12].copy_from_slice(&request[..11]);
    id[12..].copy_from_slice(&body[..4]);
    u128::from_be_bytes(id)
}

/// The request part of an id made by [`idempotent_id`] (None for others).
fn request_part(request_id: u128) -> Option<u128> {
    (request_id.to_be_bytes()[0] == IDEMPOTENT_TAG).then_some(request_id >> BODY_BITS)
}

/// What the log says about a request id.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// Never applied (or forgotten): apply it.
    New,
    /// Applied: its answer, to give again with no effect.
    Answered(&'a CommandResult),
    /// The same request (`Idempotency-Key`, method and path) was applied
    /// with another body: refused, with no effect.
    OtherBody,
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
            if let Some(part) = request_part(e.request_id) {
                recent.by_request.insert(part, e.request_id);
            }
            recent.by_id.insert(e.request_id, (e.index, e.answer));
        }
        recent
    }

    pub fn answer(&self, request_id: u128) -> Option<&CommandResult> {
        self.by_id.get(&request_id).map(|(_, a)| a)
    }

    /// Whether `request_id` was applied, or its request with another body.
    pub fn seen(&self, request_id: u128) -> Seen<'_> {
        if let Some(answer) = self.answer(request_id) {
            return Seen::Answered(answer);
        }
        match request_part(request_id).and_then(|part| self.by_request.get(&part)) {
            Some(other) if *other != request_id => Seen::OtherBody,
            _ => Seen::New,
        }
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
        if let Some(part) = request_part(request_id) {
            self.by_request.insert(part, request_id);
        }
        self.order.push_back(request_id);
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                if let Some(part) = request_part(old).filter(|p| self.by_request.get(p) == Some(&old)) {
                    self.by_request.remove(&part);
                }
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

    fn seen<'a>(r: &'a RecentRequests, request: &[u8; 32], body: &[u8; 32]) -> Seen<'a> {
        r.seen(idempotent_id(request, body))
    }

    #[test]
    fn the_same_request_with_another_body_is_told_apart_from_a_retry_and_a_new_request() {
        let mut recent = RecentRequests::default();
        let (request, other_request) = ([1u8; 32], [2u8; 32]);
        let (body, other_body) = ([7u8; 32], [8u8; 32]);
        recent.remember(idempotent_id(&request, &body), 1, &Ok(Applied::Deleted)).unwrap();
        assert_eq!(seen(&recent, &request, &body), Seen::Answered(&Ok(Applied::Deleted)), "a retry");
        assert_eq!(seen(&recent, &request, &other_body), Seen::OtherBody, "another body");
        assert_eq!(seen(&recent, &other_request, &body), Seen::New, "another request");
        let rebuilt = RecentRequests::from_entries(recent.entries());
        assert_eq!(seen(&rebuilt, &request, &other_body), Seen::OtherBody, "known after a restart or a snapshot too");
        // Ids not made from a key (random, the node's own) are only ever
        // equal or not: 1 and 2 differ in their low bits alone.
        recent.remember(1, 2, &Ok(Applied::Nothing)).unwrap();
        assert_eq!(recent.seen(2), Seen::New);
        for i in 0..REMEMBERED as u128 {
            recent.remember(i + 10, 3 + i as u64, &Ok(Applied::Nothing)).unwrap();
        }
        assert_eq!(seen(&recent, &request, &other_body), Seen::New, "forgotten with its request");
    }
}
