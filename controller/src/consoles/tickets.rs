//! Console tickets: short-lived random strings that let a browser open the WebSocket channels of one
//! console session without putting its bearer token in URLs. A ticket is bound to a user, a VM and a
//! console kind, and works for any number of channels until it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

use super::Kind;

#[derive(Debug, Clone)]
pub struct Ticket {
    pub username: String,
    pub vm_id: String,
    pub kind: Kind,
    expires: Instant,
}

pub struct Tickets {
    ttl: Duration,
    issued: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Tickets { ttl, issued: Mutex::default() }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh ticket (256 random bits, hex).
    pub fn issue(&self, username: &str, vm_id: &str, kind: Kind) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let ticket = hex::encode(bytes);
        let now = Instant::now();
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.retain(|_, t| t.expires > now);
        issued.insert(
            ticket.clone(),
            Ticket { username: username.into(), vm_id: vm_id.into(), kind, expires: now + self.ttl },
        );
        ticket
    }

    /// The ticket, while it is valid.
    pub fn check(&self, ticket: &str) -> Option<Ticket> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.get(ticket).filter(|t| t.expires > Instant::now()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_random_bound_and_expire() {
        let tickets = Tickets::new(Duration::from_millis(1000));
        let a = tickets.issue("alice", "vm1", Kind::Spice);
        let b = tickets.issue("alice", "vm1", Kind::Spice);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let t = tickets.check(&a).expect("valid");
        assert_eq!((t.username.as_str(), t.vm_id.as_str(), t.kind), ("alice", "vm1", Kind::Spice));
        assert!(tickets.check(&a).is_some(), "usable for several channels");
        assert!(tickets.check("nope").is_none());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tickets.check(&a).is_none(), "expired");
    }
}
