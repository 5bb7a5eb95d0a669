//! Failed-login limiter: counts failures per client address and per username in a sliding window,
//! so neither spraying one account from many addresses nor many accounts from one address gets far.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Above this many tracked keys, expired ones are swept so memory stays bounded under attack.
const SWEEP_THRESHOLD: usize = 10_000;

pub struct LoginLimiter {
    setting: RateLimit,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(setting: RateLimit) -> Self {
        LoginLimiter { setting, failures: Mutex::new(HashMap::new()) }
    }

    /// Checks and counts one attempt atomically: `Err(seconds to wait)` when any key has used up its
    /// failures, otherwise the attempt is recorded as a failure until `forgive` takes it back.
    pub fn begin_attempt(&self, keys: &[String]) -> Result<(), u64> {
        let RateLimit::Failures { max, window } = self.setting else { return Ok(()) };
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for key in keys {
            if let Some(q) = map.get_mut(key) {
                prune(q, now, window);
                if q.len() >= max as usize {
                    let oldest = q.front().copied().unwrap_or(now);
                    let secs = window.saturating_sub(now.duration_since(oldest)).as_secs_f64().ceil() as u64;
                    wait = Some(wait.unwrap_or(0).max(secs.max(1)));
                }
            }
        }
        if let Some(secs) = wait {
            return Err(secs);
        }
        if map.len() > SWEEP_THRESHOLD {
            map.retain(|_, q| {
                prune(q, now, window);
                !q.is_empty()
            });
        }
        for key in keys {
            map.entry(key.clone()).or_default().push_back(now);
        }
        Ok(())
    }

    /// Takes back the most recent failure of each key: an attempt is counted as failed before the
    /// password is checked (so parallel guesses cannot all slip past the limit), and forgiven if it succeeds.
    pub fn forgive(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(q) = map.get_mut(key) {
                q.pop_back();
            }
        }
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_per_key() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 3, window: Duration::from_secs(60) });
        let keys = vec!["ip:1".to_string(), "user:bob".to_string()];
        for _ in 0..3 {
            assert_eq!(limiter.begin_attempt(&keys), Ok(()));
        }
        let wait = limiter.begin_attempt(&keys).err().unwrap_or(0);
        assert!((1..=60).contains(&wait), "wait {wait}");
        // Another address is blocked too when it targets the same user.
        assert!(limiter.begin_attempt(&["ip:2".into(), "user:bob".into()]).is_err());
        assert!(limiter.begin_attempt(&["ip:2".into(), "user:eve".into()]).is_ok());
    }

    #[test]
    fn successes_are_forgiven() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 2, window: Duration::from_secs(60) });
        let keys = vec!["ip:1".to_string()];
        for _ in 0..10 {
            assert_eq!(limiter.begin_attempt(&keys), Ok(()));
            limiter.forgive(&keys);
        }
    }

    #[test]
    fn window_expiry_unblocks() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 1, window: Duration::from_millis(1000) });
        let keys = vec!["ip:1".to_string()];
        assert!(limiter.begin_attempt(&keys).is_ok());
        assert!(limiter.begin_attempt(&keys).is_err());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(limiter.begin_attempt(&keys).is_ok());
    }

    #[test]
    fn off_never_blocks() {
        let limiter = LoginLimiter::new(RateLimit::Off);
        let keys = vec!["ip:1".to_string()];
        for _ in 0..100 {
            assert!(limiter.begin_attempt(&keys).is_ok());
        }
    }
}
