//! Misbehaves as the event's `attack` attribute says, so that one built plugin can exercise
//! every limit of the sandbox. With no attack it pays 1 to the referring affiliate, so a test
//! can also see it working normally.
//!
//! | attack | what it does | the limit it meets |
//! | --- | --- | --- |
//! | `loop` | spins forever | fuel |
//! | `allocate` | grows its memory without bound | the memory cap |
//! | `recurse` | recurses without bound | the wasm stack |
//! | `trap` | executes `unreachable` | a trap |
//! | `fail` | returns an error | none: a rule failure |
//! | `flood` | returns 1,000 commissions | commissions per event |
//! | `hoard` | writes 2 MiB of state | state writes per event |
//! | `chatter` | logs 10,000 lines, then pays | log lines per event (the event succeeds) |
//! | `remember` | looks for what an earlier event left in its statics, then leaves its own | a fresh memory per event |
//! | `contend` | works `spin` rounds, then counts the event in one key every customer shares, and pays 1 | the commit's check of state shared across customers |
//! | `clawback-twice` | reverses the `flat` commission of the event named by `of` twice in one result | each commission is clawed back once |
//! | `pay` | pays `amount` in `currency` (the operator's without it) under the rule `flat`, exactly as given | amounts held to the currency's minor units |
//! | `clawback` | reverses the `flat` commission of the event named by `of` with `amount` in `currency` (the operator's without it) | a reversal's amount and currency |

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use commission_plugin_sdk::prelude::*;

pub struct Hostile;

impl Plugin for Hostile {
    fn evaluate(event: &Event, context: &Context) -> Result<Vec<Commission>> {
        match event.attributes.get("attack") {
            Some("loop") => spin(),
            Some("allocate") => allocate(),
            Some("recurse") => Err(Error::new(format!("depth {}", recurse(1)))),
            Some("trap") => std::process::abort(),
            Some("fail") => Err(Error::new("rule failed on purpose")),
            Some("flood") => Ok((0..1000)
                .map(|n| context.pay(context.affiliate(), Decimal::ONE).rule("flood").because(format!("flood {n}")))
                .collect()),
            Some("hoard") => {
                let chunk = vec![7u8; 64 * 1024];
                for n in 0..32 {
                    state::set(&format!("hoard:{n}"), &chunk);
                }
                Ok(vec![])
            }
            Some("chatter") => {
                for n in 0..10_000 {
                    info!("chatter line {n}");
                }
                Ok(vec![context.pay(context.affiliate(), Decimal::ONE).rule("flat").because("flat 1 after chatter")])
            }
            Some("remember") => remember(context),
            Some("contend") => {
                let rounds: u64 = event.attributes.get("spin").and_then(|rounds| rounds.parse().ok()).unwrap_or(0);
                let mut counter = 0u64;
                for round in 0..rounds {
                    counter = std::hint::black_box(counter.wrapping_add(round));
                }
                state::add_decimal("contended", Decimal::ONE)?;
                Ok(vec![
                    context
                        .pay(context.affiliate(), Decimal::ONE)
                        .rule("flat")
                        .because("flat 1, counted in a shared key"),
                ])
            }
            Some("clawback-twice") => {
                let event_id = event.attributes.get("of").unwrap_or_default();
                Ok((0..2)
                    .map(|_| {
                        context
                            .pay(context.affiliate(), Decimal::NEGATIVE_ONE)
                            .rule("flat-clawback")
                            .reversing(event_id, "flat")
                            .because(format!("claws back {event_id} again"))
                    })
                    .collect())
            }
            Some("pay") => Ok(vec![as_told(event, context)?.rule("flat").because("as the event told")]),
            Some("clawback") => {
                let event_id = event.attributes.get("of").unwrap_or_default();
                let reversal = as_told(event, context)?.rule("flat-clawback").reversing(event_id, "flat");
                Ok(vec![reversal.because(format!("claws back {event_id} as the event told"))])
            }
            Some(other) => Err(Error::new(format!("unknown attack {other:?}"))),
            None => {
                state::add_decimal(&state::customer_key(&event.customer, "events"), Decimal::ONE)?;
                Ok(vec![context.pay(context.affiliate(), Decimal::ONE).rule("flat").because("flat 1 per event")])
            }
        }
    }
}

export_plugin!(Hostile);

fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn allocate() -> ! {
    // Reserved, not written: it reaches the memory cap long before it runs out of fuel.
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(Vec::with_capacity(1 << 20));
        std::hint::black_box(&hoard);
    }
}

/// Returns only once the depth is past `u64::MAX`: never, in practice.
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == 0 {
        return 0;
    }
    recurse(depth.wrapping_add(1)) + 1
}

static CALLS: AtomicU64 = AtomicU64::new(0);
static SCRATCH: [AtomicU8; 64 * 1024] = [const { AtomicU8::new(0) }; 64 * 1024];

/// Pays 1 only if no earlier event's writes are visible: the call counter and the scratch
/// area must be as the component's initial memory has them. A host that reused instances, or
/// reset memory incompletely, would make the same event pay differently on replay.
fn remember(context: &Context) -> Result<Vec<Commission>> {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let dirty = SCRATCH.iter().filter(|byte| byte.swap(0xAB, Ordering::Relaxed) != 0).count();
    if calls != 1 || dirty != 0 {
        return Err(Error::new(format!("memory of an earlier event: call {calls}, {dirty} dirty bytes")));
    }
    Ok(vec![context.pay(context.affiliate(), Decimal::ONE).rule("flat").because("flat 1 from a clean memory")])
}

/// A commission to the referring affiliate of the attribute `amount`, in the attribute `currency`
/// if there is one.
fn as_told(event: &Event, context: &Context) -> Result<commission_plugin_sdk::CommissionBuilder> {
    let amount = event.attributes.decimal("amount")?.ok_or_else(|| Error::new("no attribute `amount`"))?;
    let pay = context.pay(context.affiliate(), amount);
    Ok(match event.attributes.get("currency") {
        Some(currency) => pay.currency(currency),
        None => pay,
    })
}
