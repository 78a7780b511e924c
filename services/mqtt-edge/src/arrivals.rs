//! Sessions that arrive here at about the same time with a catch-up share the first pass of
//! their replays (`behind::catch_up`). A pass is a consumer on the bus's stream, and JetStream
//! makes consumers one after another: when every client of an edge that stopped or died came
//! here at once, each with a consumer of its own, a third of 10 000 waited past
//! `behind::ARRIVAL` for theirs, and their queues went out before what they had missed.
//!
//! - Arrivals wait in one queue. A pass takes those waiting, as long as their subjects together
//!   stay within [`MAX_SUBJECTS`] (at least one session, whatever it has), and reads what the
//!   bus kept on those subjects from the earliest start among them. Each session takes of it
//!   what its own pass would have: from its own start, without what its own `Skip` leaves
//!   out (`catch_up::replay_to_each`).
//! - At most [`AT_ONCE`] passes read at once; what arrives meanwhile waits for the next, so a
//!   storm is read in a few passes per second of it rather than one per session, and a lone
//!   arrival is read at once.
//! - A session that stopped waiting (`behind::ARRIVAL` passed) before its pass began is left
//!   out of it; its later passes are its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::catch_up::{MAX_REPLAY_SUBJECTS, Missed, replay_to_each};
use crate::hub::Hub;
use crate::metrics as m;

/// The most subjects one pass reads for the sessions it serves together (past it, a NATS
/// consumer's filters cost more than they save).
pub const MAX_SUBJECTS: usize = MAX_REPLAY_SUBJECTS;

/// Passes that read at once.
pub const AT_ONCE: usize = 4;

/// A session waiting for the first pass of its replay.
#[derive(Debug)]
pub struct Arrival {
    pub session: Arc<str>,
    /// What its replay gives it.
    pub missed: Missed,
    /// The bus subjects of its subscriptions.
    pub subjects: Vec<String>,
}

struct Waiting {
    arrival: Arrival,
    /// The newest a message the pass read was kept (Unix ms; the arrival's start if none).
    done: oneshot::Sender<Result<u64, String>>,
}

/// The queue of sessions waiting for their first pass.
#[derive(Debug)]
pub struct Arrivals {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Arrivals {
    /// The queue of `hub`'s arrivals and the task that reads for them (it ends with the hub,
    /// or once the queue is dropped).
    pub fn start(hub: Weak<Hub>, stall: Duration) -> (Arrivals, tokio::task::JoinHandle<()>) {
        let (queue, waiting) = mpsc::unbounded_channel();
        (Arrivals { queue }, tokio::spawn(run(hub, waiting, stall)))
    }

    /// The first pass for `arrival`, shared with the sessions arriving with it; returns the
    /// newest a message it read was kept (Unix ms; `since_ms` if it read none).
    pub async fn first_pass(&self, arrival: Arrival) -> Result<u64, String> {
        if arrival.subjects.is_empty() {
            return Ok(arrival.missed.since_ms);
        }
        let (done, answer) = oneshot::channel();
        let stops = || "the edge stops".to_owned();
        self.queue.send(Waiting { arrival, done }).map_err(|_| stops())?;
        answer.await.map_err(|_| stops())?
    }
}

async fn run(hub: Weak<Hub>, mut queue: mpsc::UnboundedReceiver<Waiting>, stall: Duration) {
    let turns = Arc::new(Semaphore::new(AT_ONCE));
    let mut next = None;
    loop {
        let Ok(turn) = turns.clone().acquire_owned().await else { return };
        let first = match next.take() {
            Some(w) => w,
            None => match queue.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut pass = vec![first];
        let mut subjects: BTreeSet<String> = pass[0].arrival.subjects.iter().cloned().collect();
        while let Ok(w) = queue.try_recv() {
            let more = w.arrival.subjects.iter().filter(|s| !subjects.contains(*s)).count();
            if subjects.len() + more > MAX_SUBJECTS {
                next = Some(w);
                break;
            }
            subjects.extend(w.arrival.subjects.iter().cloned());
            pass.push(w);
        }
        // Those that stopped waiting are left out.
        pass.retain(|w| !w.done.is_closed());
        if pass.is_empty() {
            continue;
        }
        let Some(hub) = hub.upgrade() else { return };
        tokio::spawn(async move {
            let subjects: BTreeSet<&String> = pass.iter().flat_map(|w| &w.arrival.subjects).collect();
            let subjects: Vec<String> = subjects.into_iter().cloned().collect();
            let answer = read(&hub, &pass, &subjects, stall).await;
            drop(turn);
            for w in pass {
                let _ = w.done.send(answer.clone());
            }
        });
    }
}

/// One pass for the sessions `pass` waits for, on `subjects` (theirs).
async fn read(hub: &Hub, pass: &[Waiting], subjects: &[String], stall: Duration) -> Result<u64, String> {
    let Some(link) = hub.cluster() else { return Err("no bus".to_owned()) };
    let sessions: HashMap<&str, &Missed> = pass.iter().map(|w| (&*w.arrival.session, &w.arrival.missed)).collect();
    let (newest, _) = replay_to_each(hub, link, subjects, &sessions, stall).await?;
    metrics::counter!(m::ARRIVAL_PASSES).increment(1);
    tracing::debug!(sessions = pass.len(), subjects = subjects.len(), "read the bus for sessions arriving together");
    Ok(newest)
}
