#![expect(
    clippy::arithmetic_side_effects,
    reason = "small known numbers in tests and the model"
)]

use super::lease::*;
use super::*;

#[test]
fn corrections_apply_to_seconds_still_counted() {
    let mut counters = vec![(100, 2, 500), (101, 1, 300)];
    apply(
        &mut counters,
        &[
            (100, 0, -200),
            (101, -1, 50),
            (99, -5, -1000),
            (101, 0, -1000),
            // Added to a second the key does not hold (an attempt admitted alone).
            (102, 1, 40),
            // Gone from the window at 160 s.
            (98, 1, 40),
        ],
        160,
    );
    assert_eq!(counters, vec![(100, 2, 300), (101, 0, 0), (102, 1, 40)]);
}

#[test]
fn room_comes_back_when_the_oldest_seconds_leave() {
    let counters = vec![(100, 30, 0), (130, 30, 0)];
    // At 150.5 s, 60 used of 60: the second 100 stops counting at 161 s.
    assert_eq!(
        retry_in(&counters, 1, 60, 1, 60, 150_500),
        Duration::from_millis(10_500)
    );
    assert_eq!(
        retry_in(&counters, 1, 60, 31, 60, 150_500),
        Duration::from_millis(40_500)
    );
    assert_eq!(
        retry_in(&counters, 1, 60, 61, 60, 150_500),
        Duration::from_secs(60)
    );
}

#[test]
fn a_lease_is_recorded_at_a_second_no_earlier_than_any_it_is_spent_in() {
    let life = LEASE_LIFE.as_millis() as u64;
    for r in (1_700_000_000_000..1_700_000_003_000).step_by(7) {
        let sec = lease_second(r);
        for t in [r, r + 1, r + life / 2, r + life] {
            assert!(t / 1000 <= sec, "reserved at {r} ms, spent at {t} ms");
        }
        // And no later than it must be, so it leaves the window as soon as it may.
        assert!(sec <= (r + life) / 1000, "reserved at {r} ms");
    }
}

#[test]
fn seconds_stay_in_order_whoever_wrote_them() {
    let mut counters = vec![(100, 1, 10), (102, 1, 10)];
    record(&mut counters, 101, 2, 20);
    record(&mut counters, 102, 1, 5);
    record(&mut counters, 103, 1, 1);
    assert_eq!(
        counters,
        vec![(100, 1, 10), (101, 2, 20), (102, 2, 15), (103, 1, 1)]
    );
}

#[test]
fn the_prefetch_grows_with_demand_and_stops_near_the_limit() {
    let unbounded = (Some(1_000_000), Some(1_000_000_000));
    assert_eq!(prefetch(20, 300, (10, 3000), unbounded), (20, 6000));
    assert_eq!(prefetch(0, 300, (10, 3000), unbounded), (0, 0));
    // At most a quarter of the room: 80 left of 100.
    assert_eq!(prefetch(50, 0, (20, 0), (Some(100), None)), (20, 0));
    // Less than a quarter of the cap left: exactly the demand.
    assert_eq!(prefetch(50, 0, (76, 0), (Some(100), None)), (0, 0));
    assert_eq!(prefetch(50, 0, (75, 0), (Some(100), None)), (6, 0));
    // Tokens bound it too: a quarter of 8000 tokens left holds 6 requests of 300.
    let tpm = (None, Some(10_000));
    assert_eq!(prefetch(50, 300, (0, 2000), tpm), (6, 1800));
    assert_eq!(prefetch(50, 300, (0, 7600), tpm), (0, 0));
    // Beyond the limit already (another instance's clock, a lowered cap): nothing.
    assert_eq!(prefetch(50, 300, (150, 0), (Some(100), None)), (0, 0));
}

#[test]
fn the_next_lease_aims_at_twice_what_the_last_spent_unless_it_went_quiet() {
    let now = Instant::now();
    let last = Spent {
        requests: 7,
        estimates: 700,
        closed: Some(now),
    };
    assert_eq!(last.wanted(now), (14, 100));
    assert_eq!(last.wanted(now + LEASE_LIFE), (14, 100));
    assert_eq!(last.wanted(now + LEASE_LIFE * 2), (0, 0));
    assert_eq!(Spent::default().wanted(now), (0, 0));
}

