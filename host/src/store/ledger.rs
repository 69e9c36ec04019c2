//! Reads of the ledger: one record per event under (operator, sequence number), holding the
//! event, the deal versions its chain was evaluated with and its commissions (see [`super::commit`]).
//! An event is found by id through the `events` index, a commission by its position (the
//! sequence number and index its id encodes), an affiliate's commissions through
//! `commissions_by_affiliate`; everything else is a scan in ledger order.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::deals::resolve_links;
use super::records::{CommissionRecord, EventRecord, StoredLink};
use super::{LedgerPosition, Store, StoreError, decode, keys, parse_commission_id};

/// An event's record as the ledger keeps it.
#[derive(Serialize, Deserialize)]
pub(super) struct LedgerEntry {
    pub record: EventRecord<StoredLink>,
    /// Its commissions, in order: the commission `cm_{seq}_{i}` is the `i`th.
    pub commissions: Vec<CommissionRecord>,
}

/// Just the event's id of a [`LedgerEntry`], for walks of the order that need no more.
#[derive(Deserialize)]
struct EntryId {
    record: RecordId,
}

#[derive(Deserialize)]
struct RecordId {
    event: EventId,
}

#[derive(Deserialize)]
struct EventId {
    id: String,
}

/// A page looks at a bounded number of entries, so a filter that matches little cannot make
/// one request scan the whole ledger.
const SCAN_LIMIT: usize = 10_000;

/// The sequence number at the end of a ledger key.
fn seq_of(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|start| key[start..].try_into().ok()).map(u64::from_be_bytes).unwrap_or_default()
}

impl Store {
    /// The record stored under `seq`.
    pub(super) fn ledger_entry(&self, operator: &str, seq: u64) -> Result<Option<LedgerEntry>, StoreError> {
        self.ledger.get(keys::sequence(operator, seq))?.map(|bytes| decode("ledger", &bytes)).transpose()
    }

    /// The sequence number of the event `id`.
    fn event_seq(&self, operator: &str, id: &str) -> Result<Option<u64>, StoreError> {
        let Some(seq) = self.events.get(keys::text(operator, id))? else { return Ok(None) };
        let seq: [u8; 8] = seq.as_ref().try_into().map_err(|_| StoreError::Decode {
            tree: "events",
            detail: format!("the sequence number of {id} is not 8 bytes"),
        })?;
        Ok(Some(u64::from_be_bytes(seq)))
    }

    /// An event, with the deal terms its chain was evaluated with.
    pub fn event(&self, operator: &str, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let Some(seq) = self.event_seq(operator, id)? else { return Ok(None) };
        let entry = self.ledger_entry(operator, seq)?.ok_or_else(|| StoreError::Decode {
            tree: "ledger",
            detail: format!("the record of {id} (number {seq}) is missing"),
        })?;
        self.resolved(operator, entry.record).map(Some)
    }

    /// A stored record with its deal versions.
    pub(super) fn resolved(&self, operator: &str, record: EventRecord<StoredLink>) -> Result<EventRecord, StoreError> {
        resolve_links(
            operator,
            record,
            |key| Ok(self.deals.get(key)?),
            |detail| StoreError::Decode { tree: "deals", detail },
        )
    }

