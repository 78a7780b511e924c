//! The hub's handle on one live connection: a delivery queue and a close request, shared
//! between the hub (any thread) and the connection's delivery task (its ntex worker), and the
//! [`Room`] publishers wait on when the connection has too much waiting for it.
//!
//! QoS 1/2 deliveries are bounded by the session's in-flight window, so the queue always takes
//! them; QoS 0 deliveries beyond the capacity are refused (the protocol lets them be dropped).
//! Deliberately small when idle (no allocation until the first delivery): an edge holds tens of
//! thousands of mostly idle connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use broker::router::CloseReason;
use broker::session::Outgoing;

use crate::message::SharedMessage;

/// One message on its way to a connection.
pub type Delivery = Outgoing<SharedMessage>;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Delivery>,
    close: Option<CloseReason>,
    /// The hub let go of the connection (it disconnected or was replaced).
    detached: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// Messages the session keeps behind its in-flight window (the hub updates it).
    session_backlog: AtomicUsize,
    /// Counts every delivery taken and every window opening: a reader that makes progress.
    progress: AtomicU64,
    /// Wakes publishers waiting for this connection's backlog to shrink.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages waiting for the connection; 0 once it is closing or gone.
    fn backlog(&self) -> usize {
        let st = self.lock();
        if st.close.is_some() || st.detached {
            return 0;
        }
        st.queue.len() + self.session_backlog.load(Ordering::Relaxed)
    }
}

/// Why a delivery could not be queued.
#[derive(Debug)]
pub enum Refused {
    /// A QoS 0 delivery found the queue full: dropped, as the protocol allows.
    Full(Delivery),
    /// The connection is closing or gone.
    Closed(Delivery),
}

/// The hub's end. Dropping it detaches the connection's task.
#[derive(Debug)]
pub struct ConnLink {
    pub id: u64,
    capacity: usize,
    shared: Arc<Shared>,
}

/// The delivery task's end.
#[derive(Debug)]
pub struct ConnInbox {
    shared: Arc<Shared>,
}

/// What the delivery task should do next.
#[derive(Debug)]
pub enum Next {
    Deliver(Delivery),
    Close(CloseReason),
    Stop,
}

/// A link and its inbox; `capacity` bounds the deliveries waiting for the socket.
pub fn link(id: u64, capacity: usize) -> (ConnLink, ConnInbox) {
    let shared = Arc::new(Shared::default());
    (ConnLink { id, capacity, shared: shared.clone() }, ConnInbox { shared })
}

impl ConnLink {
    pub fn send(&self, d: Delivery) -> Result<(), Refused> {
        let mut st = self.shared.lock();
        if st.close.is_some() {
            return Err(Refused::Closed(d));
        }
        if d.packet_id.is_none() && st.queue.len() >= self.capacity {
            return Err(Refused::Full(d));
        }
        st.queue.push_back(d);
        drop(st);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.shared.lock().close.get_or_insert(reason);
        self.shared.wake.notify_one();
        self.shared.room.notify_waiters();
    }

    /// Records how many messages the session keeps behind its window; a shrinking backlog
    /// counts as progress and wakes waiting publishers.
    pub fn set_session_backlog(&self, n: usize) {
        let before = self.shared.session_backlog.swap(n, Ordering::Relaxed);
        if n < before {
            self.shared.progress.fetch_add(1, Ordering::Relaxed);
            self.shared.room.notify_waiters();
        }
    }

    /// What publishers wait on while this connection has too much waiting for it.
    pub fn room(&self) -> Room {
        Room { shared: self.shared.clone(), link_id: self.id }
    }

    /// Messages waiting for this connection: in its queue and behind its session's window.
    pub fn backlog(&self) -> usize {
        self.shared.backlog()
    }
}

impl Drop for ConnLink {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_waiters();
    }
}

/// A publisher's view of a subscriber's connection: how much waits for it, whether it reads.
#[derive(Debug, Clone)]
pub struct Room {
    shared: Arc<Shared>,
    pub link_id: u64,
}

impl Room {
    /// Messages waiting for the connection; 0 once it is closing or gone (nothing to wait for).
    pub fn backlog(&self) -> usize {
        self.shared.backlog()
    }

