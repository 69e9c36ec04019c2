//! The plugin's key/value state, kept by the host per operator.
//!
//! Reads see what earlier events committed plus this event's own writes; writes are committed
//! with the event's commissions, or dropped with them if the evaluation fails. Keys are free
//! text; [`customer_key`] and [`affiliate_key`] keep the usual ones consistent.
//!
//! Off wasm (in a plugin's native `cargo test`) the state is an in-memory map per thread; see
//! [`crate::testing`].

use rust_decimal::Decimal;

use crate::properties::parse_decimal;
use crate::{Commission, CommissionBuilder, Result};

/// `customer:{customer}:{name}`: state about one customer.
pub fn customer_key(customer: &str, name: &str) -> String {
    format!("customer:{customer}:{name}")
}

/// `affiliate:{affiliate}:{name}`: state about one affiliate (tiers, periods).
pub fn affiliate_key(affiliate: &str, name: &str) -> String {
    format!("affiliate:{affiliate}:{name}")
}

/// The value under `key`: this event's own write if it made one, else what earlier events
/// committed.
pub fn get(key: &str) -> Option<Vec<u8>> {
    backend::get(key)
}

/// Sets `key`, committed with the event's commissions.
pub fn set(key: &str, value: &[u8]) {
    backend::set(key, value)
}

/// Removes `key`, committed with the event's commissions.
pub fn delete(key: &str) {
    backend::delete(key)
}

/// A decimal stored under `key`; zero when absent.
pub fn decimal(key: &str) -> Result<Decimal> {
    match get(key) {
        None => Ok(Decimal::ZERO),
        Some(bytes) => parse_decimal(key, &String::from_utf8_lossy(&bytes)),
    }
}

/// Stores a decimal under `key`, as text.
pub fn set_decimal(key: &str, value: Decimal) {
    set(key, value.to_string().as_bytes())
}

/// Adds `delta` to the decimal under `key` and returns the new total.
pub fn add_decimal(key: &str, delta: Decimal) -> Result<Decimal> {
    let total = decimal(key)?
        .checked_add(delta)
        .ok_or_else(|| crate::Error::new(format!("{key}: total overflows a decimal")))?;
    set_decimal(key, total);
    Ok(total)
}

/// Whether the flag `key` is set.
pub fn flag(key: &str) -> bool {
    get(key).is_some()
}

/// Sets the flag `key` and says whether this call set it: `true` the first time only.
/// The way to pay something once (`claim("customer:c1:ftd-paid")`).
pub fn claim(key: &str) -> bool {
    if flag(key) {
        return false;
    }
    set(key, b"1");
    true
}

/// `paid:{event_id}`: what [`remember_paid`] keeps.
fn paid_key(event_id: &str) -> String {
    format!("paid:{event_id}")
}

/// Remembers `commissions` as paid by the event `event_id`, so that a later event (a
/// chargeback, a cancelled trade, a refund) can claw them back with [`reverse_paid`].
/// Remember only what a reversal of that event should claw back.
pub fn remember_paid(event_id: &str, commissions: &[Commission]) {
    let lines: Vec<String> = commissions
        .iter()
        .map(|paid| format!("{}\t{}\t{}\t{}", paid.affiliate, paid.rule, paid.amount, paid.currency))
        .collect();
    set(&paid_key(event_id), lines.join("\n").as_bytes());
}

/// Claws back, once, what [`remember_paid`] kept for `event_id`: one negative commission per
/// remembered one, ruled `{rule}-reversal`, referencing the original (the event and its rule),
/// explained by `because(original)`. Nothing when nothing was remembered or it was clawed back
/// already.
pub fn reverse_paid(event_id: &str, because: impl Fn(&Commission) -> String) -> Result<Vec<Commission>> {
    let key = paid_key(event_id);
    let Some(remembered) = get(&key) else { return Ok(Vec::new()) };
    delete(&key);
    String::from_utf8_lossy(&remembered)
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let mut field = |name: &str| {
                fields.next().ok_or_else(|| crate::Error::new(format!("{key}: a remembered commission without {name}")))
            };
            let (affiliate, rule, amount, currency) =
                (field("affiliate")?, field("rule")?, field("amount")?, field("currency")?);
            let original =
                CommissionBuilder::new(affiliate, parse_decimal(&key, amount)?, currency).rule(rule).because("");
            let explanation = because(&original);
            Ok(CommissionBuilder::new(affiliate, -original.amount, currency)
                .rule(&format!("{rule}-reversal"))
                .reversing(event_id, rule)
                .because(explanation))
        })
        .collect()
}

#[cfg(target_arch = "wasm32")]
mod backend {
    use crate::__bindings::commission::plugin::state;

    pub fn get(key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub fn set(key: &str, value: &[u8]) {
        state::set(key, value)
    }
    pub fn delete(key: &str) {
        state::delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod backend {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        pub(crate) static STATE: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn get(key: &str) -> Option<Vec<u8>> {
        STATE.with_borrow(|state| state.get(key).cloned())
    }
    pub fn set(key: &str, value: &[u8]) {
        STATE.with_borrow_mut(|state| state.insert(key.to_owned(), value.to_vec()));
    }
    pub fn delete(key: &str) {
        STATE.with_borrow_mut(|state| state.remove(key));
    }

    /// This thread's whole state, to restore after an evaluation the host would not commit.
    pub(crate) fn snapshot() -> BTreeMap<String, Vec<u8>> {
        STATE.with_borrow(BTreeMap::clone)
    }

    pub(crate) fn restore(state: BTreeMap<String, Vec<u8>>) {
        STATE.set(state);
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::{remember_paid, reverse_paid};
    use crate::{CommissionRef, testing};

    #[test]
    fn what_an_event_paid_is_reversed_once_with_references() {
        testing::reset();
        let context =
            testing::context("acme", "EUR", [testing::affiliate("ib", &[]), testing::affiliate("master", &[])]);
        let paid = [
            context.pay(&context.referral_chain[0], Decimal::new(1050, 2)).rule("ib-lot").because("x"),
            context.pay(&context.referral_chain[1], Decimal::ONE).rule("ib-override-l1").because("y"),
        ];
        remember_paid("t1", &paid);
        let reversed = reverse_paid("t1", |original| format!("cancel: {} back", original.amount)).unwrap();
        assert_eq!(testing::paid(&reversed), ["ib -10.50 ib-lot-reversal", "master -1 ib-override-l1-reversal"]);
        assert_eq!(reversed[0].reverses, Some(CommissionRef { event_id: "t1".into(), rule: "ib-lot".into() }));
        assert_eq!((reversed[0].currency.as_str(), reversed[0].explanation.as_str()), ("EUR", "cancel: 10.50 back"));
        assert_eq!(reverse_paid("t1", |_| String::new()).unwrap(), [], "once");
    }
}
