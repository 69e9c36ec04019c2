//! Several hosts on NATS JetStream (`serve --cluster nats://...,... --node NAME`).
//!
//! Why: on the embedded default the whole ledger is one sled directory on one disk, written by
//! one process. Here no single disk holds the money: the events and the ledger are in
//! replicated JetStream streams (a write is acknowledged once a quorum of servers holds it),
//! each node's sled directory is a view that can be rebuilt from them, and a node can die
//! mid-load without losing anything it acknowledged.
//!
//! The design, in the order an event travels:
//! - **Any node receives** a request and checks it as today (credentials, body, fields,
//!   limits). It publishes the checked events to the operator's subject on the events stream
//!   ([`log`]), with a `Nats-Msg-Id` JetStream deduplicates on, and waits ([`answer`]).
//! - **One node owns the operator** at a time, by a lease in a key-value bucket, and a fence
//!   on the ledger stream that a paused old owner cannot pass ([`ownership`]). The owner reads
//!   the operator's events in stream order and puts them on its own sequencer, exactly as HTTP
//!   requests are on one node: one writer per operator, per-customer order, group commit. Once
//!   they are committed and flushed in its sled, it writes a ledger entry (the events, their
//!   commissions, the answer) to the operator's ledger subject ([`owner`]).
//! - **The receiving node answers** when the entry appears: the client sees the same answer as
//!   on one node. Past the deadline (`--cluster-answer-secs`), 202 with the events' addresses:
//!   they are durable in the log and will be committed; a retry answers `duplicate`.
//! - **Failover**: a dead owner stops renewing its lease; after the lease another node takes
//!   the operator, catches its view up from the ledger stream, and goes on from the first
//!   event the ledger does not account for. A clean SIGTERM drains requests in flight, then
//!   deletes its leases, so the operators move at the next sweep.
//! - **Reads** of an operator's data, and the writes worked out from it, are forwarded to its
//!   owner, whose view holds everything the ledger acknowledged ([`reads`]).
//!
//! Why the state delta is not in the ledger entry: plugins are deterministic, so the events in
//! ledger order, evaluated again, give the same commissions and state; catching up runs them
//! through the same sequencer. The entry holds the events, their commissions and the answer,
//! so the ledger stream alone says what was paid.
//!
//! Ordered commands (a period close, a retry of the failed events, an activation, a settings or
//! limits change, FX rates, an affiliate's creation or change) travel the same way as events ([`crate::pipeline::Command`]): the owner runs
//! them at their place in the operator's stream, and every node's view applies them at the
//! same place of the ledger ([`view`]).
//!
//! Operators are created once for the cluster, in a bucket every node follows ([`operators`]),
//! and so are plugin versions ([`plugins`]). Credentials' rotations, shadows, commission moves
//! (approvals, payments) and affiliate keys are ordered commands; the writes worked out from
//! the operator's data are answered by its owner ([`reads`]).

mod answer;
mod log;
mod operators;
mod owner;
mod ownership;
mod plugins;
mod reads;
mod status;
mod view;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use tokio::sync::watch;

use crate::event::{IncomingEvent, now_ms};
use crate::pipeline::{Answered, Command, Done, EventRoute, IngestError, Pipeline};
use crate::plugins::PreparedPlugin;
use crate::store::records::{OperatorRecord, PluginRecord};
use answer::Waiters;
use log::{Log, events_subject};
use owner::Owned;
pub use status::{ClusterStatus, LiveNode, Placement};

/// `serve --cluster`'s settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers, `nats://host:port` each.
    pub servers: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Replicas of each stream and bucket.
    pub replicas: usize,
    /// How long a lease lasts unrenewed: an owner that dies is replaced after about this.
    pub lease: Duration,
    /// How long a receiving node waits for the owner's commit before answering 202.
    pub answer_deadline: Duration,
}

