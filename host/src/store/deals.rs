//! Deal versions. A deal is up to 16 KiB and a referral chain 16 links deep: kept whole in each
//! event, the deals made one small event cost a quarter of a megabyte, and let one operator fill
//! the disk every operator shares. Each deal an event was evaluated with is kept once per
//! operator instead, in the `deals` tree under the sha256 of its JSON (written by the event's
//! commit if it is new), and the event keeps that hash. Reading an event resolves the hashes, so
//! everything that reads events (the event view, replays, statements, restatements) sees the
//! deals as before.

use sha2::Digest as _;

use super::keys;
use super::records::{ChainLink, EventRecord, Properties, StoredLink};

/// The sha256 (hex) of a deal's JSON, and the JSON: its key and value in the `deals` tree.
/// A `BTreeMap` serializes in key order, so equal deals have equal hashes.
pub(super) fn deal_version(deal: &Properties) -> (String, Vec<u8>) {
    let json = super::to_json(deal);
    (hex::encode(sha2::Sha256::digest(&json)), json)
}

/// Turns a stored record's deal references back into the deals, each read by `read` from the
/// `deals` tree; a record written with its deals inline (before deal versions) is read as it is.
pub(super) fn resolve_links<E>(
    operator: &str,
    record: EventRecord<StoredLink>,
    read: impl Fn(&[u8]) -> Result<Option<sled::IVec>, E>,
    unreadable: impl Fn(String) -> E,
) -> Result<EventRecord, E> {
    record.map_links(|link| match link {
        StoredLink::Inline { affiliate, deal } => Ok(ChainLink { affiliate, deal }),
        StoredLink::Reference { affiliate, deal_sha256 } => {
            let bytes = read(&keys::text(operator, &deal_sha256))?
                .ok_or_else(|| unreadable(format!("deal version {deal_sha256} of {affiliate} is missing")))?;
            let deal = serde_json::from_slice(&bytes)
                .map_err(|error| unreadable(format!("deal version {deal_sha256} of {affiliate}: {error}")))?;
            Ok(ChainLink { affiliate, deal })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::ledger::LedgerEntry;
    use super::super::tests::deposit;
    use super::super::{CommitOutcome, Store};
    use super::*;
    use crate::store::records::EvaluationRecord;

    /// A chain of `levels` affiliates, each with a deal of 16 terms of 1,000 bytes.
    fn large_chain(levels: usize) -> Vec<ChainLink> {
        (0..levels)
            .map(|level| ChainLink {
                affiliate: format!("l{level:02}"),
                deal: (0..16).map(|term| (format!("term{term:02}"), format!("{level}:{term}:").repeat(200))).collect(),
            })
            .collect()
    }

    fn evaluated(chain: Vec<ChainLink>) -> EvaluationRecord {
        EvaluationRecord { plugin_version: 1, version_reason: "v1".into(), chain, logs: Vec::new(), fuel_used: 1 }
    }

    #[test]
    fn an_event_keeps_references_to_its_deals_and_old_events_keep_theirs_inline() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(directory.path()).expect("sled opens");
        let chain = large_chain(16);
        let mut first = deposit("e1", "c1", "customer:c1");
        first.record.evaluation = Some(evaluated(chain.clone()));
        let mut second = deposit("e2", "c2", "customer:c2");
        second.record.evaluation = Some(evaluated(chain.clone()));
        let outcomes = store.commit_events(&[first, second]).expect("committed");
        assert!(outcomes.iter().all(|outcome| matches!(outcome, CommitOutcome::Committed { .. })), "{outcomes:?}");

        // As stored: a few hundred bytes of references, none of the deals' text.
        let stored = store.ledger.get(keys::sequence("op", 2)).unwrap().expect("stored");
        assert!(stored.len() < 3_000, "{} bytes stored for one event", stored.len());
        assert!(!String::from_utf8_lossy(&stored).contains("0:0:0:0:"), "a deal's text is in the event");
        // Each deal version is kept once, however many events use it.
        assert_eq!(store.deals.scan_prefix(keys::operator_prefix("op")).count(), 16);
        // As read: the deals the event was evaluated with.
        let read = store.event("op", "e2").unwrap().expect("the event");
        assert_eq!(read.evaluation.expect("evaluated").chain, chain);

        // A record written before deal versions, with its deals inline (the shape `EventRecord`
        // was stored in), reads as it was written.
        let mut old = deposit("old", "c3", "customer:c3").record;
        old.seq = 3;
        old.evaluation = Some(evaluated(large_chain(2)));
        let inline = old.clone().map_links(|link| {
            Ok::<_, std::convert::Infallible>(StoredLink::Inline { affiliate: link.affiliate, deal: link.deal })
        });
        let entry = LedgerEntry { record: inline.unwrap_or_else(|never| match never {}), commissions: Vec::new() };
        store.ledger.insert(keys::sequence("op", 3), super::super::to_json(&entry)).unwrap();
        store.events.insert(keys::text("op", "old"), 3u64.to_be_bytes().as_slice()).unwrap();
        let read = store.event("op", "old").unwrap().expect("the old event");
        assert_eq!(read.evaluation, old.evaluation);
        assert_eq!(read.seq, 3);
    }
}
