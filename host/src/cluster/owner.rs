//! The owner of an operator: takes over, catches its view up, then evaluates the operator's
//! events stream in order through this node's sequencer and writes the ledger.
//!
//! 1. **Take over**: read the last entry on the operator's ledger subject, write a
//!    [`Entry::Takeover`] after it (the fence, [`super::ownership`]).
//! 2. **Catch up**: this node's sled is a view of the ledger, possibly behind (it never owned
//!    the operator, or was down). The requests of every ledger entry after the last one this
//!    view applied (a position kept in `<data>/cluster/<operator>.position`) that were
//!    committed are sequenced again, in the ledger's order, with their original receipt time.
//!    Plugins are deterministic, so they commit what the ledger says; events this view holds
//!    already are `duplicate`s and change nothing. A request the ledger refused is not run.
//! 3. **Serve**: from the first events-stream request after the last one the ledger accounts
//!    for, take what is waiting (a group), submit each to the sequencer in stream order (it
//!    evaluates and group-commits them as it does for HTTP requests), wait until they are
//!    committed and flushed, and write one ledger entry for the group, fenced. Only then do
//!    the receiving nodes answer their clients.
//!
//! A crash anywhere in 3 is safe: the events are in the events stream; what the ledger does not
//! account for is evaluated again by the next owner, and what this view committed already is a
//! `duplicate` to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;

use super::Cluster;
use super::log::{Ordered, events_subject, ledger_subject, read_after};
use super::wire::{Answer, Committed, Entry, Request};
use crate::event::IncomingEvent;
use crate::pipeline::{Command, Done, EventOutcome};

/// How long an owner waits for a request before it checks that the stream holds none for it.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// How long a takeover tries to catch its view up before it gives the operator up.
const CATCH_UP_TRIES_FOR: Duration = Duration::from_secs(30);

/// Requests of the events stream taken into one group at most.
const MAX_GROUP_REQUESTS: usize = 256;
/// The largest ledger entry written; a group over it is written as several entries (NATS's
/// default `max_payload` is 1 MiB).
const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// An operator this node owns: its lease's current revision, and its task's stop signal.
pub(super) struct Owned {
    revision: AtomicU64,
    stop: watch::Sender<bool>,
    /// Set when the owner's task has ended.
    ended: watch::Sender<bool>,
    /// Set once this node's view holds everything the ledger had at the takeover.
    caught_up: watch::Sender<bool>,
}

impl Owned {
    pub(super) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    pub(super) fn renewed(&self, revision: u64) {
        self.revision.store(revision, Ordering::Relaxed);
    }

    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once this node's view of the operator has caught up with the ledger.
    pub(super) async fn caught_up(&self) {
        let _ = self.caught_up.subscribe().wait_for(|caught_up| *caught_up).await;
    }

    /// Resolves once the owner's task has ended (it finishes the group in hand first).
    pub(super) async fn ended(&self) {
        let _ = self.ended.subscribe().wait_for(|ended| *ended).await;
    }
}

/// Why an owner stopped.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("told to stop")]
    Told,
    #[error("fenced: another owner wrote the operator's ledger")]
    Fenced,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Where the owner stands on the operator's ledger subject.
struct Tenure {
    operator: String,
    lease: u64,
    /// The sequence of the last entry on the ledger subject: what the next write expects.
    last_entry: u64,
    /// The last events-stream sequence the ledger accounts for.
    events_sequence: u64,
    /// The last entry before this tenure's takeover: what a view must have applied.
    before: u64,
}

impl Cluster {
    /// Starts owning `operator` under the lease of `revision`.
    pub(super) fn own(self: &Arc<Self>, operator: String, revision: u64) {
        let (stop, stopped) = watch::channel(false);
        let owned = Arc::new(Owned {
            revision: AtomicU64::new(revision),
            stop,
            ended: watch::Sender::new(false),
            caught_up: watch::Sender::new(false),
        });
        self.owned.lock().expect("owned lock").insert(operator.clone(), owned.clone());
        let cluster = self.clone();
        tokio::spawn(async move {
            let outcome = cluster.clone().run_owner(&operator, revision, &owned, stopped).await;
            owned.ended.send_replace(true);
            match outcome {
                Err(Stopped::Told) => tracing::info!(%operator, "stopped owning the operator"),
                Err(error) => {
                    tracing::warn!(%operator, %error, "stopped owning the operator");
                    cluster.disown(&operator);
                }
                Ok(()) => {}
            }
        });
    }