fn lease(requests: u64, tokens: u64, until: Instant) -> Lease {
    Lease {
        id: 1,
        sec: 1000,
        until,
        requests,
        tokens,
        spent: (1, 100),
    }
}

#[test]
fn a_lease_spends_what_it_holds_while_it_lasts_and_gives_the_rest_back() {
    let now = Instant::now();
    let mut l = lease(3, 250, now + LEASE_LIFE);
    assert!(l.spend(100, true, now));
    assert!(l.spend(100, true, now));
    // 50 tokens left: not enough for another 100 under a tpm, enough without one.
    assert!(!l.spend(100, true, now));
    assert!(!l.spend(10, true, now + LEASE_LIFE), "expired");
    let (back, spent) = l.close(now);
    assert_eq!(back, Some((1000, -1, -50)));
    assert_eq!(spent.requests, 3);
    assert_eq!(spent.estimates, 300);

    let mut l = lease(1, 0, now + LEASE_LIFE);
    assert!(l.spend(100, false, now));
    assert!(!l.spend(0, false, now), "no slot left");
    assert_eq!(l.close(now).0, None, "nothing left to give back");
}

#[test]
fn real_usage_settles_within_an_open_lease() {
    let now = Instant::now();
    let mut l = lease(2, 0, now + LEASE_LIFE);
    // Used 60 of an estimate of 100: the 40 can be spent again.
    assert_eq!(l.settle(-40), 0);
    assert!(l.spend(40, true, now));
    // Used 30 more than estimated, with 20 held: 10 go to the window as a correction.
    l.tokens = 20;
    assert_eq!(l.settle(30), 10);
    assert_eq!(l.tokens, 0);
}

fn ask(class: Class, estimate: u64, caps: (Option<u64>, Option<u64>)) -> Ask {
    Ask {
        class,
        estimate,
        caps,
    }
}

#[test]
fn near_the_limit_a_lease_is_exactly_its_demand() {
    let counters = vec![(100, 50, 0)];
    let live = ask(Class::Live, 10, (Some(60), None));
    let p = plan(&counters, 120_000, &[live; 5], [(40, 10), (0, 0)]);
    assert!(p.refusals.iter().all(Option::is_none));
    let want = Reserve {
        demand: (5, 50),
        prefetch: (0, 0),
    };
    assert_eq!(p.leases, [Some(want), None]);
    assert_eq!(p.used, (55, 50));

    // Far from it, the same demand brings a prefetch (a quarter of the room at most).
    let p = plan(&Vec::new(), 120_000, &[live; 5], [(40, 10), (0, 0)]);
    let want = Reserve {
        demand: (5, 50),
        prefetch: (13, 130),
    };
    assert_eq!(p.leases, [Some(want), None]);
}

#[test]
fn a_class_that_refuses_an_attempt_gets_no_prefetch_and_batch_work_keeps_to_its_share() {
    let counters = vec![(100, 19, 0)];
    let live = ask(Class::Live, 1, (Some(60), None));
    let batch = ask(Class::Batch, 1, (Some(30), None));
    let asks = [
        batch, batch, live, batch, batch, batch, batch, batch, batch, batch, batch, batch,
    ];
    let p = plan(&counters, 120_000, &asks, [(8, 1), (8, 1)]);
    // The batch share is 30: ten of the eleven batch attempts fit beside 19 used and one live.
    let refused: Vec<usize> = (0..asks.len())
        .filter(|&i| p.refusals[i].is_some())
        .collect();
    assert_eq!(refused, vec![11]);
    assert_eq!(p.refusals[11].map(|r| r.0), Some("rpm"));
    let [live, batch] = p.leases;
    assert_eq!(batch.map(|r| (r.demand.0, r.prefetch.0)), Some((10, 0)));
    // Live work still has 30 left of 60 after this: a prefetch, within a quarter of it.
    assert_eq!(live.map(|r| (r.demand.0, r.prefetch.0)), Some((1, 7)));
}

