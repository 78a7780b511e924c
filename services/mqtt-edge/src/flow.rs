//! Flow control from subscribers back to publishers: a PUBACK is a promise, so overload slows
//! the sender instead of dropping what was acknowledged.
//!
//! When a publish leaves a subscriber's connection with more waiting for it than the high-water
//! mark (`limits.max_backlog`, 64), the publisher's handler holds its acknowledgement until
//! that backlog is below half the mark; a QoS 1/2 client stops at its receive maximum, and past
//! a few held PUBLISHes the connection's [`Gate`] makes the dispatcher take nothing more from
//! it: ntex-mqtt stops reading the socket and TCP slows the client down (QoS 0 floods). A
//! subscriber that takes nothing at all for `limits.max_stall_secs` while publishers wait is
//! closed (v5 0x97) and its QoS 1/2 messages stay in its session.
//!
//! [`Line`] keeps one connection's PUBLISHes routed in the order they arrived even though the
//! dispatcher runs their handlers concurrently (MQTT topics are ordered, [MQTT-4.6.0-5]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::hub::Hub;
use crate::link::Room;
use crate::metrics as m;

/// Who routed, and so how much may wait for a subscriber's connection before they wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    /// A client's PUBLISH: its PUBACK waits at `limits.max_backlog`, which bounds the latency
    /// a fast publisher piles up for a slower reader.
    Publisher,
    /// The edge itself (messages from other edges, catch-ups, stream replays): it waits only
    /// where the session's queue would overflow. One loop routes for every subscriber (waiting
    /// holds up all of them), and a replay's requester may not read until it is answered.
    Edge,
}

/// Waits until every connection in `pressure` has room; closes those that stopped reading.
pub async fn wait_for_room(hub: &Hub, pressure: Vec<Room>, stall: Duration, router: Router) {
    if pressure.is_empty() {
        return;
    }
    let high = hub.high_water(router);
    let low = (high / 2).max(1);
    let mut counted = false;
    for room in pressure {
        // The edge's pressure is gathered at the publisher's mark, which is lower.
        if router == Router::Edge && room.backlog() < high {
            continue;
        }
        if !counted {
            metrics::counter!(m::PUBLISHERS_WAITED).increment(1);
            counted = true;
        }
        if !room.wait_below(low, stall).await {
            hub.close_stalled(&room);
        }
    }
}

/// Per-connection order of PUBLISH handlers: each takes a ticket before its first await and
/// routes when its turn comes.
#[derive(Debug, Default)]
pub struct Line {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose handlers were dropped before their turn (the connection is going away).
    abandoned: RefCell<BTreeSet<u64>>,
    waiting: RefCell<Vec<Waker>>,
}

/// One handler's place in line; its turn ends when it is dropped. It keeps the line alive
/// itself: ntex may drop a connection's state before the handler futures still waiting on it,
/// and a turn given up then must not write to freed memory.
#[derive(Debug)]
pub struct Place {
    line: Rc<Line>,
    ticket: u64,
}