    async fn run_owner(
        self: Arc<Self>,
        operator: &str,
        lease: u64,
        owned: &Owned,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let started = std::time::Instant::now();
        let mut tenure = self.take_over(operator, lease).await?;
        let caught_up = self.catch_up(&tenure, &mut stopped).await?;
        owned.caught_up.send_replace(true);
        tracing::info!(
            %operator, lease, caught_up, events_sequence = tenure.events_sequence,
            took_ms = started.elapsed().as_millis() as u64, "owning the operator"
        );
        let mut requests = self.read_requests(&tenure, &mut stopped).await?;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(IDLE_CHECK, requests.next()) => next,
                _ = stopped.wait_for(|stop| *stop) => return Err(Stopped::Told),
            };
            let Ok(first) = next else {
                // Idle: a consumer made while a NATS server was being replaced can stay silent
                // for good. If the stream holds a request the ledger does not account for,
                // read from there with a new one.
                if self.requests_waiting(operator, tenure.events_sequence).await {
                    tracing::warn!(%operator, after = tenure.events_sequence, "the events stream has requests this owner was not given; reading them again");
                    requests = self.read_requests(&tenure, &mut stopped).await?;
                }
                continue;
            };
            let mut group = Vec::new();
            let mut broken = None;
            let mut next = first;
            loop {
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        broken = Some(anyhow::Error::from(error));
                        break;
                    }
                    None if group.is_empty() => {
                        broken = Some(anyhow::anyhow!("the events stream's consumer ended"));
                        break;
                    }
                    None => break,
                };
                let sequence = match message.info() {
                    Ok(info) => info.stream_sequence,
                    Err(error) => {
                        broken = Some(anyhow::anyhow!("{error}"));
                        break;
                    }
                };
                match serde_json::from_slice::<Request>(&message.payload) {
                    Ok(request) => group.push((sequence, request)),
                    Err(error) => {
                        tracing::error!(%operator, sequence, %error, "a request that does not parse; skipped")
                    }
                }
                if group.len() >= MAX_GROUP_REQUESTS {
                    break;
                }
                next = match requests.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                };
            }
            if !group.is_empty() {
                self.commit_group(&mut tenure, group).await?;
            }
            if let Some(error) = broken {
                // The stream's leader is being elected, or a server went away: the requests
                // are still in the stream, so read on from what the ledger accounts for.
                tracing::warn!(%operator, %error, after = tenure.events_sequence, "reading the events stream failed; reading it again");
                requests = self.read_requests(&tenure, &mut stopped).await?;
            }
        }
    }

    /// The operator's requests on the events stream after the last one the ledger accounts
    /// for, in order. Tried again, a little later each time, until the stream answers: a stream
    /// electing its leader is no reason to give the operator up (the lease decides that, and
    /// stops this owner through `stopped`).
    async fn read_requests(&self, tenure: &Tenure, stopped: &mut watch::Receiver<bool>) -> Result<Ordered, Stopped> {
        let mut wait = Duration::from_millis(100);
        loop {
            let read = read_after(&self.log.events, events_subject(&tenure.operator), tenure.events_sequence);
            let read = tokio::select! {
                read = read => read,
                _ = stopped.wait_for(|stop| *stop) => return Err(Stopped::Told),
            };
            match read {
                Ok(requests) => return Ok(requests),
                Err(error) => {
                    tracing::warn!(operator = %tenure.operator, %error, "could not read the events stream; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => return Err(Stopped::Told),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether the events stream holds a request of the operator after `sequence`.
    async fn requests_waiting(&self, operator: &str, sequence: u64) -> bool {
        match self.log.events.get_last_raw_message_by_subject(&events_subject(operator)).await {
            Ok(last) => last.sequence > sequence,
            Err(_) => false,
        }
    }

    /// Reads the last ledger entry and fences it off with a takeover entry.
    async fn take_over(&self, operator: &str, lease: u64) -> Result<Tenure, Stopped> {
        let subject = ledger_subject(operator);
        for _ in 0..10 {
            let (last_entry, events_sequence) = match self.log.ledger.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => {
                    let entry: Entry = serde_json::from_slice(&message.payload).map_err(anyhow::Error::from)?;
                    (message.sequence, entry.events_sequence())
                }
                Err(error)
                    if error.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    (0, 0)
                }
                Err(error) => return Err(Stopped::Failed(error.into())),
            };
            let mut tenure =
                Tenure { operator: operator.to_owned(), lease, last_entry, events_sequence, before: last_entry };
            let takeover = Entry::Takeover { node: self.node.clone(), lease, events_sequence };
            match self.write(&mut tenure, &takeover).await {
                Ok(()) => return Ok(tenure),
                // Someone wrote in between (a paused old owner's last entry): read again.
                Err(Stopped::Fenced) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(Stopped::Fenced)
    }

    /// Applies to this node's view the ledger entries it has not applied, up to the takeover,
    /// holding the view's lock (its follower waits meanwhile, [`super::view`]). A failure (the
    /// ledger stream electing a leader, say) is tried again, a little later each time, for up to
    /// [`CATCH_UP_TRIES_FOR`], from where the view got: each entry applied moves the view's
    /// position, and what is applied again is a `duplicate`. Past that, the owner gives the
    /// operator up (a view that refuses what the ledger committed, on a full disk, say, cannot
    /// own it).
    async fn catch_up(
        self: &Arc<Self>,
        tenure: &Tenure,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<usize, Stopped> {
        let view = self.view(&tenure.operator);
        let _applying = view.lock.lock().await;
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        let applied = loop {
            match self.apply_ledger(&tenure.operator, tenure.before).await {
                Ok(requests) => break requests,
                Err(error) if started.elapsed() < CATCH_UP_TRIES_FOR => {
                    tracing::warn!(operator = %tenure.operator, %error, "catching the view up failed; trying again")
                }
                Err(error) => return Err(Stopped::Failed(error)),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => return Err(Stopped::Told),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        };
        self.set_position(&tenure.operator, tenure.last_entry);
        Ok(applied)
    }

    /// Sequences the requests in order on this node's pipeline; answers each once committed
    /// and flushed.
    pub(super) async fn sequence(&self, operator: &str, requests: Vec<(u64, Request)>) -> Vec<(u64, Answer)> {
        let record = match self.pipeline.store().operator(operator) {
            Ok(Some(record)) => record,
            Ok(None) => {
                let message = format!("operator {operator} is unknown to node {}", self.node);
                return requests
                    .into_iter()
                    .map(|(seq, _)| (seq, Answer::Unavailable { message: message.clone() }))
                    .collect();
            }
            Err(error) => {
                return requests
                    .into_iter()
                    .map(|(seq, _)| (seq, Answer::Unavailable { message: error.to_string() }))
                    .collect();
            }
        };
        // A version is held before it is activated (or shadowed): what follows needs it.
        let mut unheld = HashMap::new();
        for (sequence, request) in &requests {
            if let Some(version) = request.command.as_ref().and_then(Command::runs_version)
                && let Err(error) = self.hold_plugin(operator, version).await
            {
                unheld.insert(*sequence, Answer::Unavailable { message: error.to_string() });
            }
        }
        // Submitted in order before any is awaited: the sequencer takes them in this order.
        let submitted: Vec<(u64, BoxFuture<'static, Answer>)> = requests
            .into_iter()
            .map(|(sequence, request)| {
                if let Some(refused) = unheld.remove(&sequence) {
                    let answer: BoxFuture<'static, Answer> = Box::pin(std::future::ready(refused));
                    return (sequence, answer);
                }
                let answer: BoxFuture<'static, Answer> = match request.command {
                    Some(command) => match self.pipeline.submit_command(&record, command, request.received_at) {
                        Ok(done) => Box::pin(done.map(Answer::from)),
                        Err(error) => Box::pin(std::future::ready(Answer::from(Err::<Done, _>(error)))),
                    },
                    None => {
                        let events: Vec<IncomingEvent> = request.events.into_iter().map(Into::into).collect();
                        match self.pipeline.sequence_events(&record, events, request.received_at) {
                            Ok(answered) => Box::pin(answered.map(Answer::from)),
                            Err(error) => {
                                Box::pin(std::future::ready(Answer::from(Err::<Vec<EventOutcome>, _>(error))))
                            }
                        }
                    }
                };
                (sequence, answer)
            })
            .collect();
        let mut answers = Vec::with_capacity(submitted.len());
        for (sequence, answer) in submitted {
            answers.push((sequence, answer.await));
        }
        answers
    }

    /// Commits a group of requests and writes its ledger entries.
    async fn commit_group(&self, tenure: &mut Tenure, group: Vec<(u64, Request)>) -> Result<(), Stopped> {
        let originals: Vec<(String, i64, Vec<super::wire::Event>, Option<Command>)> = group
            .iter()
            .map(|(_, request)| {
                let events = request
                    .events
                    .iter()
                    .map(|event| super::wire::Event {
                        event: event.event.clone(),
                        content_sha256: event.content_sha256.clone(),
                    })
                    .collect();
                (request.reply.clone(), request.received_at, events, request.command.clone())
            })
            .collect();
        let answers = self.sequence(&tenure.operator, group).await;
        let mut entry: Vec<Committed> = Vec::new();
        let mut bytes = 0;
        for ((sequence, mut answer), (reply, received_at, events, command)) in answers.into_iter().zip(originals) {
            answer.own_commits_as_first_answered(received_at);
            let committed = Committed { sequence, reply, received_at, events, command, answer };
            let size = serde_json::to_vec(&committed).map_or(0, |json| json.len());
            if !entry.is_empty() && bytes + size > MAX_ENTRY_BYTES {
                self.write_committed(tenure, std::mem::take(&mut entry)).await?;
                bytes = 0;
            }
            bytes += size;
            entry.push(committed);
        }
        self.write_committed(tenure, entry).await
    }

    async fn write_committed(&self, tenure: &mut Tenure, requests: Vec<Committed>) -> Result<(), Stopped> {
        let entry = Entry::Committed { node: self.node.clone(), lease: tenure.lease, requests };
        self.write(tenure, &entry).await?;
        self.set_position(&tenure.operator, tenure.last_entry);
        Ok(())
    }

    /// Writes `entry` after the last one the tenure knows, or finds the ledger moved on
    /// ([`Stopped::Fenced`]). A write whose answer was lost is tried again; if the first try
    /// landed, the second is refused, and the last entry is found to be this one.
    async fn write(&self, tenure: &mut Tenure, entry: &Entry) -> Result<(), Stopped> {
        let subject = ledger_subject(&tenure.operator);
        let payload = bytes::Bytes::from(serde_json::to_vec(entry).map_err(anyhow::Error::from)?);
        let mut wait = Duration::from_millis(50);
        for attempt in 0..40 {
            let publish =
                PublishMessage::build().payload(payload.clone()).expected_last_subject_sequence(tenure.last_entry);
            let acked = match self.log.jetstream.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match acked {
                Ok(ack) => {
                    tenure.last_entry = ack.sequence;
                    tenure.events_sequence = tenure.events_sequence.max(entry.events_sequence());
                    return Ok(());
                }
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    if attempt > 0
                        && let Ok(last) = self.log.ledger.get_last_raw_message_by_subject(&subject).await
                        && last.payload == payload
                    {
                        tenure.last_entry = last.sequence;
                        tenure.events_sequence = tenure.events_sequence.max(entry.events_sequence());
                        return Ok(());
                    }
                    return Err(Stopped::Fenced);
                }
                Err(error) => {
                    tracing::warn!(operator = %tenure.operator, %error, attempt, "writing the ledger failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
        Err(Stopped::Failed(anyhow::anyhow!("the ledger could not be written for 30 s")))
    }
}