/// This node's part in the cluster.
pub struct Cluster {
    node: String,
    /// Where this node serves HTTP, as its lease says.
    address: String,
    config: ClusterConfig,
    log: Log,
    pipeline: Pipeline,
    data: PathBuf,
    waiters: Arc<Waiters>,
    /// Forwards reads to an operator's owner ([`reads`]).
    http: reqwest::Client,
    owned: Mutex<HashMap<String, Arc<Owned>>>,
    /// Each operator's view on this node, which follows its ledger ([`view`]).
    views: Mutex<HashMap<String, Arc<view::View>>>,
    /// Each operator's plugin uploads and installs on this node, one at a time ([`plugins`]).
    installing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Operator ids looked up in the bucket lately and not found ([`operators`]).
    unknown_operators: Mutex<HashMap<String, std::time::Instant>>,
    /// The bucket lookups of operator ids this node made in the current second ([`operators`]).
    lookups: Mutex<(std::time::Instant, u32)>,
    stopping: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
}

impl Cluster {
    /// This node's name in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Joins the cluster: makes its streams if missing, routes `pipeline`'s events through it,
    /// and starts taking operators.
    pub async fn join(
        config: ClusterConfig,
        pipeline: Pipeline,
        data: PathBuf,
        address: String,
    ) -> anyhow::Result<Arc<Cluster>> {
        let log = Log::open(&config.servers, &config.node, config.replicas, config.lease).await?;
        let (stop, stopping) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            node: config.node.clone(),
            address,
            waiters: Waiters::new(&config.node),
            config,
            log,
            pipeline: pipeline.clone(),
            data,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|error| anyhow::anyhow!("the HTTP client for reads: {error}"))?,
            owned: Mutex::default(),
            views: Mutex::default(),
            installing: Mutex::default(),
            unknown_operators: Mutex::default(),
            lookups: Mutex::new((std::time::Instant::now(), 0)),
            stopping,
            stop,
        });
        let (waiters, client, views) = (cluster.waiters.clone(), cluster.log.client.clone(), cluster.clone());
        tokio::spawn(async move {
            if let Err(error) = waiters.follow(client, move |operator| views.ledger_moved(operator)).await {
                tracing::error!(%error, "stopped reading the ledger's answers");
            }
        });
        cluster.offer_operators().await?;
        tokio::spawn(cluster.clone().keep_following("ch_operators", Cluster::follow_operators));
        tokio::spawn(cluster.clone().keep_following("ch_plugins", Cluster::follow_plugins));
        pipeline.route_events(Arc::new(Route(cluster.clone())));
        tokio::spawn(cluster.clone().keep_leases());
        tracing::info!(node = %cluster.node, servers = %cluster.config.servers.join(","), "joined the cluster");
        Ok(cluster)
    }

    /// `router` with an operator's reads answered by its owner ([`reads`]).
    pub fn route_reads(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), reads::forward_to_owner))
    }

    /// A clean stop, once requests in flight are answered: stops the owners (each finishes its
    /// group and writes its entry) and deletes this node's leases.
    pub async fn leave(&self) {
        self.stop.send_replace(true);
        let owned: Vec<(String, Arc<Owned>)> =
            self.owned.lock().expect("owned lock").iter().map(|(op, owned)| (op.clone(), owned.clone())).collect();
        for (_, owned) in &owned {
            owned.stop();
        }
        for (operator, owned) in &owned {
            if tokio::time::timeout(self.config.lease, owned.ended()).await.is_err() {
                tracing::warn!(%operator, "the owner did not finish its group within the lease");
            }
        }
        self.release().await;
        tracing::info!(node = %self.node, operators = owned.len(), "left the cluster; leases released");
    }

    /// Publishes a request (checked events, or a command) to the operator's events stream;
    /// waits for the owner's answer.
    async fn publish(
        &self,
        operator: &OperatorRecord,
        events: Vec<IncomingEvent>,
        command: Option<Command>,
    ) -> Result<wire::Answer, IngestError> {
        let ids: Vec<String> = events.iter().map(|incoming| incoming.event.id.clone()).collect();
        let waiting = self.waiters.wait();
        // A command is its own: two closes of a month are two commands (the second settles
        // nothing twice), so JetStream's deduplication is given the wait's unique name.
        let message_id = match command {
            Some(_) => format!("{}:command:{}", operator.id, waiting.reply),
            None => message_id(&operator.id, &events),
        };
        let request = wire::Request {
            events: events.into_iter().map(Into::into).collect(),
            received_at: now_ms(),
            reply: waiting.reply.clone(),
            command,
        };
        let payload =
            bytes::Bytes::from(serde_json::to_vec(&request).map_err(|error| IngestError::Internal(error.to_string()))?);
        let subject = events_subject(&operator.id);
        let mut ack = self.send(&subject, &payload, &message_id).await?;
        if ack.duplicate {
            // The log holds this request from an earlier send (within JetStream's window), and
            // its answer went to that sender. This one is sent again, named by its own reply:
            // the owner's ledger answers it, `duplicate` if the first was committed.
            ack = self.send(&subject, &payload, &format!("{message_id}:{}", waiting.reply)).await?;
        }
        tracing::debug!(operator = %operator.id, sequence = ack.sequence, "request in the log");
        waiting.answered(self.config.answer_deadline, &operator.id, ids).await
    }

    async fn send(
        &self,
        subject: &str,
        payload: &bytes::Bytes,
        message_id: &str,
    ) -> Result<async_nats::jetstream::publish::PublishAck, IngestError> {
        let publish = PublishMessage::build().payload(payload.clone()).message_id(message_id);
        let unavailable = |error: &dyn std::fmt::Display| IngestError::LogUnavailable(error.to_string());
        let acked = self.log.jetstream.send_publish(subject.to_owned(), publish).await.map_err(|e| unavailable(&e))?;
        acked.await.map_err(|error| unavailable(&error))
    }
}

