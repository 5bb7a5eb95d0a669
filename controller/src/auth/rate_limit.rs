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

    /// `Some(seconds to wait)` when any of `keys` has used up its failures.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let RateLimit::Failures { max, window } = self.setting else { return None };
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|key| {
                let q = map.get_mut(key)?;
                prune(q, now, window);
                (q.len() >= max as usize).then(|| {
                    let oldest = q.front().copied().unwrap_or(now);
                    window.saturating_sub(now.duration_since(oldest)).as_secs_f64().ceil() as u64
                })
            })
            .max()
            .map(|secs| secs.max(1))
    }

    pub fn record_failure(&self, keys: &[String]) {
        let RateLimit::Failures { window, .. } = self.setting else { return };
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_THRESHOLD {
            map.retain(|_, q| {
                prune(q, now, window);
                !q.is_empty()
            });
        }
        for key in keys {
            let q = map.entry(key.clone()).or_default();
            prune(q, now, window);
            q.push_back(now);
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
            assert_eq!(limiter.blocked(&keys), None);
            limiter.record_failure(&keys);
        }
        let wait = limiter.blocked(&keys).unwrap_or(0);
        assert!((1..=60).contains(&wait), "wait {wait}");
        // Another address is blocked too when it targets the same user.
        assert!(limiter.blocked(&["ip:2".into(), "user:bob".into()]).is_some());
        assert!(limiter.blocked(&["ip:2".into(), "user:eve".into()]).is_none());
    }

    #[test]
    fn window_expiry_unblocks() {
        let limiter = LoginLimiter::new(RateLimit::Failures { max: 1, window: Duration::from_millis(50) });
        let keys = vec!["ip:1".to_string()];
        limiter.record_failure(&keys);
        assert!(limiter.blocked(&keys).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.blocked(&keys).is_none());
    }

    #[test]
    fn off_never_blocks() {
        let limiter = LoginLimiter::new(RateLimit::Off);
        let keys = vec!["ip:1".to_string()];
        for _ in 0..100 {
            limiter.record_failure(&keys);
        }
        assert!(limiter.blocked(&keys).is_none());
    }
}