impl Line {
    /// Takes the next place in line. Call before the handler's first await.
    pub fn take(self: &Rc<Self>) -> Place {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Place { line: self.clone(), ticket }
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

impl Place {
    /// Resolves when every earlier handler of the connection has routed.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.line.serving.get() == self.ticket {
                Poll::Ready(())
            } else {
                self.line.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.line.serving.get() == self.ticket {
            self.line.advance();
        } else {
            self.line.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// What a connection knows of how ntex-mqtt runs its handlers. ntex-mqtt polls a handler on
/// the connection's dispatcher task when no other handler of the connection is pending, and
/// spawns it otherwise: spawned handlers first run in arrival order, but one polled on the
/// dispatcher may run before handlers spawned earlier that have not run yet. That can only
/// happen once a handler polled on the dispatcher has had to wait (handlers were spawned
/// meanwhile); from then on the connection's handlers polled on the dispatcher take the slower,
/// ordered way ([`places`]). Connections whose publishes never wait (no persistent subscriber,
/// no stream, no bus, room everywhere) keep ntex's fast path.
#[derive(Debug, Default)]
pub struct Dispatch {
    /// The dispatcher's task, as the guard sees it when asked whether a packet may be taken.
    task: Cell<Option<tokio::task::Id>>,
    /// A handler polled on the dispatcher has waited: handlers spawned meanwhile may not have
    /// run when the next one is polled on the dispatcher. Never cleared: ntex does not say how
    /// many handlers it spawned, so nothing tells when they have all run.
    overtaking: Cell<bool>,
}

impl Dispatch {
    /// The guard is asked for readiness on the dispatcher's task.
    pub fn on_dispatcher(&self) {
        self.task.set(tokio::task::try_id());
    }

    fn polled_by_dispatcher(&self) -> bool {
        let here = tokio::task::try_id();
        here.is_some() && here == self.task.get()
    }
}

/// Runs a handler, noting when it waits while polled by the dispatcher (see [`Dispatch`]).
///
/// The handler is boxed: its state is kilobytes, and every layer of ntex's service stack
/// above it would hold it whole and copy it as each layer's future is made (a PUBLISH's call
/// future was 8.9 KB, copied into its box per message: BENCHMARKS.md).
pub fn watched<'a, T>(dispatch: &'a Dispatch, handler: impl Future<Output = T> + 'a) -> impl Future<Output = T> + 'a {
    let mut handler = Box::pin(handler);
    poll_fn(move |cx| {
        let polled = handler.as_mut().poll(cx);
        if polled.is_pending() && dispatch.polled_by_dispatcher() {
            dispatch.overtaking.set(true);
        }
        polled
    })
}

/// Takes a PUBLISH handler's places in both lines (routing and stream appends) in the order the
/// PUBLISHes arrived. A handler polled by the dispatcher while earlier handlers may not have run
/// yet takes its places from a task spawned now, which runs behind them.
pub async fn places(line: &Rc<Line>, appends: &Rc<Line>, dispatch: &Dispatch) -> (Place, Place) {
    if !(dispatch.overtaking.get() && dispatch.polled_by_dispatcher()) {
        return (line.take(), appends.take());
    }
    let (l, a) = (line.clone(), appends.clone());
    match tokio::task::spawn_local(async move { (l.take(), a.take()) }).await {
        Ok(places) => places,
        // The runtime is going away with the connection: no order left to keep.
        Err(_) => (line.take(), appends.take()),
    }
}

/// Counts the connection's PUBLISHes waiting for room; past [`MAX_HELD_PUBLISHES`] of them the
/// dispatcher takes no further packet from the connection, so its socket is not read.
#[derive(Debug, Default)]
pub struct Gate {
    held: Cell<usize>,
    /// The connection is shutting down: nothing waits any more.
    closed: Cell<bool>,
    waiting: RefCell<Vec<Waker>>,
}

/// PUBLISHes of one connection that may wait for room before its socket is not read. Below
/// it, acknowledgements and pings keep flowing, so a client that subscribes to what it
/// publishes still reads its own deliveries.
pub const MAX_HELD_PUBLISHES: usize = 16;

/// A PUBLISH waiting for room; counted while it lives. Like [`Place`], it keeps the gate alive.
#[derive(Debug)]
pub struct Hold(Rc<Gate>);

impl Gate {
    pub fn hold(self: &Rc<Self>) -> Hold {
        self.held.set(self.held.get() + 1);
        Hold(self.clone())
    }

    /// Resolves when the dispatcher may take another packet (true), or when the connection
    /// is shutting down (false): then the dispatcher's services must not be asked any more.
    pub async fn readable(&self) -> bool {
        poll_fn(|cx| {
            if self.closed.get() || self.held.get() < MAX_HELD_PUBLISHES {
                Poll::Ready(!self.closed.get())
            } else {
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The connection is shutting down: every wait ends.
    pub fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for w in waiting {
            w.wake();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.held.set(self.0.held.get().saturating_sub(1));
        self.0.wake();
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
        let turns = Rc::new(Line::default());
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
    fn too_many_held_publishes_stop_reading_until_one_is_let_go() {
        let gate = Rc::new(Gate::default());
        let readable = |g: &Gate| poll_once(async { assert!(g.readable().await) });
        let mut held: Vec<Hold> = (0..MAX_HELD_PUBLISHES - 1).map(|_| gate.hold()).collect();
        assert!(readable(&gate), "below the limit the dispatcher goes on");
        held.push(gate.hold());
        assert!(!readable(&gate), "the dispatcher waits");
        held.pop();
        assert!(readable(&gate), "one fewer waiting: reading resumes");
    }

    #[test]
    fn closing_ends_every_wait() {
        let gate = Rc::new(Gate::default());
        let _held: Vec<Hold> = (0..MAX_HELD_PUBLISHES).map(|_| gate.hold()).collect();
        let mut ready = Box::pin(gate.readable());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(ready.as_mut().poll(&mut cx).is_pending());
        gate.close();
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Ready(false));
    }
}

#[cfg(test)]
mod outliving {
    use super::*;

    /// What ntex may do when a connection goes away: drop its state, then the handlers still
    /// waiting in line. Giving up a turn or a hold then stays within memory they keep alive.
    #[test]
    fn places_and_holds_outlive_the_connection_state() {
        struct State {
            line: Rc<Line>,
            gate: Rc<Gate>,
        }
        let st = State { line: Rc::default(), gate: Rc::default() };
        let first = st.line.take();
        let waiting = st.line.take();
        let hold = st.gate.hold();
        drop(st);
        drop(waiting);
        drop(first);
        drop(hold);
    }
}
