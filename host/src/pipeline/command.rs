//! The operator's ordered commands as data: a period close, a retry of the failed events, an
//! activation (now or from a date), a settings, limits or FX rates change, an affiliate's
//! creation or change.
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
use crate::store::records::{
    AffiliateRecord, DatedActivation, FxRates, LateEventPolicy, OperatorLimits, OperatorRecord,
};

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
}

/// What a command did.
pub enum Done {
    /// The close's settlements, one per affiliate.
    Closed(Vec<EventOutcome>),
    Retried(RetryReport),
    /// A change of the operator's record; `false` if the operator was not found.
    Changed(bool),
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
                let (answer, answered) = oneshot::channel();
                let owned = operator.clone();
                let job = Job::Change(Box::new(move |pipeline: &Pipeline| {
                    let _ = answer.send(pipeline.put_affiliate_in_turn(&owned, &affiliate));
                }));
                self.submit(&operator.id, job)?;
                Box::pin(async move { answered.await.map_err(|_| stopped())? })
            }
            change => {
                let (answer, answered) = oneshot::channel();
                let owned = operator.id.clone();
                let job = Job::Change(Box::new(move |pipeline: &Pipeline| {
                    let _ = answer.send(pipeline.change_operator(&owned, &change));
                }));
                self.submit(&operator.id, job)?;
                Box::pin(async move { answered.await.map_err(|_| stopped())? })
            }
        };
        let durability = self.durability.clone();
        Ok(Box::pin(async move {
            let done = done.await?;
            durability.wait().await?;
            Ok(done)
        }))
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
            Command::Close { .. } | Command::RetryFailed | Command::PutAffiliate { .. } => {}
        })?;
        Ok(Done::Changed(updated.is_some()))
    }
}
