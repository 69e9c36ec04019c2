//! An affiliate's creation or change, in the operator's turn.
//!
//! Why in the turn: the referral tree and the deals decide what events pay, so a change must
//! take effect at one place in the operator's order. On one host the events before it are
//! evaluated under the old tree and deal, those after under the new; in a cluster the change
//! travels through the operator's log like an event ([`super::Command::PutAffiliate`]), and
//! every node's view applies it at the same place. It also makes the tree's check and write
//! one step: two moves checked at once against the same tree could each pass and together make
//! a loop (A under B and B under A); in the turn they are checked one after the other.
//!
//! A move is checked against the tree as it stands: no loop, and no chain deeper than the
//! engine pays up ([`MAX_CHAIN_DEPTH`]), so evaluation never meets a tree it cannot walk.

use std::collections::BTreeMap;

use super::{Done, IngestError, MAX_CHAIN_DEPTH, Pipeline};
use crate::event::FieldError;
use crate::store::records::{AffiliateRecord, OperatorRecord};
use crate::store::{Store, StoreError};

impl Pipeline {
    /// Checks `affiliate`'s place in the tree and stores it.
    pub(super) fn put_affiliate_in_turn(
        &self,
        operator: &OperatorRecord,
        affiliate: &AffiliateRecord,
    ) -> Result<Done, IngestError> {
        if let Some(parent) = &affiliate.parent {
            check_move(&self.store, &operator.id, &affiliate.id, parent)?;
        }
        self.store
            .put_affiliate(&operator.id, affiliate, operator.limits.stored_bytes)?
            .map_err(|refused| IngestError::QuotaExceeded { operator: operator.id.clone(), event: None, refused })?;
        Ok(Done::Changed(true))
    }
}

/// Refuses to put `affiliate` under `parent` if that makes a loop, names an unknown parent, or
/// makes a chain deeper than the engine pays.
fn check_move(store: &Store, operator: &str, affiliate: &str, parent: &str) -> Result<(), IngestError> {
    let refuse = |problem: String| IngestError::Invalid(vec![FieldError::new("parent", problem)]);
    // The deepest chain the move makes: the parent's chain, this affiliate, and the longest
    // branch below it, which moves with it.
    let below = match store.affiliate(operator, affiliate)? {
        Some(_) => subtree_height(store, operator, affiliate)?,
        None => 0,
    };
    // Walk up from the new parent: meeting this affiliate would close a loop.
    let mut depth = 1 + below;
    let mut cursor = Some(parent.to_owned());
    while let Some(id) = cursor {
        if id == affiliate {
            return Err(refuse(format!("{parent:?} is {affiliate:?} or below it: that would make a loop")));
        }
        let record = store
            .affiliate(operator, &id)?
            .ok_or_else(|| refuse(format!("unknown affiliate {id:?}: create the parent first")))?;
        depth += 1;
        if depth > MAX_CHAIN_DEPTH {
            return Err(refuse(format!(
                "the chain would be deeper than {MAX_CHAIN_DEPTH} levels: {parent:?} and its parents, {affiliate:?}, and {below} levels below {affiliate:?}"
            )));
        }
        cursor = record.parent;
    }
    Ok(())
}

/// How many levels of affiliates are below `root` (0 for none). Reads every affiliate of the
/// operator: only a move of an existing affiliate under a parent pays for it.
fn subtree_height(store: &Store, operator: &str, root: &str) -> Result<usize, StoreError> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in store.affiliate_ids(operator)? {
        if let Some(parent) = store.affiliate(operator, &id)?.and_then(|record| record.parent) {
            children.entry(parent).or_default().push(id);
        }
    }
    let mut height = 0;
    let mut level = vec![root.to_owned()];
    // Bounded: a level past the limit already refuses the move (and a loop in old data ends there).
    while height <= MAX_CHAIN_DEPTH {
        level = level.iter().filter_map(|id| children.get(id)).flatten().cloned().collect();
        if level.is_empty() {
            break;
        }
        height += 1;
    }
    Ok(height)
}
