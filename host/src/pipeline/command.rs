//! The operator's ordered commands as data: a period close, a retry of the failed events, an
//! activation (now or from a date), a settings, limits or FX rates change, an affiliate's
//! creation or change, a credential's rotation, moves of commissions' statuses (approvals,
//! payments), an affiliate key's issue or revocation, a shadow version's start or stop.
//!
//! Why data and not a closure on the sequencer: in a cluster a command must travel through the
//! operator's log like an event, so that the node that owns the operator runs it at its place
//! among the events, and every node's view applies it at the same place when it follows the
//! ledger ([`crate::cluster`]). On one host it is a job on the operator's queue, as before.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::sequencer::Job;
use super::{EventOutcome, IngestError, Period, Pipeline, RetryReport};
use crate::event::{FieldError, now_ms};
use crate::plugins::PreparedPlugin;
use crate::store::imports::ImportJob;
use crate::store::records::{
    AffiliateKeyRecord, AffiliateRecord, CredentialKind, DatedActivation, FxRates, LateEventPolicy, OperatorLimits,
    OperatorRecord, PayoutRecord, PluginRecord, Properties, StatusChange,
};
use crate::store::{CommissionRef, MoveOutcome};

/// A command ordered with the operator's events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Settle a month (`YYYY-MM`) for every affiliate.
    Close {
        period: String,
    },
    /// Evaluate the failed events again with the active plugin.
    RetryFailed,
    /// Make a plugin version evaluate every event from here on.
    Activate {
        version: u32,
    },
    /// Make a plugin version evaluate the events from a date.
    ActivateDated {
        activation: DatedActivation,
    },
    Settings {
        late_events: LateEventPolicy,
    },
    Limits {
        limits: OperatorLimits,
    },
    /// Set the rates events in other currencies convert at.
    FxRates {
        fx_rates: FxRates,
    },
    /// Create or change an affiliate: its parent and its deal ([`super::affiliates`]).
    PutAffiliate {
        affiliate: AffiliateRecord,
    },
    /// Move commissions' statuses together (an approval, a payment with its `payout` record, one
    /// commission's move): [`crate::store::Store::move_commissions`].
    MoveCommissions {
        commissions: Vec<CommissionRef>,
        change: StatusChange,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payout: Option<PayoutRecord>,
    },
    /// Store a new affiliate (portal) key: found `false` if its id is taken.
    IssueAffiliateKey {
        key: AffiliateKeyRecord,
    },
    /// Revoke an affiliate's key at `now`: found `false` if the affiliate has no such key.
    RevokeAffiliateKey {
        affiliate: String,
        id: String,
        now: i64,
    },
    /// Run a plugin version in shadow mode beside the active one (`None`: stop), from the
    /// ledger's start or, `from_checkpoint`, from the operator's latest checkpoint.
    Shadow {
        version: Option<u32>,
        #[serde(default)]
        from_checkpoint: bool,
    },
    /// Set the operator's config (the admin's, from an imported export).
    Config {
        config: Properties,
    },
    /// Keep an import job's progress ([`crate::store::imports::ImportJob`]), so that whichever
    /// node answers for the operator shows it.
    PutImportJob {
        job: ImportJob,
    },
    /// Record an import job running in `job.run`, unless the stored job is running on another
    /// node (found `false`, nothing written): of two starts of one job through two nodes at
    /// once, the one the operator's order puts first runs, the other is refused. Decided from
    /// the stored job and the command's own time (`job.updated_at`), so a view applying the
    /// ledger decides alike.
    StartImportJob {
        job: ImportJob,
    },
    /// Replace a credential (`stored`: the new key's or token's sha256, or the webhook secret),
    /// the old one valid until `expires_at` ([`OperatorRecord::rotate_credential`]).
    RotateCredential {
        kind: CredentialKind,
        stored: String,
        now: i64,
        expires_at: i64,
    },
}

impl Command {
    /// The plugin version the command makes evaluate events: an activation's (now or dated),
    /// or a shadow's.
    pub fn runs_version(&self) -> Option<u32> {
        match self {
            Command::Activate { version } | Command::Shadow { version: Some(version), .. } => Some(*version),
            Command::ActivateDated { activation } => Some(activation.version),
            _ => None,
        }
    }
}

/// What a command did.
pub enum Done {
    /// The close's settlements, one per affiliate.
    Closed(Vec<EventOutcome>),
    Retried(RetryReport),
    /// A change of the operator's record; `false` if the operator was not found.
    Changed(bool),
    /// What a run of commission moves did.
    Moved(MoveOutcome),
}

