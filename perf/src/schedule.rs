//! The open-loop (`--rate`) schedule and its coordinated-omission correction.
//!
//! With `R` requests/s over `C` connections in total, connection `k` (0-based,
//! counted across all threads) sends its request `i` at `(k + i·C) / R` seconds
//! after the start: each connection runs at `R / C` requests/s and the
//! connections are offset from each other so the union is one request every
//! `1 / R` seconds. A connection has at most one request in flight: when the
//! response to request `i` arrives after request `i + 1` was due, request `i + 1`
//! goes out at once. Either way its latency is measured from the moment it was
//! *due*, not the moment it was sent, so time spent waiting behind a slow
//! response is counted (coordinated-omission correction, as wrk2 does).
//!
//! All times here are nanoseconds since the common start, so the arithmetic is
//! exact and testable without clocks.

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// When the requests of one connection are due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// This connection's index among all connections (its phase offset).
    slot: u64,
    /// All connections of the run, across threads.
    connections: u64,
    /// Requests per second in total.
    rate: u64,
}

impl Schedule {
    /// `slot < connections` and `rate >= 1` (checked by the caller's arguments).
    pub fn new(slot: u64, connections: u64, rate: u64) -> Self {
        Schedule {
            slot,
            connections: connections.max(1),
            rate: rate.max(1),
        }
    }

    /// Nanoseconds after the start at which request `i` is due.
    pub fn due_ns(&self, i: u64) -> u64 {
        let n = u128::from(self.slot) + u128::from(i) * u128::from(self.connections);
        u64::try_from(n * NANOS_PER_SECOND / u128::from(self.rate)).unwrap_or(u64::MAX)
    }

