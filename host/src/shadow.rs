//! Shadow mode: a candidate plugin version evaluated beside the active one, on the same
//! ledger, paying nothing.
//!
//! The shadow does not sit on the live path. A follower thread tails the ledger in order and
//! evaluates each entry with the candidate, in the candidate's own state, recording what it
//! would have paid next to the entry; the live path never waits for it and cannot be failed by
//! it. A shadow started later first works through the history, so its state (first deposits
//! seen, lots so far) is what it would have been live; one started from a checkpoint
//! (`start: checkpoint`) takes the operator's state there instead and follows from there, in
//! time proportional to what follows. The report compares, per event and per affiliate, what
//! the shadow would have paid with what was paid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::amounts::Payout;
use crate::pipeline::{IngestError, Pipeline, Run, settlement_period};
use crate::replay::{AffiliateTotal, AffiliateTotals, EventDifference};
use crate::sandbox::StateSource;
use crate::store::records::{OperatorRecord, ShadowResult};
use crate::store::{SHADOW_FOLLOWER, Store};

/// How long the follower rests when every shadow has caught up.
const IDLE: Duration = Duration::from_millis(50);

struct ShadowState {
    store: Arc<Store>,
    operator: String,
    version: u32,
}

impl StateSource for ShadowState {
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.store.shadow_state_value(&self.operator, self.version, key)?)
    }
}

/// Starts the follower: one thread for every operator's shadow, so shadows use at most one
/// core between them, whatever live traffic does. Called on the host's runtime, whose slots
/// (see [`Pipeline::replay_slots`]) each shadow evaluation waits for.
pub fn spawn_follower(pipeline: Pipeline) -> std::io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new().name("shadow-follower".into()).spawn(move || {
        loop {
            match pipeline.shadow_round(&runtime) {
                Ok(0) => std::thread::sleep(IDLE),
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "the shadow follower failed; retrying");
                    std::thread::sleep(IDLE * 20);
                }
            }
        }
    })?;
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShadowReport {
    pub version: u32,
    /// The ledger position the shadow started following from: 1, or its checkpoint's.
    pub started_from: u64,
    /// How far through the ledger the shadow is, of how far the ledger goes.
    pub ledger_entries_followed: u64,
    pub ledger_entries: u64,
    pub events_differing: usize,
    pub affiliates: Vec<AffiliateTotal>,
    pub differences: Vec<EventDifference>,
}

impl Pipeline {
    /// Takes up to a batch of ledger entries for each operator's shadow; returns how many.
    fn shadow_round(&self, runtime: &tokio::runtime::Handle) -> Result<usize, IngestError> {
        const BATCH: usize = 100;
        let mut done = 0;
        for operator in self.store().operators()? {
            let Some(version) = operator.shadow_plugin else { continue };
            let progress = self.store().shadow_progress(&operator.id, version)?;
            let pending: Vec<(u64, String)> =
                self.store().events_after(&operator.id, progress).take(BATCH).collect::<Result<_, _>>()?;
            for (seq, id) in pending {
                let _slots = runtime.block_on(self.replay_slots());
                let _follower = SHADOW_FOLLOWER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A restart (`start: checkpoint`) may have moved the shadow since this batch was
                // read: go on only from the entry that now comes next.
                let still = self.store().operator(&operator.id)?.is_some_and(|now| now.shadow_plugin == Some(version));
                let next = self
                    .store()
                    .events_after(&operator.id, self.store().shadow_progress(&operator.id, version)?)
                    .next();
                if !still || !matches!(next, Some(Ok((next, _))) if next == seq) {
                    break;
                }
                self.shadow_one(&operator, version, seq, &id)?;
                done += 1;
            }
        }
        Ok(done)
    }

    fn shadow_one(&self, operator: &OperatorRecord, version: u32, seq: u64, id: &str) -> Result<(), IngestError> {
        let store = self.store();
        let Some(record) = store.event(&operator.id, id)?.filter(|record| record.seq == seq) else {
            // A failed event retried since moved on in the ledger: it is met again there.
            return Ok(store.commit_shadow(&operator.id, version, &skipped(seq, id), &BTreeMap::new())?);
        };
        let Some(affiliate) = &record.attributed_to else {
            return Ok(store.commit_shadow(&operator.id, version, &skipped(seq, id), &BTreeMap::new())?);
        };
        let chain = match &record.evaluation {
            Some(evaluation) => evaluation.chain.clone(),
            None => self.referral_chain(&operator.id, affiliate)?,
        };
        let state = Arc::new(ShadowState { store: store.clone(), operator: operator.id.clone(), version });
        let period = settlement_period(&record.event);
        let evaluated =
            self.run_plugin(operator, &record.event, chain, version, period.as_ref(), state, Run::Replay)?;
        let result = ShadowResult {
            seq,
            event_id: record.event.id.clone(),
            occurred_at: record.event.occurred_at,
            commissions: evaluated.commissions,
            failure: evaluated.failure.clone(),
        };
        let writes = if evaluated.failure.is_none() { evaluated.state_writes } else { BTreeMap::new() };
        Ok(store.commit_shadow(&operator.id, version, &result, &writes)?)
    }

    /// Where shadow `version` and the ledger disagree, for the entries it has evaluated.
    pub fn shadow_report(&self, operator: &OperatorRecord, version: u32) -> Result<ShadowReport, IngestError> {
        let store = self.store();
        let mut totals = AffiliateTotals::default();
        let mut differences = Vec::new();
        let results = store.shadow_results(&operator.id, version)?;
        for result in &results {
            // Results of entries a retry has since moved on in the ledger are superseded.
            let Some(record) = store.event(&operator.id, &result.event_id)?.filter(|record| record.seq == result.seq)
            else {
                continue;
            };
            // A late event's adjustments are the host's restatement, not the plugin's answer.
            let paid: Vec<Payout> = store
                .commission_records(&operator.id, &record.commission_ids)?
                .iter()
                .filter(|commission| commission.restates.is_none())
                .map(Payout::from)
                .collect();
            let shadow: Vec<Payout> = result.commissions.iter().map(Payout::from).collect();
            totals.add(&paid, &shadow)?;
            if paid != shadow || result.failure.is_some() {
                differences.push(EventDifference {
                    event_id: result.event_id.clone(),
                    occurred_at: result.occurred_at,
                    paid,
                    replayed: shadow,
                    replay_failure: result.failure.clone(),
                    problem: None,
                });
            }
        }
        Ok(ShadowReport {
            version,
            started_from: store.shadow_started_from(&operator.id, version)?,
            ledger_entries_followed: store.shadow_progress(&operator.id, version)?,
            ledger_entries: store.last_sequence(&operator.id)?,
            events_differing: differences.len(),
            affiliates: totals.into_rows()?,
            differences,
        })
    }
}

/// An entry the shadow has nothing to evaluate for (unattributed, or moved on by a retry).
fn skipped(seq: u64, id: &str) -> ShadowResult {
    ShadowResult { seq, event_id: id.to_owned(), occurred_at: 0, commissions: Vec::new(), failure: None }
}