impl Done {
    /// The answer of a close; a command of another kind cannot answer this.
    pub fn closed(self) -> Result<Vec<EventOutcome>, IngestError> {
        match self {
            Done::Closed(outcomes) => Ok(outcomes),
            _ => Err(IngestError::Internal("a close was answered as another command".into())),
        }
    }

    pub fn retried(self) -> Result<RetryReport, IngestError> {
        match self {
            Done::Retried(report) => Ok(report),
            _ => Err(IngestError::Internal("a retry was answered as another command".into())),
        }
    }

    pub fn moved(self) -> Result<MoveOutcome, IngestError> {
        match self {
            Done::Moved(outcome) => Ok(outcome),
            _ => Err(IngestError::Internal("commission moves were answered as another command".into())),
        }
    }

    pub fn changed(self) -> Result<bool, IngestError> {
        match self {
            Done::Changed(found) => Ok(found),
            _ => Err(IngestError::Internal("a change was answered as another command".into())),
        }
    }
}

/// A command's answer, once it is done and durable.
pub type Commanded = Pin<Box<dyn Future<Output = Result<Done, IngestError>> + Send + 'static>>;

impl Pipeline {
    /// Runs `command` in the operator's order and answers once it is durable; in a cluster,
    /// through the operator's log on the node that owns it ([`super::EventRoute`]).
    pub async fn command(&self, operator: &OperatorRecord, command: Command) -> Result<Done, IngestError> {
        if let Some(route) = self.route.get() {
            return route.command(operator, command).await;
        }
        self.submit_command(operator, command, now_ms())?.await
    }

    /// Creates `operator` (`false`: its id is taken); in a cluster, on every node
    /// ([`super::EventRoute::create_operator`]).
    pub async fn create_operator(&self, operator: &OperatorRecord) -> Result<bool, IngestError> {
        if let Some(route) = self.route.get() {
            return route.create_operator(operator).await;
        }
        Ok(self.store.create_operator(operator)?)
    }

    /// Stores a validated plugin as the operator's next version; in a cluster, numbered by
    /// the cluster and set up on every node ([`super::EventRoute::add_plugin`]).
    pub async fn add_plugin(&self, operator: &str, prepared: PreparedPlugin) -> Result<PluginRecord, IngestError> {
        if let Some(route) = self.route.get() {
            return route.add_plugin(operator, prepared).await;
        }
        let plugins = self.plugins.clone();
        let owned = operator.to_owned();
        let adding = move || plugins.add(&owned, prepared, None);
        Ok(tokio::task::spawn_blocking(adding).await.map_err(|error| IngestError::Internal(error.to_string()))??)
    }

    /// Whether the operator has plugin version `version`, held on this node once this answers
    /// `true` (in a cluster, fetched if another node took its upload a moment ago).
    pub async fn hold_plugin(&self, operator: &str, version: u32) -> Result<bool, IngestError> {
        if self.store.plugin(operator, version)?.is_some() {
            return Ok(true);
        }
        match self.route.get() {
            Some(route) => route.hold_plugin(operator, version).await,
            None => Ok(false),
        }
    }

