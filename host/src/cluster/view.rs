//! Every node's view of an operator follows the operator's ledger, not only its owner's.
//!
//! Why: a node's sled is a view of the ledger. The owner's is current (it commits, then writes
//! the entry); the others' used to stay where they were until they took the operator. Now each
//! node applies every ledger entry of an operator it does not own, in ledger order, soon after
//! it is written: the events a request committed and the commands (a close, an activation, a
//! settings change) at the same place among them. So a month closed through any node is closed
//! in every view with the same settlements, `verify` on any node checks what that node holds,
//! and a node that takes an operator over has little to catch up.
//!
//! Applying an entry sequences its committed requests again through this node's pipeline, with
//! their original receipt time: plugins are deterministic, so the view commits what the ledger
//! says; events it holds already are `duplicate`s. A request the ledger refused is not run.
//! One applier per operator at a time (the follower, or the owner catching up at its takeover),
//! by the view's lock; the position applied is kept in `<data>/cluster/<operator>.position`.
//! Each request applied is checked against the owner's answer in the entry: a view that would
//! pay otherwise is reported, never silent ([`Cluster::check_paid_alike`]).
//!
//! The follower is woken by the answers' subscription ([`super::answer`]), which sees every
//! entry written, possibly before the stream has stored it: so after each wake-up the follower
//! looks again half a second later, until a look finds nothing new.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use super::Cluster;
use super::log::{Ordered, ledger_subject, read_after};
use super::wire::{Answer, Entry, Request};
use crate::metrics::OperatorLabels;

/// How long applying the ledger waits for the stream's consumer to be made, and then for each
/// next entry, before it gives up (and is tried again).
const ENTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How soon a view looks at the ledger again after a wake-up or a failure.
const LOOK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// One operator's view on this node.
#[derive(Default)]
pub(super) struct View {
    /// Held while entries are applied to it.
    pub lock: tokio::sync::Mutex<()>,
    /// Rung when the operator's ledger has a new entry.
    moved: Notify,
}

impl Cluster {
    /// The operator's view, its follower started on first use.
    pub(super) fn view(self: &Arc<Self>, operator: &str) -> Arc<View> {
        let mut views = self.views.lock().expect("views lock");
        if let Some(view) = views.get(operator) {
            return view.clone();
        }
        let view = Arc::new(View::default());
        views.insert(operator.to_owned(), view.clone());
        tokio::spawn(self.clone().follow(operator.to_owned(), view.clone()));
        view
    }

