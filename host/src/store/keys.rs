//! Key layout. Every key starts with the operator id and a NUL, so one operator's data is one
//! contiguous range, and ids (validated to hold no NUL) cannot run into each other.

pub const SEPARATOR: u8 = 0;

pub fn key(operator: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(operator.len() + 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    key.extend_from_slice(operator.as_bytes());
    for part in parts {
        key.push(SEPARATOR);
        key.extend_from_slice(part);
    }
    key
}

/// The prefix of every key of `operator` in a tree.
pub fn operator_prefix(operator: &str) -> Vec<u8> {
    let mut prefix = operator.as_bytes().to_vec();
    prefix.push(SEPARATOR);
    prefix
}

pub fn text(operator: &str, id: &str) -> Vec<u8> {
    key(operator, &[id.as_bytes()])
}

/// Commission keys: big-endian, so sled's byte order is ledger order.
pub fn commission(operator: &str, seq: u64, index: u16) -> Vec<u8> {
    let mut suffix = [0u8; 10];
    suffix[..8].copy_from_slice(&seq.to_be_bytes());
    suffix[8..].copy_from_slice(&index.to_be_bytes());
    key(operator, &[&suffix])
}

pub fn commission_by_affiliate(operator: &str, affiliate: &str, seq: u64, index: u16) -> Vec<u8> {
    let mut suffix = [0u8; 10];
    suffix[..8].copy_from_slice(&seq.to_be_bytes());
    suffix[8..].copy_from_slice(&index.to_be_bytes());
    key(operator, &[affiliate.as_bytes(), &suffix])
}

pub fn sequence(operator: &str, seq: u64) -> Vec<u8> {
    key(operator, &[&seq.to_be_bytes()])
}

pub fn plugin(operator: &str, version: u32) -> Vec<u8> {
    key(operator, &[&version.to_be_bytes()])
}

/// The (seq, index) at the end of a commission key, for cursors.
pub fn commission_position(key: &[u8]) -> Option<(u64, u16)> {
    let tail = key.len().checked_sub(10).map(|start| &key[start..])?;
    Some((u64::from_be_bytes(tail[..8].try_into().ok()?), u16::from_be_bytes(tail[8..].try_into().ok()?)))
}
