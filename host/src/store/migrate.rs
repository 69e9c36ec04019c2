//! Converts a data directory of an earlier format to the current one, at start-up, once.
//!
//! Format 1 (the releases before one record per event) kept each event in `events` under its id,
//! its place in the order in `event_order` and each commission in `commissions`. Format 2 keeps
//! one record per event in `ledger` under its sequence number, with its commissions, and the
//! id's sequence number in `events` (see [`super::commit`]).
//!
//! The conversion is crash-safe by construction: it walks `event_order`, and each step is one
//! transaction that writes a batch of events' new records and index entries and removes their
//! old entries. What is left in `event_order` is exactly what is left to convert, so a directory
//! killed mid-way opens and finishes. Only once nothing is left are the stored-bytes counts
//! redone (see [`super::quota`]) and the format's number written.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::ledger::LedgerEntry;
use super::quota::{read_u64, recount};
use super::records::{EventRecord, StoredLink};
use super::{Abort, StoreError, decode_in_tx, keys, parse_commission_id, to_json};

/// The format this release writes.
pub(super) const FORMAT: u64 = 2;

/// The key, in sled's default tree, of the directory's format number; absent before format 2.
const FORMAT_KEY: &[u8] = b"ledger_format";

/// Events converted per transaction: bounded so one transaction stays small.
const BATCH: usize = 512;

/// Brings the directory to [`FORMAT`].
pub(super) fn to_current(db: &sled::Db) -> Result<(), StoreError> {
    convert(db, BATCH, None).map(|_| ())
}

/// [`to_current`], `batch` events a step; `max_steps` stops after that many, leaving the
/// directory as a crash there would (for the tests). `Ok(true)` once the directory is current.
fn convert(db: &sled::Db, batch: usize, max_steps: Option<usize>) -> Result<bool, StoreError> {
    match db.get(FORMAT_KEY)?.as_deref().map(read_u64) {
        Some(FORMAT) => return Ok(true),
        Some(newer) if newer > FORMAT => {
            return Err(StoreError::Decode {
                tree: "the data directory",
                detail: format!(
                    "it is of format {newer}, written by a newer release; this release reads up to {FORMAT}"
                ),
            });
        }
        _ => {}
    }
    let events = db.open_tree("events")?;
    let order = db.open_tree("event_order")?;
    let commissions = db.open_tree("commissions")?;
    let ledger = db.open_tree("ledger")?;
    let mut converted = 0;
    for step in 0.. {
        if max_steps.is_some_and(|max| step == max) {
            return Ok(false);
        }
        let batch: Vec<(sled::IVec, sled::IVec)> = order.iter().take(batch).collect::<Result<_, _>>()?;
        if batch.is_empty() {
            break;
        }
        let result = (&events, &order, &commissions, &ledger).transaction(|(events, order, commissions, ledger)| {
            for (seq_key, id) in &batch {
                // An order key is the operator, a NUL and 8 bytes of sequence number.
                let operator = seq_key.get(..seq_key.len().saturating_sub(9)).unwrap_or_default();
                let operator = std::str::from_utf8(operator).map_err(|_| abort("an operator id is not UTF-8"))?;
                let id = std::str::from_utf8(id).map_err(|_| abort("an event id is not UTF-8"))?;
                let event_key = keys::text(operator, id);
                let record = events
                    .get(&event_key)?
                    .ok_or_else(|| abort(&format!("event {id} of {operator} is in the order but not stored")))?;
                let record: EventRecord<StoredLink> = decode_in_tx(&record)?;
                let mut found = Vec::with_capacity(record.commission_ids.len());
                for (seq, index) in record.commission_ids.iter().filter_map(|id| parse_commission_id(id)) {
                    let key = keys::commission(operator, seq, index);
                    if let Some(commission) = commissions.get(&key)? {
                        found.push(decode_in_tx(&commission)?);
                        commissions.remove(key)?;
                    }
                }
                events.insert(event_key, record.seq.to_be_bytes().as_slice())?;
                ledger.insert(seq_key.as_ref(), to_json(&LedgerEntry { record, commissions: found }))?;
                order.remove(seq_key.as_ref())?;
            }
            Ok(())
        });
        result.map_err(|error| match error {
            TransactionError::Abort(Abort::Decode(detail)) => StoreError::Decode { tree: "events", detail },
            TransactionError::Storage(error) => StoreError::Sled(error),
        })?;
        converted += batch.len();
    }
    drop((order, ledger, events));
    let orphans = commissions.len();
    drop(commissions);
    if orphans > 0 {
        // No commission of format 1 is outside an event's list; kept, unread, if one were.
        tracing::warn!(orphans, "commissions of no event were left in the `commissions` tree");
    } else {
        db.drop_tree("commissions")?;
    }
    db.drop_tree("event_order")?;
    // The counts are of the trees as format 1 kept them: counted again, as format 2 keeps them.
    recount(db)?;
    db.insert(FORMAT_KEY, FORMAT.to_be_bytes().as_slice())?;
    db.flush()?;
    if converted > 0 {
        tracing::info!(events = converted, "migrated the ledger to format {FORMAT}: one record per event");
    }
    Ok(true)
}