/// A small model of several instances on one key, with the real lease, plan and correction code
/// and wall time in milliseconds: the compare-and-swap always wins (the real one is retried until
/// it does, on what it read again), and corrections are written `CORRECTION_DELAY` after a lease
/// expires unless a reservation carries them first.
struct Model {
    t0: Instant,
    wall0: u64,
    counters: Counters,
    writes: usize,
    /// Every attempt served: (ms, tokens).
    spent: Vec<(u64, u64)>,
    next_id: u64,
}

#[derive(Default)]
struct Member {
    book: Book,
    pending: Vec<Correction>,
    flush_at: Option<u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            t0: Instant::now(),
            // Not on a second boundary, so that leases straddle seconds.
            wall0: 1_700_000_000_337,
            counters: Vec::new(),
            writes: 0,
            spent: Vec::new(),
            next_id: 1,
        }
    }

    fn now(&self, t: u64) -> (u64, Instant) {
        (self.wall0 + t, self.t0 + Duration::from_millis(t))
    }

    fn arrive(&mut self, m: &mut Member, t: u64, estimate: u64, caps: (Option<u64>, Option<u64>)) {
        let (wall, now) = self.now(t);
        if let Some(l) = m.book.lease.as_mut()
            && l.spend(estimate, caps.1.is_some(), now)
        {
            self.spent.push((t, estimate));
            return;
        }
        if let Some(l) = m.book.lease.take() {
            let (back, spent) = l.close(now);
            m.pending.extend(back);
            m.book.last = spent;
        }
        let mut counters = self.counters.clone();
        counters.retain(|&(s, _, _)| s + SPAN_S >= wall / 1000);
        apply(&mut counters, &m.pending, wall / 1000);
        let wanted = m.book.last.wanted(now);
        let p = plan(
            &counters,
            wall,
            &[ask(Class::Live, estimate, caps)],
            [wanted, (0, 0)],
        );
        let Some(r) = p.leases[0] else {
            // Refused, nothing written: what a closed lease left waits for a flush.
            if !m.pending.is_empty() && m.flush_at.is_none() {
                m.flush_at = Some(t + CORRECTION_DELAY.as_millis() as u64);
            }
            return;
        };
        let sec = lease_second(wall);
        let (requests, tokens) = r.total();
        record(&mut counters, sec, requests, tokens);
        self.counters = counters;
        self.writes += 1;
        m.pending.clear();
        m.book.lease = Some(Lease {
            id: self.next_id,
            sec,
            until: now + LEASE_LIFE,
            requests: r.prefetch.0,
            tokens: r.prefetch.1,
            spent: r.demand,
        });
        self.next_id += 1;
        self.spent.push((t, estimate));
    }

    fn tick(&mut self, m: &mut Member, t: u64) {
        let (wall, now) = self.now(t);
        if let Some(l) = m.book.lease.take_if(|l| l.until <= now) {
            let (back, spent) = l.close(now);
            m.book.last = spent;
            if back.is_some() && m.flush_at.is_none() {
                m.flush_at = Some(t + CORRECTION_DELAY.as_millis() as u64);
            }
            m.pending.extend(back);
        }
        if m.flush_at.is_some_and(|at| at <= t) {
            m.flush_at = None;
            if !m.pending.is_empty() {
                apply(&mut self.counters, &m.pending, wall / 1000);
                m.pending.clear();
                self.writes += 1;
            }
        }
    }

    /// The most requests and tokens served within any 60 s.
    fn busiest_minute(&self) -> (u64, u64) {
        let (mut most, mut j, mut tokens) = ((0, 0), 0, 0);
        for (i, &(t, n)) in self.spent.iter().enumerate() {
            while j < self.spent.len() && self.spent[j].0 < t + 60_000 {
                tokens += self.spent[j].1;
                j += 1;
            }
            most = (most.0.max((j - i) as u64), most.1.max(tokens));
            tokens -= n;
        }
        most
    }
}

