//! Workers: what each does with the leases it holds (complete, fail in every way, release,
//! heartbeat, crash, hang and report late), and what it does next.

use std::time::Duration;

use steward_queue::{ClaimRequest, Lease, Outcome};

use super::ops::{lease_tag, Op, Report};
use super::{micros, World, MAX_LEASE_SECS};

/// What a worker means to do with a lease it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Plan {
    Complete,
    Retry(Option<Duration>),
    Fail,
    Snooze(Duration),
    Cancel,
    Release,
    /// Drops the lease and never reports (the process died).
    Crash,
    /// Stops heartbeating; reports after the lease expired.
    Hang(Late),
}

/// What a hung worker does when it wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Late {
    Complete,
    Retry,
    Heartbeat,
}

impl Plan {
    pub(super) fn heartbeats(self) -> bool {
        !matches!(self, Plan::Crash | Plan::Hang(_))
    }
}

/// A lease a worker holds.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) lease: Lease,
    pub(super) len: Duration,
    pub(super) expires_at: i64,
    pub(super) plan: Plan,
    /// Steps of work left before reporting.
    pub(super) work: u32,
    /// Rounds a hung worker still sleeps after its lease expired.
    pub(super) hang_extra: u32,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) name: String,
    pub(super) node: usize,
    pub(super) kinds: Option<Vec<String>>,
    pub(super) held: Vec<Held>,
    /// A report to send again (a client retrying a call whose answer it did not get).
    pub(super) resend: Option<Op>,
}

/// What a worker does this round.
pub(super) enum Action {
    Nothing,
    Op(Op),
    /// A report after the lease expired, run alone so its expected result is known exactly.
    Late(Op),
}

impl World {
    pub(super) fn choose_plan(&mut self) -> Plan {
        match self.rng.u32(0..100) {
            0..45 => Plan::Complete,
            45..58 => Plan::Retry(match self.rng.u32(0..5) {
                0 => Some(Duration::ZERO),
                1 | 2 => Some(Duration::from_millis(self.rng.u64(1..5000))),
                _ => None,
            }),
            58..62 => Plan::Fail,
            62..68 => Plan::Snooze(Duration::from_millis(self.rng.u64(0..30_000))),
            68..71 => Plan::Cancel,
            71..76 => Plan::Release,
            76..86 => Plan::Crash,
            _ => Plan::Hang(match self.rng.u32(0..10) {
                0..6 => Late::Complete,
                6..8 => Late::Retry,
                _ => Late::Heartbeat,
            }),
        }
    }

    pub(super) fn worker_action(&mut self, w: usize, alone: bool) -> Action {
        let now = self.now();
        if let Some(op) = self.workers[w].resend.take() {
            return Action::Op(op);
        }
        let node = self.workers[w].node;
        // A hung handler wakes up after its lease ended and reports (alone in its round).
        let late = self.workers[w].held.iter().position(|h| {
            matches!(h.plan, Plan::Hang(_)) && now > h.expires_at && h.hang_extra == 0
        });
        if let (Some(i), true) = (late, alone) {
            let h = self.workers[w].held.remove(i);
            let Plan::Hang(late) = h.plan else {
                return Action::Nothing;
            };
            let lease = h.lease;
            return Action::Late(match late {
                Late::Complete => Op::Complete {
                    node,
                    worker: w,
                    lease,
                    report: Report::Late,
                },
                Late::Retry => Op::Fail {
                    node,
                    worker: w,
                    lease,
                    outcome: Outcome::Retry {
                        error: "woke up late".into(),
                        delay: None,
                    },
                    report: Report::Late,
                },
                Late::Heartbeat => Op::Heartbeat {
                    node,
                    worker: w,
                    lease,
                    extend: h.len,
                    report: Report::Late,
                },
            });
        }
        // A healthy worker extends the lease that ends soonest once half of it is gone
        // (and sometimes forgets to).
        let due = self.workers[w]
            .held
            .iter()
            .enumerate()
            .filter(|(_, h)| h.plan.heartbeats() && h.expires_at - now < micros(h.len) / 2)
            .min_by_key(|(_, h)| h.expires_at)
            .map(|(i, _)| i);
        if let Some(i) = due {
            if self.rng.u32(0..10) > 0 {
                let h = &self.workers[w].held[i];
                return Action::Op(Op::Heartbeat {
                    node,
                    worker: w,
                    lease: h.lease.clone(),
                    extend: h.len,
                    report: Report::OnTime,
                });
            }
        }
        for h in &mut self.workers[w].held {
            if matches!(h.plan, Plan::Hang(_)) && now > h.expires_at {
                h.hang_extra = h.hang_extra.saturating_sub(1);
            }
        }
        // Otherwise the first lease whose handler is not hung; with none, claim more work
        // (unless two handlers hang already).
        let active = self.workers[w]
            .held
            .iter()
            .position(|h| !matches!(h.plan, Plan::Hang(_)));
        let Some(i) = active else {
            if self.workers[w].held.len() >= 2 {
                return Action::Nothing;
            }
            let wk = &self.workers[w];
            return Action::Op(Op::Claim {
                node,
                worker: w,
                req: ClaimRequest {
                    worker: wk.name.clone(),
                    kinds: wk.kinds.clone(),
                    max: self.rng.usize(1..=4),
                    lease: Duration::from_secs(self.rng.u64(5..=MAX_LEASE_SECS)),
                },
            });
        };
        let front = &mut self.workers[w].held[i];
        match front.plan {
            Plan::Crash => {
                let h = self.workers[w].held.remove(i);
                self.trace(format!(
                    "r{} w{w} crashes holding {}",
                    self.round,
                    lease_tag(&h.lease)
                ));
                Action::Nothing
            }
            _ if front.work > 0 => {
                front.work -= 1;
                Action::Nothing
            }
            plan => {
                let h = self.workers[w].held.remove(i);
                let lease = h.lease;
                let fail = |outcome| Op::Fail {
                    node,
                    worker: w,
                    lease: lease.clone(),
                    outcome,
                    report: Report::OnTime,
                };
                Action::Op(match plan {
                    Plan::Retry(delay) => fail(Outcome::Retry {
                        error: "transient".into(),
                        delay,
                    }),
                    Plan::Fail => fail(Outcome::Fail {
                        error: "permanent".into(),
                    }),
                    Plan::Snooze(d) => fail(Outcome::Snooze {
                        until: now + micros(d),
                    }),
                    Plan::Cancel => fail(Outcome::Cancel {
                        reason: "handler gave up".into(),
                    }),
                    Plan::Release => Op::Release {
                        node,
                        worker: w,
                        lease,
                    },
                    _ => Op::Complete {
                        node,
                        worker: w,
                        lease,
                        report: Report::OnTime,
                    },
                })
            }
        }
    }
}
