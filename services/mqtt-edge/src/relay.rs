//! Outcomes of journal writes and stream appends handed back to the worker thread that waits
//! for them, with one wake of that worker per write however many PUBLISHes it answers.
//!
//! The worker completes them on its own thread, so the tasks they wake queue up one after the
//! other on its local run queue, and their PUBACKs leave together: ntex-io sends a
//! connection's buffered writes from a task it queues behind them. Woken one by one from the
//! writer's thread, each of those tasks came off the runtime's remote queue after that send
//! had run, and each PUBACK went out in a `send` (and a wake of the client) of its own.

use std::cell::RefCell;

use broker::streams::Stamp;
use tokio::sync::{mpsc, oneshot};

/// What one waiter is told.
#[derive(Debug)]
pub enum Outcome {
    /// Its journal changes were written, or not.
    Written(oneshot::Sender<bool>, bool),
    /// Its message's place in its durable stream, or none if the append failed.
    Stamped(oneshot::Sender<Option<Stamp>>, Option<Stamp>),
}

impl Outcome {
    fn complete(self) {
        match self {
            Outcome::Written(done, ok) => drop(done.send(ok)),
            Outcome::Stamped(done, stamp) => drop(done.send(stamp)),
        }
    }

    fn nobody_waits(&self) -> bool {
        match self {
            Outcome::Written(done, _) => done.is_closed(),
            Outcome::Stamped(done, _) => done.is_closed(),
        }
    }
}

/// A worker thread's relay, to send outcomes to from any thread.
#[derive(Clone, Debug)]
pub struct Relay(mpsc::UnboundedSender<Vec<Outcome>>);

thread_local! {
    static HERE: RefCell<Option<Relay>> = const { RefCell::new(None) };
}

/// Starts this thread's relay unless one runs. Only on a thread that runs a tokio `LocalSet`
/// (ntex's workers do); the relay ends with it.
pub fn start_here() {
    HERE.with(|here| {
        let mut here = here.borrow_mut();
        if here.as_ref().is_some_and(Relay::runs) {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Outcome>>();
        ntex::rt::spawn(async move {
            while let Some(outcomes) = rx.recv().await {
                complete(outcomes);
            }
        });
        *here = Some(Relay(tx));
    });
}

/// This thread's relay, if it has one that runs.
pub fn here() -> Option<Relay> {
    // `try_with`: a connection dropped while the thread's locals go asks too.
    HERE.try_with(|here| here.borrow().as_ref().filter(|r| r.runs()).cloned()).ok().flatten()
}

/// Whether this thread has a relay that runs (it is an edge worker's), without a copy of it.
pub fn runs_here() -> bool {
    HERE.try_with(|here| here.borrow().as_ref().is_some_and(Relay::runs)).unwrap_or(false)
}

impl Relay {
    fn runs(&self) -> bool {
        !self.0.is_closed()
    }

    fn is_here(&self) -> bool {
        HERE.try_with(|here| here.borrow().as_ref().is_some_and(|r| r.0.same_channel(&self.0))).unwrap_or(false)
    }
}

fn complete(outcomes: Vec<Outcome>) {
    outcomes.into_iter().for_each(Outcome::complete);
}

/// The outcomes of one write, gathered per relay and sent with one wake each
/// ([`Outcomes::send`]); those of waiters without a relay are sent at once.
#[derive(Default)]
pub struct Outcomes(Vec<(Relay, Vec<Outcome>)>);

impl Outcomes {
    pub fn add(&mut self, relay: Option<Relay>, outcome: Outcome) {
        if outcome.nobody_waits() {
            return; // a subscriber's PUBACK, say: no worker to wake
        }
        let Some(relay) = relay.filter(|r| !r.is_here()) else {
            outcome.complete(); // no relay, or this thread's: nobody to wake
            return;
        };
        match self.0.iter_mut().find(|(r, _)| r.0.same_channel(&relay.0)) {
            Some((_, outcomes)) => outcomes.push(outcome),
            None => self.0.push((relay, vec![outcome])),
        }
    }

    /// Hands every relay its outcomes (or completes them here if its worker is gone).
    pub fn send(self) {
        for (relay, outcomes) in self.0 {
            if let Err(mpsc::error::SendError(outcomes)) = relay.0.send(outcomes) {
                complete(outcomes);
            }
        }
    }
}

/// Runs `f` as an edge worker would: on a `LocalSet` with a relay.
#[cfg(test)]
pub(crate) async fn on_a_worker<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    tokio::task::LocalSet::new()
        .run_until(async {
            start_here();
            f().await
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Outcomes` of one write, sent from the writer's thread.
    fn send_from_another_thread(outcomes: Vec<(Option<Relay>, oneshot::Sender<bool>, bool)>) {
        std::thread::spawn(move || {
            let mut gathered = Outcomes::default();
            for (relay, done, ok) in outcomes {
                gathered.add(relay, Outcome::Written(done, ok));
            }
            gathered.send();
        })
        .join()
        .expect("sent");
    }

    #[tokio::test]
    async fn outcomes_reach_their_waiters_on_the_thread_of_their_relay() {
        tokio::task::LocalSet::new()
            .run_until(async {
                start_here();
                let relay = here().expect("a relay runs here");
                assert!(runs_here());
                let (one, mut first) = oneshot::channel();
                let (two, mut second) = oneshot::channel();
                let (three, mut direct) = oneshot::channel();
                let (four, gone) = oneshot::channel();
                drop(gone);
                send_from_another_thread(vec![
                    (Some(relay.clone()), one, true),
                    (Some(relay.clone()), two, false),
                    (None, three, true),
                    (Some(relay), four, true),
                ]);
                // Not completed yet: the relay's task on this thread completes them.
                assert!(first.try_recv().is_err() && second.try_recv().is_err());
                assert_eq!(direct.try_recv(), Ok(true), "a waiter without a relay is completed at once");
                assert_eq!(first.await, Ok(true));
                assert_eq!(second.await, Ok(false));
            })
            .await;
    }

    #[tokio::test]
    async fn a_relay_whose_worker_is_gone_is_not_used_and_its_outcomes_still_arrive() {
        let relay = tokio::task::LocalSet::new()
            .run_until(async {
                start_here();
                here().expect("a relay runs here")
            })
            .await;
        // That LocalSet is dropped: its relay no longer runs.
        assert!(here().is_none() && !runs_here());
        let (done, mut outcome) = oneshot::channel();
        send_from_another_thread(vec![(Some(relay), done, true)]);
        assert_eq!(outcome.try_recv(), Ok(true));
        // A new worker on this thread gets a relay of its own.
        tokio::task::LocalSet::new()
            .run_until(async {
                start_here();
                assert!(here().is_some());
            })
            .await;
    }

    #[test]
    fn asking_for_the_relay_while_the_threads_locals_go_is_answered() {
        struct AsksOnDrop;
        impl Drop for AsksOnDrop {
            fn drop(&mut self) {
                assert!(here().is_none() && !runs_here(), "no relay runs");
            }
        }
        thread_local! {
            static ASKS: AsksOnDrop = const { AsksOnDrop };
        }
        std::thread::spawn(|| {
            // Dropped after the relay's local, which comes later (in the reverse order).
            ASKS.with(|_| {});
            assert!(here().is_none() && !runs_here());
        })
        .join()
        .expect("the thread ended without a panic");
    }
}