    /// Applies the operator's ledger to this node's view up to its last entry now, so that a
    /// request checking what the view holds sees everything the ledger had when it arrived (an
    /// import job started through another node, say). Nothing to do where this node owns the
    /// operator: its view is what the ledger is written from.
    pub async fn apply_ledger_now(self: &Arc<Self>, operator: &str) -> anyhow::Result<()> {
        let view = self.view(operator);
        let _applying = view.lock.lock().await;
        if self.owned.lock().expect("owned lock").contains_key(operator) {
            return Ok(());
        }
        let last = match self.log.ledger.get_last_raw_message_by_subject(&ledger_subject(operator)).await {
            Ok(message) => message.sequence,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        self.apply_ledger(operator, last).await?;
        Ok(())
    }

    /// The operator's ledger has a new entry.
    pub(super) fn ledger_moved(self: &Arc<Self>, operator: &str) {
        self.view(operator).moved.notify_one();
    }

    /// Applies the operator's new ledger entries to this view while another node owns it.
    ///
    /// After each wake-up it looks again [`LOOK_AGAIN_AFTER`] later, until a look finds nothing
    /// new: the subscription that wakes it sees an entry as it is published, which can be
    /// before the stream has stored it, so the first look may not find it yet; and after the
    /// last entry of a burst no next entry may come to wake it. Applying that fails (the
    /// stream's leader is being re-elected, say) is looked at again the same way.
    async fn follow(self: Arc<Self>, operator: String, view: Arc<View>) {
        let mut look_again = false;
        loop {
            let woken = if look_again {
                tokio::time::timeout(LOOK_AGAIN_AFTER, view.moved.notified()).await.is_ok()
            } else {
                view.moved.notified().await;
                true
            };
            if *self.stopping.borrow() {
                return;
            }
            let _applying = view.lock.lock().await;
            if self.owned.lock().expect("owned lock").contains_key(&operator) {
                look_again = false;
                continue;
            }
            // An operator not set up on this node (configuration is not replicated yet) has no
            // view to apply to: its position stays, and it is applied once the operator exists.
            if !matches!(self.pipeline.store().operator(&operator), Ok(Some(_))) {
                look_again = false;
                continue;
            }
            let last = match self.log.ledger.get_last_raw_message_by_subject(&ledger_subject(&operator)).await {
                Ok(message) => message.sequence,
                Err(error) => {
                    tracing::warn!(%operator, %error, "could not read the ledger's last entry; looking again");
                    look_again = true;
                    continue;
                }
            };
            look_again = match self.apply_ledger(&operator, last).await {
                Ok(0) => woken,
                Ok(requests) => {
                    tracing::debug!(%operator, requests, last, "the view followed the ledger");
                    true
                }
                Err(error) => {
                    tracing::warn!(%operator, %error, "the view could not follow the ledger; looking again");
                    true
                }
            };
        }
    }

    /// Applies the operator's ledger entries after this view's position, up to `last`
    /// included, in order; returns how many requests it sequenced.
    pub(super) async fn apply_ledger(&self, operator: &str, last: u64) -> anyhow::Result<usize> {
        let applied = self.position(operator);
        if applied >= last {
            return Ok(0);
        }
        // Bounded, as each entry's wait below: while a NATS server is replaced the consumer can
        // take the JetStream context's 10 s to make, or wait without end, and this runs under
        // the view's lock, which a node taking the operator over needs.
        let mut entries =
            tokio::time::timeout(ENTRY_WAIT, read_after(&self.log.ledger, ledger_subject(operator), applied))
                .await
                .map_err(|_| anyhow::anyhow!("the ledger stream did not answer for {} s", ENTRY_WAIT.as_secs()))??;
        let mut requests = 0;
        let next = async |entries: &mut Ordered| {
            tokio::time::timeout(ENTRY_WAIT, entries.next())
                .await
                .map_err(|_| anyhow::anyhow!("the ledger stream delivered no entry for {} s", ENTRY_WAIT.as_secs()))
        };
        while let Some(message) = next(&mut entries).await? {
            let message = message?;
            let sequence = message.info().map_err(|error| anyhow::anyhow!("{error}"))?.stream_sequence;
            if sequence > last {
                break;
            }
            if let Entry::Committed { requests: committed, .. } = serde_json::from_slice(&message.payload)
                .map_err(|error| anyhow::anyhow!("ledger entry {sequence}: {error}"))?
            {
                let mut answered = HashMap::new();
                let applying: Vec<_> = committed
                    .into_iter()
                    .filter(|request| request.answer.committed())
                    .map(|request| {
                        answered.insert(request.sequence, request.answer);
                        (
                            request.sequence,
                            Request {
                                events: request.events,
                                received_at: request.received_at,
                                reply: request.reply,
                                command: request.command,
                            },
                        )
                    })
                    .collect();
                requests += applying.len();
                // A request the ledger committed that this view refused (a full disk, say) is
                // not passed over: the position stays before its entry, which is applied again
                // (what it committed already is a `duplicate`).
                for (request, answer) in self.sequence(operator, applying).await {
                    if !answer.committed() {
                        anyhow::bail!("ledger entry {sequence}: request {request} was refused on replay: {answer:?}");
                    }
                    self.check_paid_alike(operator, sequence, request, &answer, answered.get(&request));
                }
            }
            self.set_position(operator, sequence);
            if sequence == last {
                break;
            }
        }
        Ok(requests)
    }

    /// Reports a request this view applied paying otherwise than the owner did. Plugins are
    /// deterministic and every node runs the same components, so this is never expected: it
    /// would mean the nodes' engines differ, or a view missed something the owner had, and an
    /// affiliate would be paid differently depending on which node answers. It is not
    /// corrected here (which view is right is for `verify` on each node to say): it is logged
    /// as an error and counted in `view_divergences`, for an alert.
    fn check_paid_alike(&self, operator: &str, entry: u64, request: u64, answer: &Answer, ledger: Option<&Answer>) {
        let Some(difference) = ledger.and_then(|ledger| answer.pays_otherwise_than(ledger)) else { return };
        tracing::error!(node = %self.node, %operator, entry, request, %difference, "this node's view pays otherwise than the ledger");
        let labels = OperatorLabels { operator: operator.to_owned() };
        self.pipeline.metrics().view_divergences.get_or_create(&labels).inc();
    }

    fn position_file(&self, operator: &str) -> PathBuf {
        self.data.join("cluster").join(format!("{operator}.position"))
    }

    /// The last ledger sequence this node's view applied for `operator` (0: none).
    pub(super) fn position(&self, operator: &str) -> u64 {
        std::fs::read_to_string(self.position_file(operator))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Notes how far the view got. Not synced: a position lost in a crash only makes the next
    /// catch-up start earlier, and what it applies again is a `duplicate`.
    pub(super) fn set_position(&self, operator: &str, sequence: u64) {
        let file = self.position_file(operator);
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, sequence.to_string()));
        if let Err(error) = written {
            tracing::warn!(%operator, %error, "could not note the view's ledger position");
        }
    }
}
