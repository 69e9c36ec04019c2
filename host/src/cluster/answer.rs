//! Waiting for the owner's commit: the receiving node's side of a request.
//!
//! The node publishes the request to the operator's events stream and waits until the owner's
//! ledger entry for it appears on the ledger stream. Every node reads every ledger entry as
//! it is written (a plain NATS subscription to `ch.ledger.>`, which sees what the stream
//! stores) and hands each request's answer to the waiter named by the request's `reply`.
//!
//! A missed entry (a NATS server restarting between the stream and the subscriber) is not
//! lost money: the events are in the log and the owner commits them. The waiter runs out its
//! deadline and the client gets 202 with the events' addresses ([`IngestError::Pending`]); a
//! retry answers `duplicate`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use tokio::sync::oneshot;

use super::log::operator_of_ledger;
use super::wire::{Answer, Entry};
use crate::pipeline::IngestError;

/// The requests this node waits on, by their `reply`.
#[derive(Default)]
pub struct Waiters {
    node: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

/// One request's wait; its place is freed when it is dropped (answered or given up).
pub struct Waiting {
    waiters: Arc<Waiters>,
    pub reply: String,
    answer: Option<oneshot::Receiver<Answer>>,
}

impl Waiters {
    pub fn new(node: &str) -> Arc<Self> {
        Arc::new(Self { node: node.to_owned(), ..Default::default() })
    }

    /// A new wait, named uniquely among every node's.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        let reply = format!("{}.{}.{}", self.node, std::process::id(), self.next.fetch_add(1, Ordering::Relaxed));
        let (send, answer) = oneshot::channel();
        self.waiting.lock().expect("waiters lock").insert(reply.clone(), send);
        Waiting { waiters: self.clone(), reply, answer: Some(answer) }
    }

    fn answer(&self, reply: &str, answer: Answer) {
        if let Some(waiter) = self.waiting.lock().expect("waiters lock").remove(reply) {
            let _ = waiter.send(answer);
        }
    }

    /// Reads every ledger entry written from now on, answers the requests waiting here, and
    /// tells `moved` which operator's ledger moved (its view follows, [`super::view`]).
    pub async fn follow(self: Arc<Self>, client: async_nats::Client, moved: impl Fn(&str)) -> anyhow::Result<()> {
        let mut entries = client.subscribe("ch.ledger.>").await?;
        while let Some(message) = entries.next().await {
            let Some(operator) = operator_of_ledger(&message.subject) else { continue };
            moved(operator);
            match serde_json::from_slice::<Entry>(&message.payload) {
                Ok(Entry::Committed { requests, .. }) => {
                    for request in requests {
                        self.answer(&request.reply, request.answer);
                    }
                }
                Ok(Entry::Takeover { .. }) => {}
                Err(error) => tracing::warn!(%operator, %error, "a ledger entry that does not parse"),
            }
        }
        anyhow::bail!("the subscription to the ledger ended")
    }
}

impl Waiting {
    /// The owner's answer, or [`IngestError::Pending`] past `deadline`.
    pub async fn answered(
        mut self,
        deadline: std::time::Duration,
        operator: &str,
        events: Vec<String>,
    ) -> Result<Answer, IngestError> {
        let answer = self.answer.take().expect("answered once");
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(IngestError::Pending { operator: operator.to_owned(), events }),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.waiting.lock().expect("waiters lock").remove(&self.reply);
    }
}