    /// The operator's records with a sequence number above `after`, in ledger order.
    pub(super) fn entries_after(
        &self,
        operator: &str,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), StoreError>> + '_ {
        let prefix = keys::operator_prefix(operator);
        self.ledger
            .range(keys::sequence(operator, after.saturating_add(1))..)
            .take_while(move |entry| !matches!(entry, Ok((key, _)) if !key.starts_with(&prefix)))
            .map(|entry| {
                let (key, value) = entry?;
                Ok((seq_of(&key), value))
            })
    }

    /// The ledger entries after `after`, in order: (sequence number, event id).
    pub fn events_after(
        &self,
        operator: &str,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, String), StoreError>> + '_ {
        self.entries_after(operator, after).map(|entry| {
            let (seq, value) = entry?;
            let entry: EntryId = decode("ledger", &value)?;
            Ok((seq, entry.record.event.id))
        })
    }

    /// The ids of the operator's events in ledger order (the order they took effect).
    pub fn event_ids_in_order(&self, operator: &str) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        self.events_after(operator, 0).map(|entry| Ok(entry?.1))
    }

    /// Every event of `operator`, in ledger order, with its chain as stored.
    pub fn all_events(&self, operator: &str) -> impl Iterator<Item = Result<EventRecord<StoredLink>, StoreError>> + '_ {
        self.entries_after(operator, 0).map(|entry| Ok(decode::<LedgerEntry>("ledger", &entry?.1)?.record))
    }

    /// Every commission of `operator`, in ledger order.
    pub fn all_commissions(&self, operator: &str) -> impl Iterator<Item = Result<CommissionRecord, StoreError>> + '_ {
        self.entries_after(operator, 0).flat_map(|entry| {
            match entry.and_then(|(_, value)| decode::<LedgerEntry>("ledger", &value)) {
                Ok(entry) => entry.commissions.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(error) => vec![Err(error)],
            }
        })
    }

    /// The operator's event that occurred first, the host's own entries (ids starting with
    /// `reserved`) aside: (when it occurred, its id). Reads every event: asked once, at the
    /// operator's first close.
    pub fn earliest_event(&self, operator: &str, reserved: &str) -> Result<Option<(i64, String)>, StoreError> {
        let mut earliest: Option<(i64, String)> = None;
        for record in self.all_events(operator) {
            let event = record?.event;
            if !event.id.starts_with(reserved) && earliest.as_ref().is_none_or(|(at, _)| event.occurred_at < *at) {
                earliest = Some((event.occurred_at, event.id));
            }
        }
        Ok(earliest)
    }

    /// One commission, by id.
    pub fn commission(&self, operator: &str, id: &str) -> Result<Option<CommissionRecord>, StoreError> {
        Ok(self.commission_records(operator, &[id.to_owned()])?.pop())
    }

    /// The commissions of `ids` that exist, in the order given.
    pub fn commission_records(&self, operator: &str, ids: &[String]) -> Result<Vec<CommissionRecord>, StoreError> {
        let mut read = Positions::new(self, operator);
        let mut found = Vec::new();
        for position in ids.iter().filter_map(|id| parse_commission_id(id)) {
            found.extend(read.commission(position)?);
        }
        Ok(found)
    }

    /// Up to `limit` commissions of `operator` after `after`, in ledger order, that pass
    /// `keep`; with the position to continue from when there may be more.
    pub fn commissions(
        &self,
        operator: &str,
        affiliate: Option<&str>,
        after: Option<LedgerPosition>,
        limit: usize,
        keep: impl Fn(&CommissionRecord) -> bool,
    ) -> Result<(Vec<CommissionRecord>, Option<LedgerPosition>), StoreError> {
        let mut found = Vec::new();
        let mut last = None;
        let mut scanned = 0;
        let mut take = |position: LedgerPosition, commission: CommissionRecord| {
            if found.len() == limit || scanned == SCAN_LIMIT {
                return false;
            }
            scanned += 1;
            last = Some(position);
            if keep(&commission) {
                found.push(commission);
            }
            true
        };
        match affiliate {
            Some(affiliate) => {
                let prefix = keys::key(operator, &[affiliate.as_bytes(), b""]);
                let lower = match after {
                    Some((seq, index)) => {
                        Bound::Excluded(keys::commission_by_affiliate(operator, affiliate, seq, index))
                    }
                    None => Bound::Included(prefix.clone()),
                };
                let mut read = Positions::new(self, operator);
                for entry in self.commissions_by_affiliate.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
                    let (key, position) = entry?;
                    if !key.starts_with(&prefix) {
                        break;
                    }
                    let Some(position) = keys::commission_position(&position) else { continue };
                    let Some(commission) = read.commission(position)? else { continue };
                    if !take(position, commission) {
                        return Ok((found, last));
                    }
                }
            }
            None => {
                // The event of `after` may have commissions after it: start at that event.
                let from = after.map_or(0, |(seq, _)| seq.saturating_sub(1));
                let mut previous = None;
                for (records, entry) in self.entries_after(operator, from).enumerate() {
                    if records == SCAN_LIMIT {
                        // Events without commissions count too: the next page starts after the
                        // last event read.
                        return Ok((found, previous.map(|seq| (seq, u16::MAX))));
                    }
                    let (seq, value) = entry?;
                    let entry: LedgerEntry = decode("ledger", &value)?;
                    for (index, commission) in entry.commissions.into_iter().enumerate() {
                        let position = (seq, index as u16);
                        if after.is_some_and(|after| position <= after) {
                            continue;
                        }
                        if !take(position, commission) {
                            return Ok((found, last));
                        }
                    }
                    previous = Some(seq);
                }
            }
        }
        Ok((found, None))
    }
}

/// Reads commissions by position, decoding each event's record once for its commissions in a row.
struct Positions<'a> {
    store: &'a Store,
    operator: &'a str,
    current: Option<(u64, Vec<CommissionRecord>)>,
}

impl<'a> Positions<'a> {
    fn new(store: &'a Store, operator: &'a str) -> Self {
        Self { store, operator, current: None }
    }

    fn commission(&mut self, (seq, index): LedgerPosition) -> Result<Option<CommissionRecord>, StoreError> {
        if self.current.as_ref().is_none_or(|(current, _)| *current != seq) {
            let commissions = self.store.ledger_entry(self.operator, seq)?.map(|entry| entry.commissions);
            self.current = Some((seq, commissions.unwrap_or_default()));
        }
        Ok(self.current.as_ref().and_then(|(_, commissions)| commissions.get(usize::from(index)).cloned()))
    }
}