    /// Puts `command` on the operator's queue now (after what was submitted before it, before
    /// what is submitted after); the future answers once it is done and durable. `received_at`
    /// dates what it writes (a close's settlements): in a cluster the request's time in the log,
    /// so that every node's view dates them alike.
    pub fn submit_command(
        &self,
        operator: &OperatorRecord,
        command: Command,
        received_at: i64,
    ) -> Result<Commanded, IngestError> {
        let id = operator.id.clone();
        let stopped = move || IngestError::Internal(format!("operator {id}'s sequencer stopped"));
        let done: Commanded = match command {
            Command::Close { period } => {
                let period = Period::parse(&period)
                    .map_err(|problem| IngestError::Invalid(vec![FieldError::new("period", problem)]))?;
                let (answer, answered) = oneshot::channel();
                self.submit(&operator.id, Job::Close { operator: operator.clone(), period, received_at, answer })?;
                Box::pin(async move { answered.await.map_err(|_| stopped())?.map(Done::Closed) })
            }
            Command::RetryFailed => {
                let (answer, answered) = oneshot::channel();
                self.submit(&operator.id, Job::RetryFailed { operator: operator.clone(), answer })?;
                Box::pin(async move { answered.await.map_err(|_| stopped())?.map(Done::Retried) })
            }
            Command::PutAffiliate { affiliate } => {
                let owned = operator.clone();
                self.in_turn(&operator.id, move |pipeline| pipeline.put_affiliate_in_turn(&owned, &affiliate))?
            }
            Command::MoveCommissions { commissions, change, payout } => {
                let owned = operator.id.clone();
                self.in_turn(&operator.id, move |pipeline| {
                    let store = &pipeline.store;
                    Ok(Done::Moved(store.move_named_commissions(&owned, &commissions, &change, payout.as_ref())?))
                })?
            }
            Command::Shadow { version, from_checkpoint } => {
                let owned = operator.id.clone();
                self.in_turn(&operator.id, move |pipeline| {
                    if let (Some(version), true) = (version, from_checkpoint) {
                        pipeline.store.restart_shadow_from_latest_checkpoint(&owned, version)?;
                    }
                    let updated = pipeline.store.update_operator(&owned, |record| record.shadow_plugin = version)?;
                    Ok(Done::Changed(updated.is_some()))
                })?
            }
            Command::IssueAffiliateKey { key } => {
                let owned = operator.id.clone();
                self.in_turn(&operator.id, move |pipeline| {
                    Ok(Done::Changed(pipeline.store.create_affiliate_key(&owned, &key)?))
                })?
            }
            Command::PutImportJob { job } => self.in_turn(&operator.id, move |pipeline| {
                pipeline.store.put_import_job(&job)?;
                Ok(Done::Changed(true))
            })?,
            Command::StartImportJob { job } => self.in_turn(&operator.id, move |pipeline| {
                let stored = pipeline.store.import_job(&job.operator, &job.id)?;
                if stored.is_some_and(|stored| stored.running_elsewhere(&job.run, job.updated_at)) {
                    return Ok(Done::Changed(false));
                }
                pipeline.store.put_import_job(&job)?;
                Ok(Done::Changed(true))
            })?,
            Command::RevokeAffiliateKey { affiliate, id, now } => {
                let owned = operator.id.clone();
                self.in_turn(&operator.id, move |pipeline| {
                    Ok(Done::Changed(pipeline.store.revoke_affiliate_key(&owned, &affiliate, &id, now)?.is_some()))
                })?
            }
            change => {
                let owned = operator.id.clone();
                self.in_turn(&operator.id, move |pipeline| pipeline.change_operator(&owned, &change))?
            }
        };
        let durability = self.durability.clone();
        Ok(Box::pin(async move {
            let done = done.await?;
            durability.wait().await?;
            Ok(done)
        }))
    }

    /// Runs `work` in the operator's turn (after what was submitted before it); its answer.
    fn in_turn(
        &self,
        operator: &str,
        work: impl FnOnce(&Pipeline) -> Result<Done, IngestError> + Send + 'static,
    ) -> Result<Commanded, IngestError> {
        let (answer, answered) = oneshot::channel();
        self.submit(operator, Job::Change(Box::new(move |pipeline: &Pipeline| drop(answer.send(work(pipeline))))))?;
        let id = operator.to_owned();
        let stopped = move || IngestError::Internal(format!("operator {id}'s sequencer stopped"));
        Ok(Box::pin(async move { answered.await.map_err(|_| stopped())? }))
    }

    /// A change of the operator's record, in its turn: the events before it are evaluated under
    /// the record before.
    fn change_operator(&self, operator: &str, change: &Command) -> Result<Done, IngestError> {
        let updated = self.store.update_operator(operator, |record| match change {
            Command::Activate { version } => record.active_plugin = Some(*version),
            Command::ActivateDated { activation } => record.dated_activations.push(activation.clone()),
            Command::Settings { late_events } => record.late_events = *late_events,
            Command::Limits { limits } => record.limits = *limits,
            Command::FxRates { fx_rates } => record.fx_rates = fx_rates.clone(),
            Command::Config { config } => record.config = config.clone(),
            Command::RotateCredential { kind, stored, now, expires_at } => {
                record.rotate_credential(*kind, stored, *now, *expires_at)
            }
            Command::Close { .. }
            | Command::RetryFailed
            | Command::PutAffiliate { .. }
            | Command::MoveCommissions { .. }
            | Command::Shadow { .. }
            | Command::IssueAffiliateKey { .. }
            | Command::RevokeAffiliateKey { .. }
            | Command::PutImportJob { .. }
            | Command::StartImportJob { .. } => {}
        })?;
        Ok(Done::Changed(updated.is_some()))
    }
}