/// The id JetStream deduplicates a request on: the operator and the event's id (a batch: a
/// digest of its events' ids and contents).
fn message_id(operator: &str, events: &[IncomingEvent]) -> String {
    match events {
        [one] => format!("{operator}:{}", one.event.id),
        many => {
            use sha2::{Digest, Sha256};
            let mut digest = Sha256::new();
            for incoming in many {
                digest.update(incoming.event.id.as_bytes());
                digest.update([0]);
                digest.update(incoming.content_sha256.as_bytes());
            }
            format!("{operator}:batch:{}", hex::encode(digest.finalize()))
        }
    }
}

/// The pipeline's route for events in a cluster.
struct Route(Arc<Cluster>);

impl EventRoute for Route {
    fn ingest<'a>(&'a self, operator: &'a OperatorRecord, events: Vec<IncomingEvent>) -> Answered<'a> {
        Box::pin(async move { self.0.publish(operator, events, None).await?.into_result(&operator.id) })
    }

    fn command<'a>(
        &'a self,
        operator: &'a OperatorRecord,
        command: Command,
    ) -> Pin<Box<dyn Future<Output = Result<Done, IngestError>> + Send + 'a>> {
        Box::pin(async move { self.0.publish(operator, Vec::new(), Some(command)).await?.into_done(&operator.id) })
    }

    fn create_operator<'a>(
        &'a self,
        operator: &'a OperatorRecord,
    ) -> Pin<Box<dyn Future<Output = Result<bool, IngestError>> + Send + 'a>> {
        Box::pin(self.0.create_operator(operator))
    }

    fn add_plugin<'a>(
        &'a self,
        operator: &'a str,
        prepared: PreparedPlugin,
    ) -> Pin<Box<dyn Future<Output = Result<PluginRecord, IngestError>> + Send + 'a>> {
        Box::pin(self.0.add_plugin(operator, prepared))
    }

    fn hold_plugin<'a>(
        &'a self,
        operator: &'a str,
        version: u32,
    ) -> Pin<Box<dyn Future<Output = Result<bool, IngestError>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .held_plugin(operator, version)
                .await
                .map_err(|error| IngestError::LogUnavailable(format!("{error:#}")))
        })
    }
}
