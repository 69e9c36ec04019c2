//! Payout runs and affiliate keys in the ledger.
//!
//! A payout run moves many commissions at once (a month's approvals, a payment's `paid`), so
//! its moves are one sled transaction: a run that fails or crashes half-way has moved nothing,
//! and a payment's record (its reference and what it paid) is written with its moves, so the
//! same reference sent again finds it and pays nothing twice. Each move takes the same rules as
//! a single move (`StatusRecord::refusal`), and a reversal netted against a commission moves
//! with it, as it does there.
//!
//! Affiliate keys are kept by their public id under the operator, holding only the key's sha256,
//! so a key is found by its id and then compared in constant time, like the operator's own.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use serde::{Deserialize, Serialize};

use super::records::{
    AffiliateKeyRecord, ClawBack, ClawBackOutcome, CommissionRecord, PayoutRecord, StatusChange, StatusRecord,
};
use super::{Abort, Store, StoreError, TxResult, clawback, decode_in_tx, get_json, keys, to_json};

/// What a run of moves did.
#[derive(Debug)]
pub enum MoveOutcome {
    /// The payment's reference was used before: the payout as it was made; nothing moved now.
    Existing(PayoutRecord),
    /// Every id that moved, in order, each followed by the reversal netted against it that moved
    /// with it; and each id that could not move, with why (the end of a sentence that starts
    /// with the id).
    Moved { moved: Vec<String>, refused: Vec<(String, String)> },
}

/// Moves commission `id` by `change` inside a transaction on the statuses, if its status allows
/// it, with the reversal netted against it. Returns the record after the move and the id of
/// the reversal that moved with it; or why it may not move.
pub(super) fn move_status(
    statuses: &TransactionalTree,
    operator: &str,
    id: &str,
    change: &StatusChange,
) -> TxResult<Result<(StatusRecord, Option<String>), String>> {
    let key = keys::text(operator, id);
    let mut record: StatusRecord =
        statuses.get(&key)?.map(|bytes| decode_in_tx(&bytes)).transpose()?.unwrap_or_default();
    if let Some(refusal) = record.refusal(change.status) {
        return Ok(Err(refusal));
    }
    record.status = change.status;
    record.history.push(change.clone());
    let mut follower = None;
    if let Some(ClawBack { by, outcome: ClawBackOutcome::Netted, .. }) = &record.clawed_back {
        let reversal_key = keys::text(operator, by);
        let mut reversal: StatusRecord =
            statuses.get(&reversal_key)?.map(|bytes| decode_in_tx(&bytes)).transpose()?.unwrap_or_default();
        clawback::follow(&mut reversal, id, change);
        statuses.insert(reversal_key, to_json(&reversal))?;
        follower = Some(by.clone());
    }
    statuses.insert(key.as_slice(), to_json(&record))?;
    Ok(Ok((record, follower)))
}

/// A commission named alike on every node of a cluster: its event's id and its place among
/// the event's commissions. A commission id numbers the node's own ledger, whose sequence can
/// differ from another node's, so commands that travel between nodes name commissions so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommissionRef {
    pub event: String,
    pub index: u16,
}

fn storage_error(tree: &'static str) -> impl Fn(TransactionError<Abort>) -> StoreError {
    move |error| match error {
        TransactionError::Storage(error) => StoreError::Sled(error),
        TransactionError::Abort(Abort::Decode(detail)) => StoreError::Decode { tree, detail },
    }
}

