//! Flow control from subscribers back to publishers: a PUBACK is a promise, so overload slows
//! the sender instead of dropping what was acknowledged.
//!
//! When a publish leaves a subscriber's connection with more waiting for it than the high-water
//! mark (`limits.max_queued_messages`), the publisher's handler holds its acknowledgement until
//! that backlog is below half the mark, and the connection's [`Gate`] holds its further
//! PUBLISHes meanwhile (acknowledgements and pings still pass, so a client that also
//! subscribes keeps reading). Past a few held PUBLISHes the dispatcher takes nothing more from
//! the connection: ntex-mqtt stops reading the socket and TCP slows the client down. A
//! subscriber that takes nothing at all for `limits.max_stall_secs` while publishers wait is
//! closed (v5 0x97) and its QoS 1/2 messages stay in its session.
//!
//! [`Turns`] keeps one connection's PUBLISHes routed in the order they arrived even though the
//! dispatcher runs their handlers concurrently (MQTT topics are ordered, [MQTT-4.6.0-5]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::hub::Hub;
use crate::link::Room;
use crate::metrics as m;

/// Waits until every connection in `pressure` has room; closes those that stopped reading.
pub async fn wait_for_room(hub: &Hub, pressure: Vec<Room>, stall: Duration) {
    if pressure.is_empty() {
        return;
    }
    metrics::counter!(m::PUBLISHERS_WAITED).increment(1);
    let low = hub.low_water();
    for room in pressure {
        if !room.wait_below(low, stall).await {
            hub.close_stalled(&room);
        }
    }
}

/// Per-connection order of PUBLISH handlers: each takes a ticket before its first await and
/// routes when its turn comes.
#[derive(Debug, Default)]
pub struct Turns {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose handlers were dropped before their turn (the connection is going away).
    abandoned: RefCell<BTreeSet<u64>>,
    waiting: RefCell<Vec<Waker>>,
}

/// One handler's place in line; its turn ends when it is dropped.
#[derive(Debug)]
pub struct Turn<'a> {
    turns: &'a Turns,
    ticket: u64,
}

impl Turns {
    /// Takes the next place in line. Call before the handler's first await.
    pub fn take(&self) -> Turn<'_> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Turn { turns: self, ticket }
    }

    fn advance(&self) {
        let mut next = self.serving.get() + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        self.serving.set(next);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for w in waiting {
            w.wake();
        }
    }
}

impl Turn<'_> {
    /// Resolves when every earlier handler of the connection has routed.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.turns.serving.get() == self.ticket {
                Poll::Ready(())
            } else {
                self.turns.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.turns.serving.get() == self.ticket {
            self.turns.advance();
        } else {
            self.turns.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// Closed while one of the connection's publishes waits for room: further PUBLISHes wait at
/// it, and past [`MAX_HELD_PUBLISHES`] of them the dispatcher takes no packet at all.
#[derive(Debug, Default)]
pub struct Gate {
    held: Cell<u32>,
    /// PUBLISHes waiting at the gate.
    queued: Cell<usize>,
    waiting: RefCell<Vec<Waker>>,
}

/// PUBLISHes of one connection that may wait at a closed gate before its socket is not read.
pub const MAX_HELD_PUBLISHES: usize = 16;

/// A PUBLISH waiting at the gate; counted while it lives.
#[derive(Debug)]
struct Queued<'a>(&'a Gate);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.set(self.0.queued.get().saturating_sub(1));
        self.0.wake();
    }
}

/// Keeps a [`Gate`] closed while it lives.
#[derive(Debug)]
pub struct Hold<'a>(&'a Gate);

impl Gate {
    pub fn hold(&self) -> Hold<'_> {
        self.held.set(self.held.get() + 1);
        Hold(self)
    }

    /// Resolves when no publish of the connection is waiting for room: a PUBLISH passes.
    pub async fn pass(&self) {
        self.queued.set(self.queued.get() + 1);
        let _queued = Queued(self);
        self.until(|g| g.held.get() == 0).await;
    }

    /// Resolves when the dispatcher may take another packet: not too many PUBLISHes wait.
    pub async fn readable(&self) {
        self.until(|g| g.queued.get() < MAX_HELD_PUBLISHES).await;
    }

    async fn until(&self, ok: impl Fn(&Gate) -> bool) {
        poll_fn(|cx| {
            if ok(self) {
                Poll::Ready(())
            } else {
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for w in waiting {
            w.wake();
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let held = self.0.held.get().saturating_sub(1);
        self.0.held.set(held);
        if held == 0 {
            self.0.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Context;

    fn poll_once(f: impl std::future::Future<Output = ()>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        pin!(f).poll(&mut cx).is_ready()
    }

    #[test]
    fn turns_go_in_ticket_order_and_skip_the_abandoned() {
        let turns = Turns::default();
        let first = turns.take();
        let second = turns.take();
        let third = turns.take();
        assert!(!poll_once(second.ready()), "the second waits for the first");
        assert!(poll_once(first.ready()));
        drop(first);
        assert!(poll_once(second.ready()));
        let fourth = turns.take();
        drop(third); // abandoned before its turn
        drop(second);
        assert!(poll_once(fourth.ready()), "an abandoned turn does not block the line");
    }

    #[test]
    fn the_gate_opens_when_the_last_hold_ends() {
        let gate = Gate::default();
        assert!(poll_once(gate.pass()));
        let a = gate.hold();
        let b = gate.hold();
        assert!(!poll_once(gate.pass()));
        drop(a);
        assert!(!poll_once(gate.pass()));
        drop(b);
        assert!(poll_once(gate.pass()));
    }

    #[test]
    fn too_many_held_publishes_stop_reading() {
        let gate = Gate::default();
        let _hold = gate.hold();
        let mut held: Vec<_> = (0..MAX_HELD_PUBLISHES).map(|_| Box::pin(gate.pass())).collect();
        let mut cx = Context::from_waker(Waker::noop());
        for p in &mut held {
            assert!(p.as_mut().poll(&mut cx).is_pending());
        }
        assert!(!poll_once(gate.readable()), "the dispatcher waits");
        held.pop();
        assert!(poll_once(gate.readable()), "one fewer waiting: reading resumes");
    }
}
