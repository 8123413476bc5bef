//! Admission of batch-priority attempts on the embedded store: at most `limit` run at once, and
//! a waiting [`Priority::Batch`] attempt takes the next free turn before any waiting
//! [`Priority::Background`] one, unless that one has waited [`BACKGROUND_MAX_WAIT`] and longer
//! than the first batch waiter (so neither class is ever starved).
//!
//! Why two classes: the queue's claims (batch) are how a small tenant's fresh job leaves the
//! queue, its batched completions (background) only record what already ran. Behind a flood both
//! wait for a turn; served first come first served, the claim that would find a small tenant's
//! job waited behind the completions queued before it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::database::Priority;

/// A waiting background attempt older than this takes the next turn even if batch attempts
/// wait.
pub(crate) const BACKGROUND_MAX_WAIT: Duration = Duration::from_millis(20);

/// The turns of one store.
#[derive(Debug)]
pub(crate) struct Admission {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Turns nobody holds.
    free: usize,
    /// Turns background attempts hold, and how many they may hold: one less than the limit
    /// (if it is above one), so a claim never waits for a whole round of completions.
    background_held: usize,
    background_cap: usize,
    batch: VecDeque<(Instant, oneshot::Sender<()>)>,
    background: VecDeque<(Instant, oneshot::Sender<()>)>,
}

impl State {
    /// Gives free turns to waiters, batch first; a background waiter goes first once it has
    /// waited [`BACKGROUND_MAX_WAIT`] and longer than the first batch waiter.
    fn dispatch(&mut self) {
        while self.free > 0 {
            let background_may = self.background_held < self.background_cap;
            let overdue = background_may
                && self.background.front().is_some_and(|(since, _)| {
                    since.elapsed() >= BACKGROUND_MAX_WAIT
                        && self.batch.front().is_none_or(|(first, _)| since < first)
                });
            let (tx, background) = if overdue || (self.batch.is_empty() && background_may) {
                match self.background.pop_front() {
                    Some((_, tx)) => (tx, true),
                    None => return,
                }
            } else {
                match self.batch.pop_front() {
                    Some((_, tx)) => (tx, false),
                    None => return,
                }
            };
            // A waiter that gave up has dropped its receiver: the turn stays for the next.
            if tx.send(()).is_ok() {
                self.free -= 1;
                self.background_held += usize::from(background);
            }
        }
    }

    fn give_back(&mut self, background: bool) {
        self.free += 1;
        self.background_held -= usize::from(background);
        self.dispatch();
    }
}

/// One attempt's turn; given back (to the next waiter) when dropped.
#[derive(Debug)]
pub(crate) struct Turn {
    admission: Arc<Admission>,
    background: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.admission.lock().give_back(self.background);
    }
}

/// A turn being waited for. If the wait is abandoned after the turn was handed over, the turn
/// goes on to the next waiter.
struct Waiting {
    admission: Arc<Admission>,
    rx: oneshot::Receiver<()>,
    background: bool,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.admission.lock().give_back(self.background);
        }
    }
}