fn abort(detail: &str) -> ConflictableTransactionError<Abort> {
    ConflictableTransactionError::Abort(Abort::Decode(detail.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::Store;

    /// The data directory of `tests/fixtures`, written by the release before format 2, unpacked.
    fn format_1() -> tempfile::TempDir {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/format-1.tar.xz");
        let status = std::process::Command::new("tar")
            .arg("xJf")
            .arg(fixture)
            .arg("-C")
            .arg(directory.path())
            .status()
            .expect("tar runs");
        assert!(status.success());
        directory
    }

    #[test]
    fn a_conversion_stopped_midway_opens_and_finishes() {
        let directory = format_1();
        let (events, commissions) = {
            let db = sled::open(directory.path()).unwrap();
            let counts = (db.open_tree("event_order").unwrap().len(), db.open_tree("commissions").unwrap().len());
            // Two steps of 3 events, then stopped as a crash would stop it.
            assert!(!convert(&db, 3, Some(2)).unwrap());
            assert_eq!(db.open_tree("event_order").unwrap().len(), counts.0 - 6, "6 converted, the rest not");
            assert_eq!(db.open_tree("ledger").unwrap().len(), 6);
            assert!(db.get(FORMAT_KEY).unwrap().is_none());
            db.flush().unwrap();
            counts
        };
        assert!(events > 0 && commissions > 0, "the fixture has events and commissions");

        let store = Store::open(directory.path()).expect("the half-converted directory opens");
        assert_eq!(store.db.get(FORMAT_KEY).unwrap().as_deref().map(read_u64), Some(FORMAT));
        assert!(!store.db.tree_names().iter().any(|name| name.as_ref() == b"event_order"));
        let operators = store.operators().unwrap();
        let mut found = (0, 0);
        for operator in &operators {
            for id in store.event_ids_in_order(&operator.id) {
                let record = store.event(&operator.id, &id.unwrap()).unwrap().expect("each event reads by id");
                let listed = store.commission_records(&operator.id, &record.commission_ids).unwrap();
                assert_eq!(listed.len(), record.commission_ids.len(), "{}", record.event.id);
                found.0 += 1;
                found.1 += listed.len();
            }
        }
        assert_eq!(found, (events, commissions));
    }

    #[test]
    fn a_directory_of_a_newer_format_is_refused() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        {
            let db = sled::open(directory.path()).unwrap();
            db.insert(FORMAT_KEY, (FORMAT + 1).to_be_bytes().as_slice()).unwrap();
            db.flush().unwrap();
        }
        let refused = Store::open(directory.path()).err().expect("refused");
        assert!(refused.to_string().contains("newer release"), "{refused}");
    }
}