    /// Grows whenever the connection takes a delivery or its window opens.
    pub fn progress(&self) -> u64 {
        self.shared.progress.load(Ordering::Relaxed)
    }

    /// Waits until the backlog is below `low`. Returns false if `stall` passed with no progress
    /// at all: the connection has stopped reading.
    pub async fn wait_below(&self, low: usize, stall: std::time::Duration) -> bool {
        loop {
            let woken = self.shared.room.notified();
            if self.backlog() < low {
                return true;
            }
            let seen = self.progress();
            if tokio::time::timeout(stall, woken).await.is_err() && self.progress() == seen {
                return self.backlog() < low;
            }
        }
    }
}

impl ConnInbox {
    /// Waits for the next thing to do. A close request goes before queued deliveries.
    pub async fn next(&self) -> Next {
        loop {
            // Registered before looking, so a wake-up between the check and the wait is kept.
            let woken = self.shared.wake.notified();
            {
                let mut st = self.shared.lock();
                if let Some(reason) = st.close {
                    return Next::Close(reason);
                }
                if let Some(d) = st.queue.pop_front() {
                    if st.queue.capacity() > 64 && st.queue.is_empty() {
                        // Give back a burst's memory once it has drained.
                        st.queue = VecDeque::new();
                    }
                    drop(st);
                    self.shared.progress.fetch_add(1, Ordering::Relaxed);
                    self.shared.room.notify_waiters();
                    return Next::Deliver(d);
                }
                if st.detached {
                    return Next::Stop;
                }
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use broker::QoS;
    use broker::session::Outgoing;

    fn delivery(n: u8) -> Delivery {
        let msg = Message::new(
            ntex_bytes::ByteString::from_static("t"),
            ntex_bytes::Bytes::from(vec![n]),
            QoS::AtMostOnce,
            false,
        );
        Outgoing::new(Arc::new(msg), QoS::AtMostOnce, false, vec![])
    }

    #[tokio::test]
    async fn deliveries_in_order_then_close_first() {
        let (link, inbox) = link(1, 2);
        link.send(delivery(1)).expect("room");
        link.send(delivery(2)).expect("room");
        assert!(matches!(link.send(delivery(3)), Err(Refused::Full(_))), "QoS 0 beyond capacity is refused");
        let mut qos1 = delivery(4);
        qos1.packet_id = std::num::NonZeroU16::new(1);
        link.send(qos1).expect("QoS 1 is bounded by the window, always taken");
        assert!(matches!(inbox.next().await, Next::Deliver(d) if d.msg.payload[0] == 1));
        link.close(CloseReason::SlowConsumer);
        assert!(matches!(inbox.next().await, Next::Close(CloseReason::SlowConsumer)), "close wins over queued");
        assert!(matches!(link.send(delivery(5)), Err(Refused::Closed(_))));
    }

    #[tokio::test]
    async fn publishers_wait_for_room_until_the_reader_catches_up_or_stalls() {
        let stall = std::time::Duration::from_millis(300);
        let (link, inbox) = link(1, 100);
        for n in 0..4 {
            link.send(delivery(n)).expect("room");
        }
        link.set_session_backlog(4);
        let room = link.room();
        assert_eq!(room.backlog(), 8);
        // A reader that keeps taking deliveries lets the publisher go once below the mark.
        let reader = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                inbox.next().await;
            }
            inbox
        });
        assert!(room.wait_below(5, stall).await, "progress, then room");
        let inbox = reader.await.expect("join");
        // A reader that stops: after the stall time with no progress, the wait gives up.
        assert!(!room.wait_below(1, stall).await);
        // Closing the connection leaves nothing to wait for.
        link.close(CloseReason::SlowConsumer);
        assert!(room.wait_below(1, stall).await);
        drop(inbox);
    }

    #[tokio::test]
    async fn wakes_on_send_and_stops_when_detached() {
        let (link, inbox) = link(1, 8);
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match inbox.next().await {
                    Next::Deliver(d) => got.push(d.msg.payload[0]),
                    Next::Close(_) => unreachable!("nobody closed"),
                    Next::Stop => return got,
                }
            }
        });
        tokio::task::yield_now().await;
        link.send(delivery(7)).expect("room");
        link.send(delivery(8)).expect("room");
        drop(link);
        assert_eq!(task.await.expect("join"), vec![7, 8]);
    }
}