impl Admission {
    /// `limit` turns (at least 1; the caller checks).
    pub(crate) fn new(limit: usize) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State {
                free: limit,
                background_held: 0,
                background_cap: limit.saturating_sub(1).max(1),
                batch: VecDeque::new(),
                background: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a turn in `priority`'s class ([`Priority::Default`] counts as batch; callers
    /// do not ask for it).
    pub(crate) async fn acquire(self: &Arc<Self>, priority: Priority) -> Turn {
        let background = priority == Priority::Background;
        loop {
            let rx = {
                let mut state = self.lock();
                let (tx, rx) = oneshot::channel();
                let waiter = (Instant::now(), tx);
                if background {
                    state.background.push_back(waiter);
                } else {
                    state.batch.push_back(waiter);
                }
                state.dispatch();
                rx
            };
            let mut waiting = Waiting {
                admission: Arc::clone(self),
                rx,
                background,
                done: false,
            };
            let handed = (&mut waiting.rx).await.is_ok();
            waiting.done = true;
            if handed {
                return Turn {
                    admission: Arc::clone(self),
                    background,
                };
            }
            // A sender is dropped unsent only after its receiver was closed, which this future
            // prevents while it waits; were it to happen, wait again rather than hold a turn
            // nobody gave.
        }
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Order = Arc<Mutex<Vec<&'static str>>>;

    /// A task that waits for a turn at `priority`, notes `name` in `order` once it has it, and
    /// gives it back.
    fn waiter(
        admission: &Arc<Admission>,
        order: &Order,
        name: &'static str,
        priority: Priority,
    ) -> tokio::task::JoinHandle<()> {
        let (admission, order) = (Arc::clone(admission), Arc::clone(order));
        tokio::spawn(async move {
            let _turn = admission.acquire(priority).await;
            order.lock().unwrap().push(name);
        })
    }

    /// With the only turn held: queues `waiters` in order, advancing the paused clock by each
    /// one's duration after it, then by `before_release`; gives the turn back and returns the
    /// order in which the waiters got it.
    async fn order_of_turns(
        waiters: &[(&'static str, Priority, Duration)],
        before_release: Duration,
    ) -> Vec<&'static str> {
        let admission = Admission::new(1);
        let held = admission.acquire(Priority::Batch).await;
        let order: Order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(name, priority, then) in waiters {
            tasks.push(waiter(&admission, &order, name, priority));
            tokio::task::yield_now().await;
            tokio::time::advance(then).await;
        }
        tokio::time::advance(before_release).await;
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admission.free(), 1);
        let order = order.lock().unwrap().clone();
        order
    }

    #[tokio::test(start_paused = true)]
    async fn batch_waiters_go_before_background_waiters() {
        // Background first, then batch: the batch one still gets the turn first.
        let order = order_of_turns(
            &[
                ("background", Priority::Background, Duration::ZERO),
                ("batch", Priority::Batch, Duration::ZERO),
            ],
            Duration::ZERO,
        )
        .await;
        assert_eq!(order, ["batch", "background"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_background_waiter_goes_first() {
        let order = order_of_turns(
            &[
                ("background", Priority::Background, BACKGROUND_MAX_WAIT),
                ("batch", Priority::Batch, Duration::ZERO),
            ],
            Duration::ZERO,
        )
        .await;
        assert_eq!(order, ["background", "batch"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_background_waiter_does_not_pass_an_older_batch_waiter() {
        // Both are overdue at the release; the batch waiter has waited longer.
        let order = order_of_turns(
            &[
                ("batch", Priority::Batch, Duration::from_millis(1)),
                ("background", Priority::Background, Duration::from_millis(1)),
            ],
            BACKGROUND_MAX_WAIT,
        )
        .await;
        assert_eq!(order, ["batch", "background"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_does_not_lose_the_turn() {
        let admission = Admission::new(1);
        let held = admission.acquire(Priority::Batch).await;
        // A waiter that gives up before its turn comes...
        let abandoned = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move {
                let _turn = admission.acquire(Priority::Batch).await;
            }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        // ...and one whose turn was handed over but who never looked at it.
        let mut handed = Box::pin(admission.acquire(Priority::Batch));
        assert!(futures::poll!(handed.as_mut()).is_pending());
        drop(held);
        drop(handed);
        assert_eq!(admission.free(), 1);
        let again = admission.acquire(Priority::Background).await;
        assert_eq!(admission.free(), 0);
        drop(again);
        assert_eq!(admission.free(), 1);
    }

    #[tokio::test]
    async fn never_more_than_the_limit_at_once() {
        let admission = Admission::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (admission, running, most) = (
                    Arc::clone(&admission),
                    Arc::clone(&running),
                    Arc::clone(&most),
                );
                tokio::spawn(async move {
                    let priority = if i % 2 == 0 {
                        Priority::Batch
                    } else {
                        Priority::Background
                    };
                    let _turn = admission.acquire(priority).await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(admission.free(), 2);
    }
}
