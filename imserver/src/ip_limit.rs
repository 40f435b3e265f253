//! Per source address limits: connections open at once and connection attempts per second from
//! one IP address. Checked at the handshake before the token, so a refused attempt does not
//! burn it. Both are off by default: many users behind one NAT share an address, and tokens
//! (single use, issued by the business backend) already make an attempt cost the attacker a
//! sign-in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpRefusal {
    /// The address has the most connections allowed open.
    #[error("this address has {0} connections open, the most allowed; close one first")]
    Connections(u32),
    /// The address made the most attempts allowed this second.
    #[error("more than {0} connection attempts from this address in a second; retry in a second")]
    Rate(u32),
}

/// The limits and what each address uses of them.
#[derive(Debug)]
pub struct IpLimits {
    max_connections: u32,
    max_per_sec: u32,
    by_ip: Mutex<HashMap<IpAddr, Usage>>,
}

#[derive(Debug)]
struct Usage {
    open: u32,
    window: Instant,
    attempts: u32,
}

/// Counts one open connection of an address for as long as it lives.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut by_ip = self.limits.lock();
        if let Some(usage) = by_ip.get_mut(&self.ip) {
            usage.open = usage.open.saturating_sub(1);
            if usage.open == 0 && usage.window.elapsed() >= WINDOW {
                by_ip.remove(&self.ip);
            }
        }
    }
}

const WINDOW: Duration = Duration::from_secs(1);

impl IpLimits {
    /// Limits of `max_connections` open and `max_per_sec` attempts per second per address;
    /// 0 turns a limit off.
    pub fn new(max_connections: u32, max_per_sec: u32) -> Self {
        Self {
            max_connections,
            max_per_sec,
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Usage>> {
        self.by_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an attempt from `ip`; the slot its connection holds while open, or why not.
    /// `None` when both limits are off.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, IpRefusal> {
        if self.max_connections == 0 && self.max_per_sec == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let mut by_ip = self.lock();
        // Forget idle addresses now and then, so the map holds only recent ones.
        if by_ip.len() > 1024 {
            by_ip.retain(|_, u| u.open > 0 || now.duration_since(u.window) < WINDOW);
        }
        let usage = by_ip.entry(ip).or_insert(Usage {
            open: 0,
            window: now,
            attempts: 0,
        });
        if now.duration_since(usage.window) >= WINDOW {
            usage.window = now;
            usage.attempts = 0;
        }
        usage.attempts += 1;
        if self.max_per_sec > 0 && usage.attempts > self.max_per_sec {
            return Err(IpRefusal::Rate(self.max_per_sec));
        }
        if self.max_connections > 0 && usage.open >= self.max_connections {
            return Err(IpRefusal::Connections(self.max_connections));
        }
        usage.open += 1;
        Ok(Some(IpSlot {
            limits: self.clone(),
            ip,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_are_counted_until_their_slot_drops() {
        let limits = Arc::new(IpLimits::new(2, 0));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = limits.admit(ip);
        let b = limits.admit(ip);
        assert!(matches!(a, Ok(Some(_))) && matches!(b, Ok(Some(_))));
        assert_eq!(limits.admit(ip).err(), Some(IpRefusal::Connections(2)));
        assert!(matches!(limits.admit([10, 0, 0, 2].into()), Ok(Some(_))));
        drop(a);
        assert!(matches!(limits.admit(ip), Ok(Some(_))));
    }

    #[test]
    fn attempts_are_counted_per_second() {
        let limits = Arc::new(IpLimits::new(0, 3));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..3).map(|_| limits.admit(ip)).collect();
        assert!(slots.iter().all(|s| matches!(s, Ok(Some(_)))));
        assert_eq!(limits.admit(ip).err(), Some(IpRefusal::Rate(3)));
        assert!(matches!(IpLimits::new(0, 0).admit_plain(ip), Ok(None)));
    }

    impl IpLimits {
        fn admit_plain(self, ip: IpAddr) -> Result<Option<IpSlot>, IpRefusal> {
            Arc::new(self).admit(ip)
        }
    }
}
