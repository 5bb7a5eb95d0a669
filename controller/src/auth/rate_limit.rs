//! Failed-login limiter, in a sliding window: per client address (many accounts from one address
//! get nowhere), and per username for the addresses that failed on it (spraying one account from
//! many addresses gets nowhere), while a correct login from an address that did not fail still
//! gets through: guessing at `admin` from one place never locks the real admin out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Above this many tracked keys, expired ones are swept so memory stays bounded under attack.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Default)]
struct Failures {
    /// Per client address.
    by_address: HashMap<String, VecDeque<Instant>>,
    /// Per username: when, and from which address.
    by_user: HashMap<String, VecDeque<(Instant, String)>>,
}

pub struct LoginLimiter {
    setting: RateLimit,
    failures: Mutex<Failures>,
}

fn prune<T>(q: &mut VecDeque<T>, now: Instant, window: Duration, at: impl Fn(&T) -> Instant) {
    while q.front().is_some_and(|t| now.duration_since(at(t)) >= window) {
        q.pop_front();
    }
}

/// Seconds until the oldest failure of a full queue leaves the window.
fn wait(oldest: Option<Instant>, now: Instant, window: Duration) -> u64 {
    let oldest = oldest.unwrap_or(now);
    (window.saturating_sub(now.duration_since(oldest)).as_secs_f64().ceil() as u64).max(1)
}

impl LoginLimiter {
    pub fn new(setting: RateLimit) -> Self {
        LoginLimiter { setting, failures: Mutex::new(Failures::default()) }
    }

    /// Checks and counts one attempt atomically: `Err(seconds to wait)` when `address` has used up
    /// its failures, or `username` has and `address` is among those that failed on it; otherwise the
    /// attempt is recorded as a failure until `forgive` takes it back.
    pub fn begin_attempt(&self, address: &str, username: &str) -> Result<(), u64> {
        let RateLimit::Failures { max, window } = self.setting else { return Ok(()) };
        let (now, max) = (Instant::now(), max as usize);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut blocked = None;
        if let Some(q) = f.by_address.get_mut(address) {
            prune(q, now, window, |t| *t);
            if q.len() >= max {
                blocked = Some(wait(q.front().copied(), now, window));
            }
        }
        if let Some(q) = f.by_user.get_mut(username) {
            prune(q, now, window, |(t, _)| *t);
            if q.len() >= max && q.iter().any(|(_, a)| a == address) {
                let w = wait(q.front().map(|(t, _)| *t), now, window);
                blocked = Some(blocked.unwrap_or(0).max(w));
            }
        }
        if let Some(secs) = blocked {
            return Err(secs);
        }
        if f.by_address.len() + f.by_user.len() > SWEEP_THRESHOLD {
            f.by_address.retain(|_, q| {
                prune(q, now, window, |t| *t);
                !q.is_empty()
            });
            f.by_user.retain(|_, q| {
                prune(q, now, window, |(t, _)| *t);
                !q.is_empty()
            });
        }
        f.by_address.entry(address.to_string()).or_default().push_back(now);
        f.by_user.entry(username.to_string()).or_default().push_back((now, address.to_string()));
        Ok(())
    }

    /// Takes back the failure `begin_attempt` counted: an attempt is counted as failed before the
    /// password is checked (so parallel guesses cannot all slip past the limit), and forgiven if it
    /// succeeds.
    pub fn forgive(&self, address: &str, username: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = f.by_address.get_mut(address) {
            q.pop_back();
        }
        if let Some(q) = f.by_user.get_mut(username) {
            if let Some(i) = q.iter().rposition(|(_, a)| a == address) {
                q.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_per_address_and_per_user_from_failing_addresses() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 3, window: Duration::from_secs(60) });
        for _ in 0..3 {
            assert_eq!(limiter.begin_attempt("1", "bob"), Ok(()));
        }
        let wait = limiter.begin_attempt("1", "bob").err().unwrap_or(0);
        assert!((1..=60).contains(&wait), "wait {wait}");
        assert!(limiter.begin_attempt("1", "eve").is_err(), "the address is spent");
        // Another address gets its attempt at bob; once it fails there, it is blocked on bob too.
        assert!(limiter.begin_attempt("2", "bob").is_ok());
        assert!(limiter.begin_attempt("2", "bob").is_err());
        assert!(limiter.begin_attempt("2", "eve").is_ok());
        // And an address that never failed on bob may still try (and, right, get in).
        assert!(limiter.begin_attempt("3", "bob").is_ok());
        limiter.forgive("3", "bob");
        assert!(limiter.begin_attempt("3", "bob").is_ok());
    }

    #[test]
    fn successes_are_forgiven() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 2, window: Duration::from_secs(60) });
        for _ in 0..10 {
            assert_eq!(limiter.begin_attempt("1", "bob"), Ok(()));
            limiter.forgive("1", "bob");
        }
    }

    #[test]
    fn window_expiry_unblocks() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 1, window: Duration::from_millis(1000) });
        assert!(limiter.begin_attempt("1", "bob").is_ok());
        assert!(limiter.begin_attempt("1", "bob").is_err());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(limiter.begin_attempt("1", "bob").is_ok());
    }

    #[test]
    fn off_never_blocks() {
        let limiter = LoginLimiter::new(RateLimit::Off);
        for _ in 0..100 {
            assert!(limiter.begin_attempt("1", "bob").is_ok());
        }
    }
}