    /// How many requests are due strictly before `t_ns`.
    pub fn due_before(&self, t_ns: u64) -> u64 {
        // due_ns(i) < t  ⟺  floor(n·1e9 / R) < t  ⟺  n·1e9 < t·R  (t an integer)
        //                ⟺  n < ceil(t·R / 1e9) =: m, with n = slot + i·C.
        let m = (u128::from(t_ns) * u128::from(self.rate)).div_ceil(NANOS_PER_SECOND);
        let slot = u128::from(self.slot);
        if m <= slot {
            return 0;
        }
        let count = (m - slot).div_ceil(u128::from(self.connections));
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

/// The open-loop state of one connection: which request is next and when the
/// one in flight was due.
#[derive(Clone, Debug)]
pub struct Pacer {
    schedule: Schedule,
    /// Index of the next request to send.
    next: u64,
    /// Due time of the request in flight, if any.
    in_flight_due: Option<u64>,
}

impl Pacer {
    pub fn new(schedule: Schedule) -> Self {
        Pacer {
            schedule,
            next: 0,
            in_flight_due: None,
        }
    }

    /// When the next request is due (ns since the start).
    pub fn next_due_ns(&self) -> u64 {
        self.schedule.due_ns(self.next)
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight_due.is_some()
    }

    /// The next request is sent at `now_ns` (never before it is due); returns
    /// how late it went out (the send lag), 0 when on time.
    pub fn on_send(&mut self, now_ns: u64) -> u64 {
        let due = self.next_due_ns();
        self.in_flight_due = Some(due);
        self.next += 1;
        now_ns.saturating_sub(due)
    }

    /// The response to the request in flight arrived at `now_ns`: returns its
    /// latency corrected for coordinated omission (`now - due`), or `None` when
    /// nothing was in flight.
    pub fn on_response(&mut self, now_ns: u64) -> Option<u64> {
        self.in_flight_due
            .take()
            .map(|due| now_ns.saturating_sub(due))
    }

    /// The request in flight was lost with its connection; the schedule goes on.
    pub fn on_lost(&mut self) {
        self.in_flight_due = None;
    }

    /// Requests due before `t_ns` that were never sent (the backlog at the end).
    pub fn unsent_before(&self, t_ns: u64) -> u64 {
        self.schedule.due_before(t_ns).saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_evenly() {
        // 1000 requests/s over 4 connections: every 1 ms one of them is due.
        let scheds: Vec<Schedule> = (0..4).map(|k| Schedule::new(k, 4, 1000)).collect();
        assert_eq!(scheds[0].due_ns(0), 0);
        assert_eq!(scheds[0].due_ns(1), 4_000_000);
        assert_eq!(scheds[1].due_ns(0), 1_000_000);
        assert_eq!(scheds[3].due_ns(2), 11_000_000);
        let mut all: Vec<u64> = scheds
            .iter()
            .flat_map(|s| (0..100).map(|i| s.due_ns(i)))
            .collect();
        all.sort_unstable();
        for (j, t) in all.iter().enumerate() {
            assert_eq!(*t, j as u64 * 1_000_000);
        }
    }

    #[test]
    fn uneven_rates_round_down_exactly() {
        // 3 requests/s on one connection: 0, 333333333, 666666666, 1e9 ns.
        let s = Schedule::new(0, 1, 3);
        let dues: Vec<u64> = (0..4).map(|i| s.due_ns(i)).collect();
        assert_eq!(dues, [0, 333_333_333, 666_666_666, 1_000_000_000]);
        // Far into a long run the arithmetic neither drifts nor overflows.
        let s = Schedule::new(5, 7, 123_457);
        let i = 10_000_000_000u64;
        let exact = (5u128 + u128::from(i) * 7) * 1_000_000_000 / 123_457;
        assert_eq!(u128::from(s.due_ns(i)), exact);
    }

    #[test]
    fn due_before_matches_brute_force() {
        for (slot, conns, rate) in [(0, 1, 1000), (3, 4, 1000), (2, 3, 7), (0, 16, 2000)] {
            let s = Schedule::new(slot, conns, rate);
            for t in (0..50_000_000u64).step_by(333_331).chain([0, 1, 1_000_000]) {
                let brute = (0..10_000).take_while(|&i| s.due_ns(i) < t).count() as u64;
                assert_eq!(
                    s.due_before(t),
                    brute,
                    "slot {slot} conns {conns} rate {rate} t {t}"
                );
            }
        }
    }

    /// A connection at 100 requests/s (due every 10 ms) against a server that
    /// answers in 1 ms, except request 0 which it holds for 100 ms.
    #[test]
    fn stall_is_charged_to_the_requests_that_waited() {
        const MS: u64 = 1_000_000;
        let mut p = Pacer::new(Schedule::new(0, 1, 100));
        let mut now = 0;
        let mut latencies = Vec::new();
        let mut lags = Vec::new();
        for i in 0..20 {
            now = now.max(p.next_due_ns());
            lags.push(p.on_send(now) / MS);
            let service = if i == 0 { 100 * MS } else { MS };
            now += service;
            latencies.push(p.on_response(now).unwrap() / MS);
        }
        // Request 0 took 100 ms. Requests 1..=9 were due at 10..90 ms but could only
        // go out at 100, 101, ... ms: each waited, and that wait is in its latency.
        assert_eq!(latencies[0], 100);
        assert_eq!(&latencies[1..11], &[91, 82, 73, 64, 55, 46, 37, 28, 19, 10]);
        assert_eq!(&lags[1..4], &[90, 81, 72]);
        // Caught up: back to the 1 ms service time, sent on schedule.
        assert!(latencies[11..].iter().all(|&l| l == 1), "{latencies:?}");
        assert!(lags[11..].iter().all(|&l| l == 0), "{lags:?}");
        // What a closed loop would have seen (time from actual send): one slow
        // sample, the rest 1 ms. The corrected samples are a stall's worth.
        let closed_loop: Vec<u64> = latencies.iter().zip(&lags).map(|(l, g)| l - g).collect();
        assert_eq!(closed_loop.iter().filter(|&&l| l > 1).count(), 1);
        assert_eq!(latencies.iter().filter(|&&l| l > 1).count(), 11);
    }

    #[test]
    fn responses_and_losses() {
        let mut p = Pacer::new(Schedule::new(1, 2, 10));
        assert_eq!(p.next_due_ns(), 100_000_000);
        assert!(!p.in_flight());
        assert_eq!(p.on_response(5), None);
        assert_eq!(p.on_send(100_000_000), 0);
        assert!(p.in_flight());
        p.on_lost();
        assert!(!p.in_flight());
        // The schedule goes on after a lost request.
        assert_eq!(p.next_due_ns(), 300_000_000);
        // Due before 1 s: requests 0..=4 (at 0.1, 0.3, 0.5, 0.7, 0.9 s); 1 was sent.
        assert_eq!(p.unsent_before(1_000_000_000), 4);
        assert_eq!(p.unsent_before(0), 0);
    }
}
