//! Events per second per operator, when the admin sets a limit: one operator's burst cannot
//! take the host from the others. A batch counts each of its events.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::store::records::OperatorRecord;

#[derive(Default)]
pub struct RateLimits {
    /// Per operator: the rate its limiter was built for, and the limiter.
    limiters: Mutex<HashMap<String, (NonZeroU32, DefaultDirectRateLimiter)>>,
}

pub enum Verdict {
    Allowed,
    /// Over the limit; try again after this long.
    Refused {
        per_second: u32,
        retry_after: Duration,
    },
}

impl RateLimits {
    pub fn check(&self, operator: &OperatorRecord, events: usize) -> Verdict {
        let Some(per_second) = operator.limits.events_per_second.and_then(NonZeroU32::new) else {
            return Verdict::Allowed;
        };
        let events = NonZeroU32::new(events.clamp(1, u32::MAX as usize) as u32).expect("clamped to at least 1");
        let mut limiters = self.limiters.lock().expect("rate limits lock");
        let (rate, limiter) = limiters
            .entry(operator.id.clone())
            .or_insert_with(|| (per_second, DefaultDirectRateLimiter::direct(Quota::per_second(per_second))));
        if *rate != per_second {
            // The admin changed the limit: start the new one afresh.
            *rate = per_second;
            *limiter = DefaultDirectRateLimiter::direct(Quota::per_second(per_second));
        }
        match limiter.check_n(events) {
            Ok(Ok(())) => Verdict::Allowed,
            Ok(Err(not_until)) => Verdict::Refused {
                per_second: per_second.get(),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
            // More events in one batch than a second's allowance: never conforms as is.
            Err(_) => Verdict::Refused { per_second: per_second.get(), retry_after: Duration::from_secs(1) },
        }
    }
}
