//! The sandbox-free ceiling: the multi-event plugin's rules called as plain Rust (its native
//! build, with the SDK's in-memory state), on the same event mix as the load test.

use std::time::Instant;

use commission_plugin_sdk::{Affiliate, Decimal, Event, Plugin, Properties, testing};
use multi_event::MultiEvent;

fn main() {
    let context = testing::context("bench", "USD", [Affiliate::new("aff1", Properties::default())]);
    let events: Vec<Event> = (0..10_000)
        .flat_map(|customer| {
            let customer = format!("c{customer}");
            [
                Event::new("d", "deposit", &customer, 0).with_amount(Decimal::from(100), "USD"),
                Event::new("t", "trade", &customer, 0).with_attribute("lots", "2.5"),
            ]
        })
        .collect();
    for round in 0..3 {
        testing::reset();
        let started = Instant::now();
        let mut paid = 0;
        for event in &events {
            paid += MultiEvent::evaluate(event, &context).expect("evaluates").len();
        }
        let per_event = started.elapsed().as_secs_f64() / events.len() as f64;
        println!("native multi-event, round {round}: {:.2} us per event ({paid} commissions)", per_event * 1e6);
    }
}
