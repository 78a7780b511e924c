//! The hub's handle on one live connection: a bounded delivery queue and a close request,
//! shared between the hub (any thread) and the connection's delivery task (its ntex worker).
//!
//! Deliberately small when idle (no allocation until the first delivery): an edge holds tens of
//! thousands of mostly idle connections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::hub::{CloseReason, Delivery};

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
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a delivery could not be queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full: the connection has been asked to close as a slow consumer.
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
        if st.queue.len() >= self.capacity {
            st.close = Some(CloseReason::SlowConsumer);
            drop(st);
            self.shared.wake.notify_one();
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
    }
}

impl Drop for ConnLink {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.wake.notify_one();
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
        assert!(matches!(link.send(delivery(3)), Err(Refused::Full(_))));
        assert!(matches!(inbox.next().await, Next::Close(CloseReason::SlowConsumer)), "close wins over queued");
        assert!(matches!(link.send(delivery(4)), Err(Refused::Closed(_))));
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
