//! The read model: the applied [`Model`] as readers see it, swapped whole
//! after every apply (the state machine publishes it; the check path, the
//! metering and the admin API load it without a lock).
//!
//! It lives here, beside the model, so that readers depend on `state` alone
//! and never on the consensus layer that publishes it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Model;

/// What readers see: the model as of `applied`. Swapped whole after each apply.
#[derive(Clone, Default)]
pub struct Published {
    pub model: Model,
    /// The last applied log entry (openraft's id; node ids are `u64`).
    pub applied: Option<openraft::LogId<u64>>,
    /// Moves when a plan's quota limits may have changed (see [`LimitsEpochs`]).
    pub limits: LimitsEpochs,
}

/// When a plan's quota limits last may have changed: the plan written or
/// deleted, an operator adjustment for one of its keys, or a snapshot
/// installed (all plans). A node drops the grants it holds for a plan whose
/// epoch moved and asks again. Local to this process; never goes back.
#[derive(Clone, Default)]
pub struct LimitsEpochs {
    /// The epoch of every plan at least (moved by a snapshot).
    base: u64,
    plans: imbl::HashMap<String, u64>,
    /// The last epoch handed out.
    last: u64,
}

impl LimitsEpochs {
    /// The last epoch handed out: moves whenever any plan's does.
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn of(&self, plan_id: &str) -> u64 {
        self.plans.get(plan_id).copied().unwrap_or(0).max(self.base)
    }

    /// Moves the epoch of `plan_id`, or of every plan.
    pub fn bump(&mut self, plan_id: Option<&str>) {
        self.last += 1;
        match plan_id {
            Some(id) => {
                self.plans.insert(id.to_string(), self.last);
            }
            None => {
                self.base = self.last;
                self.plans.clear();
            }
        }
    }
}

pub type SharedModel = Arc<ArcSwap<Published>>;
