//! Whether the server hears from the manager, and when to say so in the log.
//!
//! The manager is not on the data path: a server keeps serving with the map
//! it has while the manager is down. But an operator looking at a server's
//! log must be able to tell that it cannot reach the manager (a wrong
//! `--manager-addr`, a dead manager, a firewall), so the driver reports it:
//!
//! ```text
//!   RegisterReply ──replied(now)──▶ Some(Reachable{silent}) if a warning was logged
//!   tick ──────────tick(now)──────▶ Some(Unreachable{silent}) when silent for
//!                                    longer than `silence_max`, then at most
//!                                    once per WARNING_INTERVAL
//! ```
//! Pure: the driver passes the runtime's clock, so the simulator drives it
//! like everything else.

use std::time::{Duration, Instant};

/// Least time without a reply before the manager counts as unreachable,
/// whatever the heartbeat interval (a reply may lag a little behind).
pub const SILENCE_MIN: Duration = Duration::from_secs(2);
/// Heartbeats without a reply before the manager counts as unreachable.
pub const SILENT_HEARTBEATS_MAX: u32 = 3;
/// At most one "cannot reach the manager" warning per this interval.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What the driver should log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactNotice {
    /// No reply from the manager for `silent` (log at WARN).
    Unreachable { silent: Duration },
    /// The manager answered again after `silent` without a reply, during
    /// which an `Unreachable` notice was given (log at INFO).
    Reachable { silent: Duration },
}

/// Tracks the manager's replies to this server's registrations.
#[derive(Debug, Clone)]
pub struct ManagerContact {
    /// No reply for longer than this: unreachable.
    silence_max: Duration,
    /// The last reply, or the start.
    last_reply: Instant,
    /// The last `Unreachable` notice of the current silence, if any.
    last_warning: Option<Instant>,
}

impl ManagerContact {
    /// Starts counting at `now`; registrations go out every
    /// `heartbeat_interval`.
    pub fn new(now: Instant, heartbeat_interval: Duration) -> ManagerContact {
        ManagerContact {
            silence_max: (heartbeat_interval * SILENT_HEARTBEATS_MAX).max(SILENCE_MIN),
            last_reply: now,
            last_warning: None,
        }
    }

    /// The manager replied at `now`.
    pub fn replied(&mut self, now: Instant) -> Option<ContactNotice> {
        let silent = now.saturating_duration_since(self.last_reply);
        self.last_reply = now;
        self.last_warning
            .take()
            .map(|_| ContactNotice::Reachable { silent })
    }

    /// Called periodically (every Raft tick).
    pub fn tick(&mut self, now: Instant) -> Option<ContactNotice> {
        let silent = now.saturating_duration_since(self.last_reply);
        if silent <= self.silence_max {
            return None;
        }
        let due = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(ContactNotice::Unreachable { silent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEARTBEAT: Duration = Duration::from_secs(1);

    /// Ticks every 50 ms from `from` for `span`; returns the notices with
    /// their offsets from `start`.
    fn run(
        c: &mut ManagerContact,
        start: Instant,
        from: Duration,
        span: Duration,
    ) -> Vec<(Duration, ContactNotice)> {
        let step = Duration::from_millis(50);
        let mut out = Vec::new();
        let mut t = from;
        while t < from + span {
            if let Some(n) = c.tick(start + t) {
                out.push((t, n));
            }
            t += step;
        }
        out
    }

    #[test]
    fn a_manager_that_answers_is_never_reported() {
        let start = Instant::now();
        let mut c = ManagerContact::new(start, HEARTBEAT);
        for s in 1..100 {
            let now = start + Duration::from_secs(s);
            assert_eq!(c.replied(now), None);
            assert_eq!(c.tick(now + Duration::from_millis(900)), None);
        }
    }

    #[test]
    fn silence_is_reported_after_three_heartbeats_then_every_ten_seconds() {
        let start = Instant::now();
        let mut c = ManagerContact::new(start, HEARTBEAT);
        let notices = run(&mut c, start, Duration::ZERO, Duration::from_secs(25));
        let times: Vec<u64> = notices.iter().map(|(t, _)| t.as_millis() as u64).collect();
        assert_eq!(
            times,
            [3050, 13050, 23050],
            "first after 3 s, then every 10 s"
        );
        assert!(notices
            .iter()
            .all(|(t, n)| *n == ContactNotice::Unreachable { silent: *t }));
    }

    #[test]
    fn the_first_reply_after_a_warning_is_reported_once() {
        let start = Instant::now();
        let mut c = ManagerContact::new(start, HEARTBEAT);
        run(&mut c, start, Duration::ZERO, Duration::from_secs(5));
        let back = start + Duration::from_secs(5);
        assert_eq!(
            c.replied(back),
            Some(ContactNotice::Reachable {
                silent: Duration::from_secs(5)
            })
        );
        assert_eq!(c.replied(back + HEARTBEAT), None, "only once");
        // A new silence is reported afresh, without waiting 10 s.
        let notices = run(
            &mut c,
            back + HEARTBEAT,
            Duration::ZERO,
            Duration::from_secs(4),
        );
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn a_short_silence_is_not_reported_at_either_end() {
        let start = Instant::now();
        let mut c = ManagerContact::new(start, HEARTBEAT);
        assert!(run(&mut c, start, Duration::ZERO, Duration::from_secs(3)).is_empty());
        assert_eq!(c.replied(start + Duration::from_secs(3)), None);
    }

    #[test]
    fn a_fast_heartbeat_still_allows_two_seconds() {
        let start = Instant::now();
        let mut c = ManagerContact::new(start, Duration::from_millis(10));
        let notices = run(&mut c, start, Duration::ZERO, Duration::from_secs(3));
        assert_eq!(notices[0].0, Duration::from_millis(2050));
    }
}
