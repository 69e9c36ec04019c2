//! A closed month's statements as its close computed them, kept so that one affiliate's answers
//! from storage (issue 15): the statement without its lines under (operator, period,
//! affiliate), and its lines apart, [`LINES_PER_CHUNK`] to a key, so that a page of a statement
//! with a hundred thousand lines reads one or two keys, not all of them.
//!
//! A statement stored before lines were kept apart has them inline and no `line_count`; it
//! still reads (the caller pages it in memory).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError, decode, get_json, keys, to_json};

/// Lines per key: a page of the API's default size (1,000 lines) reads five keys.
pub const LINES_PER_CHUNK: u64 = 200;

/// The key of chunk `chunk` of a statement's lines: the statement's key, then the chunk's
/// number big-endian, so a statement's chunks sort in order.
fn chunk_key(statement: &[u8], chunk: u64) -> Vec<u8> {
    let mut key = statement.to_vec();
    key.push(keys::SEPARATOR);
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn statement_key(operator: &str, period: &str, affiliate: &str) -> Vec<u8> {
    keys::key(operator, &[period.as_bytes(), affiliate.as_bytes()])
}

impl Store {
    /// The statement of `affiliate` for `period` as the close computed it, without the lines
    /// kept apart, if it was stored.
    pub fn statement<T: DeserializeOwned>(
        &self,
        operator: &str,
        period: &str,
        affiliate: &str,
    ) -> Result<Option<T>, StoreError> {
        get_json(&self.statements, "statements", &statement_key(operator, period, affiliate))
    }

    /// Stores a statement as its close computed it (`header`, whose own lines are left empty,
    /// and `lines`), unless one is stored already: the first is kept, so a statement can later
    /// be recomputed and compared with it. The lines are written before the header, so a
    /// header read means its lines are all there; lines left by a store that stopped half-way
    /// are replaced.
    pub fn put_statement<T: Serialize, L: Serialize>(
        &self,
        operator: &str,
        period: &str,
        affiliate: &str,
        header: &T,
        lines: &[L],
    ) -> Result<(), StoreError> {
        let key = statement_key(operator, period, affiliate);
        if self.statements.contains_key(&key)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut chunks = key.clone();
        chunks.push(keys::SEPARATOR);
        for stale in self.statement_lines.scan_prefix(chunks) {
            batch.remove(stale?.0);
        }
        for (chunk, lines) in lines.chunks(LINES_PER_CHUNK as usize).enumerate() {
            batch.insert(chunk_key(&key, chunk as u64), to_json(&lines));
        }
        self.statement_lines.apply_batch(batch)?;
        let _ = self.statements.compare_and_swap(key, None::<&[u8]>, Some(to_json(header)))?;
        Ok(())
    }

    /// Up to `limit` of a stored statement's lines kept apart, from line `from` (0-based).
    pub fn statement_lines<L: DeserializeOwned>(
        &self,
        operator: &str,
        period: &str,
        affiliate: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<L>, StoreError> {
        let key = statement_key(operator, period, affiliate);
        let mut lines = Vec::new();
        if limit == 0 {
            return Ok(lines);
        }
        let first = from / LINES_PER_CHUNK;
        let mut skip = (from % LINES_PER_CHUNK) as usize;
        for entry in self.statement_lines.range(chunk_key(&key, first)..=chunk_key(&key, u64::MAX)) {
            let chunk: Vec<L> = decode("statement_lines", &entry?.1)?;
            lines.extend(chunk.into_iter().skip(skip).take(limit as usize - lines.len()));
            skip = 0;
            if lines.len() as u64 >= limit {
                break;
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: u64, to: u64) -> Vec<u64> {
        (from..to).collect()
    }

    #[test]
    fn a_page_of_lines_reads_across_chunks_and_the_first_statement_stored_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let count = 2 * LINES_PER_CHUNK + 50;
        store.put_statement("op", "2025-01", "aff", &"first", &lines(0, count)).unwrap();

        let page = |from, limit| store.statement_lines::<u64>("op", "2025-01", "aff", from, limit).unwrap();
        assert_eq!(page(0, count + 10), lines(0, count), "all of them, in order");
        let across = LINES_PER_CHUNK - 5;
        assert_eq!(page(across, 10), lines(across, across + 10), "across a chunk's end");
        assert_eq!(page(count - 3, 100), lines(count - 3, count), "the last page is short");
        assert_eq!(page(count, 10), Vec::<u64>::new(), "past the end");
        assert_eq!(page(7, 0), Vec::<u64>::new(), "none asked for");

        // A second store of the same statement changes nothing, lines included.
        store.put_statement("op", "2025-01", "aff", &"second", &lines(100, 103)).unwrap();
        assert_eq!(store.statement::<String>("op", "2025-01", "aff").unwrap().as_deref(), Some("first"));
        assert_eq!(page(0, 3), lines(0, 3));
        // Another affiliate's and another month's statements are their own.
        assert_eq!(store.statement_lines::<u64>("op", "2025-01", "af", 0, 10).unwrap(), Vec::<u64>::new());
        assert_eq!(store.statement_lines::<u64>("op", "2025-02", "aff", 0, 10).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn lines_left_by_a_store_that_stopped_before_its_header_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // What a crash between the lines and the header leaves: lines, no header.
        store.put_statement("op", "2025-01", "aff", &"whole", &lines(0, 3 * LINES_PER_CHUNK)).unwrap();
        store.statements.remove(statement_key("op", "2025-01", "aff")).unwrap();

        store.put_statement("op", "2025-01", "aff", &"again", &lines(0, 5)).unwrap();
        assert_eq!(store.statement_lines::<u64>("op", "2025-01", "aff", 0, 1000).unwrap(), lines(0, 5));
    }
}
