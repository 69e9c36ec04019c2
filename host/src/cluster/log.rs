//! The replicated streams and buckets the cluster runs on, made at start-up if missing.
//!
//! - `CH_EVENTS`, subjects `ch.events.<operator>`: the requests the nodes received, in the order
//!   JetStream stored them, which is the order the operator's owner evaluates them in. Published
//!   with `Nats-Msg-Id` = operator and event id, which JetStream deduplicates within its window
//!   (2 minutes): a request a node sent twice (a publish retried after a lost ack) is stored
//!   once. Senders retry for days, so the window decides nothing about `duplicate`: the
//!   owner's ledger does, by event id, forever.
//! - `CH_LEDGER`, subjects `ch.ledger.<operator>`: the owner's ledger entries (what it
//!   committed and the answers), each written with the subject's last sequence expected.
//! - KV `ch_owners` (an operator's lease, [`super::ownership`]) and `ch_nodes` (live nodes),
//!   whose entries expire with the lease.
//! - KV `ch_operators`: each operator as it was created, kept for good ([`super::operators`]).
//! - KV `ch_plugins` (`<operator>.<version>`: a plugin version's record) and the object store
//!   `ch_plugin_wasm` (the components, by sha256), kept for good ([`super::plugins`]).
//!
//! All with the replicas asked for (3 in the tests): a write is acknowledged once a quorum of
//! replicas holds it.

use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{self, kv, stream};

/// The events stream.
pub const EVENTS: &str = "CH_EVENTS";
/// The ledger stream.
pub const LEDGER: &str = "CH_LEDGER";

pub fn events_subject(operator: &str) -> String {
    format!("ch.events.{operator}")
}

pub fn ledger_subject(operator: &str) -> String {
    format!("ch.ledger.{operator}")
}

/// The operator a ledger subject is of.
pub fn operator_of_ledger(subject: &str) -> Option<&str> {
    subject.strip_prefix("ch.ledger.")
}

/// JetStream's deduplication window for the events stream.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The cluster's handles, once its streams and buckets exist.
#[derive(Clone)]
pub struct Log {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub events: stream::Stream,
    pub ledger: stream::Stream,
    pub owners: kv::Store,
    pub nodes: kv::Store,
    pub operators: kv::Store,
    pub plugins: kv::Store,
    pub plugin_wasm: ObjectStore,
}

/// An ordered consumer's messages: one subject of a stream, in order, from a sequence on.
pub type Ordered = async_nats::jetstream::consumer::pull::Ordered;

/// Reads `subject` of `stream` in order from the message after `after`.
pub async fn read_after(stream: &stream::Stream, subject: String, after: u64) -> anyhow::Result<Ordered> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

impl Log {
    /// Connects and makes what is missing; retries while the servers elect their JetStream
    /// leader (a cluster that just started), for up to a minute.
    pub async fn open(servers: &[String], name: &str, replicas: usize, lease: Duration) -> anyhow::Result<Log> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(|error| anyhow::anyhow!("connecting to NATS at {}: {error}", servers.join(",")))?;
        let jetstream = jetstream::ContextBuilder::new().timeout(Duration::from_secs(10)).build(client.clone());
        let started = Instant::now();
        loop {
            match Self::make(&client, &jetstream, replicas, lease).await {
                Ok(log) => return Ok(log),
                Err(error) if started.elapsed() < Duration::from_secs(60) => {
                    tracing::info!(%error, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error.context("setting up the cluster's streams")),
            }
        }
    }

    async fn make(
        client: &async_nats::Client,
        jetstream: &jetstream::Context,
        replicas: usize,
        lease: Duration,
    ) -> anyhow::Result<Log> {
        let stream = |name: &str, subjects: &str| stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let events = jetstream.get_or_create_stream(stream(EVENTS, "ch.events.*")).await?;
        let ledger = jetstream.get_or_create_stream(stream(LEDGER, "ch.ledger.*")).await?;
        let owners = key_value(jetstream, "ch_owners", replicas, lease).await?;
        let nodes = key_value(jetstream, "ch_nodes", replicas, lease).await?;
        let operators = key_value(jetstream, OPERATORS, replicas, Duration::ZERO).await?;
        let plugins = key_value(jetstream, PLUGINS, replicas, Duration::ZERO).await?;
        let plugin_wasm = object_store(jetstream, PLUGIN_WASM, replicas).await?;
        Ok(Log {
            client: client.clone(),
            jetstream: jetstream.clone(),
            events,
            ledger,
            owners,
            nodes,
            operators,
            plugins,
            plugin_wasm,
        })
    }
}

/// The bucket of operators as they were created.
pub const OPERATORS: &str = "ch_operators";
/// The bucket of plugin versions' records.
pub const PLUGINS: &str = "ch_plugins";
/// The object store of plugin components.
pub const PLUGIN_WASM: &str = "ch_plugin_wasm";

/// The object store, made if missing, as [`key_value`] makes a bucket (and as async-nats makes
/// an object store's stream).
async fn object_store(jetstream: &jetstream::Context, bucket: &str, replicas: usize) -> anyhow::Result<ObjectStore> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("OBJ_{bucket}"),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_object_store(bucket).await?)
}

/// The bucket, made if missing (another node may make it at the same moment); its entries
/// expire after `max_age` (zero: never). Its stream is
/// made here, shaped as async-nats makes a bucket's: its `create_key_value` first reads the
/// account's info, which a 2.9 server gives without fields the client requires.
async fn key_value(
    jetstream: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> anyhow::Result<kv::Store> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_key_value(bucket).await?)
}