impl Store {
    /// Moves each of `ids` by `change`, together: all the moves (and `payout`, when it is a
    /// payment) are written or none. With a `payout` whose reference is taken, nothing moves
    /// and the stored payout is returned. The ids that may not move are skipped and said why.
    pub fn move_commissions(
        &self,
        operator: &str,
        ids: &[String],
        change: &StatusChange,
        payout: Option<&PayoutRecord>,
    ) -> Result<MoveOutcome, StoreError> {
        let payout_key = payout.map(|payout| keys::text(operator, &payout.reference));
        let result = (&self.commission_status, &self.payouts).transaction(|(statuses, payouts)| {
            if let Some(key) = &payout_key
                && let Some(existing) = payouts.get(key)?
            {
                return Ok(MoveOutcome::Existing(decode_in_tx(&existing)?));
            }
            let (mut moved, mut refused) = (Vec::new(), Vec::new());
            for id in ids {
                match move_status(statuses, operator, id, change)? {
                    Ok((_, follower)) => moved.extend(std::iter::once(id.clone()).chain(follower)),
                    Err(refusal) => refused.push((id.clone(), refusal)),
                }
            }
            // A payment that moved nothing leaves its reference free.
            if let (Some(key), Some(payout), false) = (&payout_key, payout, moved.is_empty()) {
                payouts.insert(key.as_slice(), to_json(&PayoutRecord { paid: moved.clone(), ..payout.clone() }))?;
            }
            Ok(MoveOutcome::Moved { moved, refused })
        });
        result.map_err(storage_error("commission_status"))
    }

    /// The commission `id`, named alike on every node; `None` if there is none.
    pub fn commission_ref(&self, operator: &str, id: &str) -> Result<Option<CommissionRef>, StoreError> {
        let Some((_, index)) = super::parse_commission_id(id) else { return Ok(None) };
        Ok(self.commission(operator, id)?.map(|commission| CommissionRef { event: commission.event_id, index }))
    }

    /// Moves the named commissions as [`Store::move_commissions`] moves ids; one this node's
    /// ledger does not hold is refused as such.
    pub fn move_named_commissions(
        &self,
        operator: &str,
        named: &[CommissionRef],
        change: &StatusChange,
        payout: Option<&PayoutRecord>,
    ) -> Result<MoveOutcome, StoreError> {
        let (mut ids, mut unknown) = (Vec::new(), Vec::new());
        for commission in named {
            let id = match self.event(operator, &commission.event)? {
                Some(event) => Some(CommissionRecord::id_for(event.seq, commission.index.into())),
                None => None,
            };
            match id.filter(|id| self.commission(operator, id).ok().flatten().is_some()) {
                Some(id) => ids.push(id),
                None => unknown.push((
                    format!("{}#{}", commission.event, commission.index),
                    "is not in this node's ledger".to_owned(),
                )),
            }
        }
        let mut outcome = self.move_commissions(operator, &ids, change, payout)?;
        if let MoveOutcome::Moved { refused, .. } = &mut outcome {
            refused.extend(unknown);
        }
        Ok(outcome)
    }

    /// The payout made under `reference`, if one was.
    pub fn payout(&self, operator: &str, reference: &str) -> Result<Option<PayoutRecord>, StoreError> {
        get_json(&self.payouts, "payouts", &keys::text(operator, reference))
    }

    /// Stores a new key; `false` if its id is taken (then nothing is written).
    pub fn create_affiliate_key(&self, operator: &str, record: &AffiliateKeyRecord) -> Result<bool, StoreError> {
        let key = keys::text(operator, &record.id);
        Ok(self.affiliate_keys.compare_and_swap(key, None::<&[u8]>, Some(to_json(record)))?.is_ok())
    }

    pub fn affiliate_key(&self, operator: &str, id: &str) -> Result<Option<AffiliateKeyRecord>, StoreError> {
        get_json(&self.affiliate_keys, "affiliate_keys", &keys::text(operator, id))
    }

    /// Marks the key revoked at `now` (once: a second revocation keeps the first time). `None`
    /// if the operator has no key `id` for `affiliate`.
    pub fn revoke_affiliate_key(
        &self,
        operator: &str,
        affiliate: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<AffiliateKeyRecord>, StoreError> {
        let key = keys::text(operator, id);
        let result = self.affiliate_keys.transaction(|tree| {
            let Some(bytes) = tree.get(&key)? else { return Ok(None) };
            let mut record: AffiliateKeyRecord = decode_in_tx(&bytes)?;
            if record.affiliate != affiliate {
                return Ok(None);
            }
            record.revoked_at.get_or_insert(now);
            tree.insert(key.as_slice(), to_json(&record))?;
            Ok::<_, ConflictableTransactionError<Abort>>(Some(record))
        });
        result.map_err(storage_error("affiliate_keys"))
    }
}
