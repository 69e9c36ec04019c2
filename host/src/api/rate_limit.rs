//! Events per second per operator, when the admin sets a limit: one operator's burst cannot
//! take the host from the others. A batch counts each of its events.
//!
//! And failed credentials per peer address: after a burst of them, a peer is refused (429) on
//! every credentialed route until its allowance refills, so keys and tokens cannot be guessed
//! at the speed of the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

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

/// Failed credentials a peer may present at once, and then per second.
const FAILURE_BURST: NonZeroU32 = NonZeroU32::new(20).expect("non-zero");
const FAILURES_PER_SECOND: NonZeroU32 = NonZeroU32::new(2).expect("non-zero");
/// Past this many peers remembered, the ones back to a full allowance are forgotten.
const PEERS_REMEMBERED: usize = 10_000;

/// Failed credentials per peer address (see [`crate::server::peer_key`]).
pub struct FailedCredentials {
    allowance: DefaultKeyedRateLimiter<IpAddr>,
    /// Peers that spent their allowance, and when they get one more attempt.
    refused_until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for FailedCredentials {
    fn default() -> Self {
        Self {
            allowance: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(FAILURES_PER_SECOND).allow_burst(FAILURE_BURST),
            ),
            refused_until: Mutex::default(),
        }
    }
}

impl FailedCredentials {
    /// How long the peer must still wait, if it spent its allowance. Checked before a
    /// credential is: a refused peer learns nothing about its guesses.
    pub fn refused(&self, peer: IpAddr) -> Option<Duration> {
        let mut refused = self.refused_until.lock().expect("failed credentials lock");
        let until = *refused.get(&peer)?;
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            refused.remove(&peer);
            return None;
        }
        Some(wait)
    }

    /// Counts one failed credential of the peer.
    pub fn failed(&self, peer: IpAddr) {
        if let Err(not_until) = self.allowance.check_key(&peer) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut refused = self.refused_until.lock().expect("failed credentials lock");
            if refused.len() >= PEERS_REMEMBERED {
                let now = Instant::now();
                refused.retain(|_, until| *until > now);
            }
            refused.insert(peer, Instant::now() + wait);
        }
        if self.allowance.len() >= PEERS_REMEMBERED {
            self.allowance.retain_recent();
        }
    }
}