/// A deterministic stream of numbers, one per member, so that the model needs no seed handling.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn no_minute_holds_more_than_the_limit_whatever_the_leases() {
    for (rpm, tpm) in [(60, None), (600, Some(40_000)), (5_000, None)] {
        let caps = (Some(rpm), tpm);
        let mut model = Model::new();
        let mut members: Vec<Member> = (0..3).map(|_| Member::default()).collect();
        let mut rng = [1u64, 2, 3];
        // Five minutes of bursts, lulls and trickles, out of step between the members.
        for t in 0..300_000u64 {
            for (i, m) in members.iter_mut().enumerate() {
                model.tick(m, t);
                let phase = (t / 7_000 + i as u64 * 3) % 5;
                let per_mille = [100, 0, 3, 20, 400][phase as usize];
                if next(&mut rng[i]) % 1000 < per_mille {
                    let estimate = 20 + next(&mut rng[i]) % 200;
                    model.arrive(m, t, estimate, caps);
                }
            }
        }
        let (requests, tokens) = model.busiest_minute();
        println!(
            "rpm {rpm}, tpm {tpm:?}: {} served, {} writes, busiest minute {requests} requests, {tokens} tokens",
            model.spent.len(),
            model.writes
        );
        assert!(
            requests <= rpm,
            "{requests} requests in a minute, rpm {rpm}"
        );
        assert!(
            tokens <= tpm.unwrap_or(u64::MAX),
            "{tokens} tokens in a minute"
        );
        // Demand far beyond the limits: the busiest minute comes near them.
        let near = tpm.map_or(requests * 10 >= rpm * 9, |tpm| tokens * 10 >= tpm * 8);
        assert!(near, "busiest minute {requests} requests, {tokens} tokens");
    }
}

#[test]
fn a_steady_stream_far_below_the_limits_costs_about_a_write_a_second() {
    let caps = (Some(1_000_000), Some(1_000_000_000));
    let mut model = Model::new();
    let mut m = Member::default();
    // One attempt every 2 ms for 10 s, then quiet.
    for t in 0..13_000 {
        model.tick(&mut m, t);
        if t < 10_000 && t % 2 == 0 {
            model.arrive(&mut m, t, 100, caps);
        }
    }
    println!("5000 attempts in 10 s: {} writes", model.writes);
    assert_eq!(model.spent.len(), 5000);
    assert!(model.writes <= 25, "{} writes", model.writes);
    // Once quiet, what the last lease left has gone back: only what was served is counted.
    let counted: u64 = model.counters.iter().map(|c| c.1).sum();
    assert_eq!(counted, 5000);
    assert!(m.pending.is_empty());
}

#[test]
fn an_instance_alone_keeps_to_the_part_of_the_limit_it_was_using() {
    let rpm = (Some(60), None);
    let t0 = 1_700_000_000_000;
    // It served 10 of the cluster's 30 (and saw the 30th's demand as its own): a third of 60.
    let mut s = share::Share::default();
    for i in 0..9 {
        s.admitted(100, t0 + i * 100);
    }
    s.saw((30, 0), (1, 100), t0 + 1000);
    s.admitted(100, t0 + 1000);
    let admitted = (0..30)
        .filter(|i| s.judge(rpm, 100, t0 + 2000 + i * 100).is_ok())
        .count();
    assert_eq!(admitted, 10, "20 of 60 in all");
    let refused = s
        .judge(rpm, 100, t0 + 6000)
        .expect_err("its share is spent");
    assert_eq!(refused.0, "rpm");
    // Its first second leaves the window at t0 + 61 s.
    assert_eq!(refused.1, Duration::from_millis(55_000));
    // Having seen nothing of the cluster, a third of the limit.
    let mut s = share::Share::default();
    let alone = (0..30).filter(|i| s.judge(rpm, 0, t0 + i).is_ok()).count();
    assert_eq!(alone, 20);
}
