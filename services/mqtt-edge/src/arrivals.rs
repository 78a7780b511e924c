//! Sessions that arrive here at about the same time with a catch-up share the first pass of
//! their replays (`behind::catch_up`). A pass is a consumer on the bus's stream, and JetStream
//! makes consumers one after another: when every client of an edge that stopped or died came
//! here at once, each with a consumer of its own, a third of 10 000 waited past
//! `behind::ARRIVAL` for theirs, and their queues went out before what they had missed.
//!
//! - Arrivals wait in one queue. A pass takes the first waiting, and those after it whose
//!   subjects fit with theirs within [`MAX_SUBJECTS`] and whose replay starts within
//!   [`SPAN_MS`] of its own (one that starts far earlier would make the others read all it
//!   reads), and reads what the bus kept on those subjects from the earliest start among
//!   them. Each session takes of it what its own pass would have: from its own start,
//!   without what its own `Skip` leaves out (`catch_up::replay_to_each`).
//! - At most [`AT_ONCE`] passes read at once; what arrives meanwhile waits for the next, so a
//!   storm is read in a few passes per second of it rather than one per session, and a lone
//!   arrival is read at once.
//! - A session that stopped waiting (`behind::ARRIVAL` passed) before its pass began is left
//!   out of it, and a pass stops reading once none of its sessions waits; their later passes
//!   are their own.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::catch_up::{MAX_REPLAY_SUBJECTS, Missed, replay_to_each};
use crate::hub::Hub;
use crate::message::now_ms;
use crate::metrics as m;

/// The most subjects one pass reads for the sessions it serves together (past it, a NATS
/// consumer's filters cost more than they save).
pub const MAX_SUBJECTS: usize = MAX_REPLAY_SUBJECTS;

/// Passes that read at once.
pub const AT_ONCE: usize = 4;

/// How far from the start of a pass's first session the start of another it reads for may be
/// (either way).
pub const SPAN_MS: u64 = crate::catch_up::MOVE_MARGIN_MS;

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
    let mut pending = VecDeque::new();
    loop {
        let Ok(turn) = turns.clone().acquire_owned().await else { return };
        if pending.is_empty() {
            match queue.recv().await {
                Some(w) => pending.push_back(w),
                None => return,
            }
        }
        while let Ok(w) = queue.try_recv() {
            pending.push_back(w);
        }
        // Those that stopped waiting are left out.
        pending.retain(|w: &Waiting| !w.done.is_closed());
        let Some(hub) = hub.upgrade() else { return };
        let oldest_kept = hub.cluster().map_or(now_ms(), |l| l.oldest_kept_ms());
        let (pass, subjects) = next_pass(&mut pending, oldest_kept);
        if !pass.is_empty() {
            tokio::spawn(serve(hub, pass, subjects, turn, stall));
        }
    }
}

/// The sessions of the next pass, and their subjects: the first of `pending`, and those after
/// it whose subjects fit with theirs within [`MAX_SUBJECTS`] and whose replay starts (no
/// further back than the bus keeps: `oldest_kept_ms`) within [`SPAN_MS`] of the first's. One
/// that starts far earlier would make the others read all that it reads.
fn next_pass(pending: &mut VecDeque<Waiting>, oldest_kept_ms: u64) -> (Vec<Waiting>, Vec<String>) {
    let start = |w: &Waiting| w.arrival.missed.since_ms.max(oldest_kept_ms);
    let Some(first) = pending.pop_front() else { return (Vec::new(), Vec::new()) };
    let at = start(&first);
    let mut subjects: BTreeSet<String> = first.arrival.subjects.iter().cloned().collect();
    let mut pass = vec![first];
    let mut rest = VecDeque::with_capacity(pending.len());
    for w in pending.drain(..) {
        let more = w.arrival.subjects.iter().filter(|s| !subjects.contains(*s)).count();
        if start(&w).abs_diff(at) <= SPAN_MS && subjects.len() + more <= MAX_SUBJECTS {
            subjects.extend(w.arrival.subjects.iter().cloned());
            pass.push(w);
        } else {
            rest.push_back(w);
        }
    }
    *pending = rest;
    // Only the first may bring more than the most on its own.
    (pass, crate::catch_up::within_most(subjects))
}

/// Reads for `pass` on `subjects` (theirs) and answers each session; the read stops if none
/// of them waits any more (their own passes give them what it would have).
async fn serve(hub: Arc<Hub>, pass: Vec<Waiting>, subjects: Vec<String>, turn: OwnedSemaphorePermit, stall: Duration) {
    let (arrivals, mut answers): (Vec<Arrival>, Vec<_>) = pass.into_iter().map(|w| (w.arrival, w.done)).unzip();
    let answer = tokio::select! {
        answer = read(&hub, &arrivals, &subjects, stall) => answer,
        _ = futures_util::future::join_all(answers.iter_mut().map(|a| a.closed())) => return,
    };
    drop(turn);
    for a in answers {
        let _ = a.send(answer.clone());
    }
}

/// One pass for `arrivals`, on `subjects` (theirs).
async fn read(hub: &Hub, arrivals: &[Arrival], subjects: &[String], stall: Duration) -> Result<u64, String> {
    let Some(link) = hub.cluster() else { return Err("no bus".to_owned()) };
    let sessions: HashMap<&str, &Missed> = arrivals.iter().map(|a| (&*a.session, &a.missed)).collect();
    let (newest, _) = replay_to_each(hub, link, subjects, &sessions, stall).await?;
    metrics::counter!(m::ARRIVAL_PASSES).increment(1);
    tracing::debug!(
        sessions = arrivals.len(),
        subjects = subjects.len(),
        "read the bus for sessions arriving together"
    );
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catch_up::Skip;

    fn waiting(session: &str, since_ms: u64, subjects: &[&str]) -> Waiting {
        let missed = Missed { since_ms, skip: Skip::NONE };
        let subjects = subjects.iter().map(|s| (*s).to_owned()).collect();
        let arrival = Arrival { session: session.into(), missed, subjects };
        Waiting { arrival, done: oneshot::channel().0 }
    }

    fn names(pass: &[Waiting]) -> Vec<&str> {
        pass.iter().map(|w| &*w.arrival.session).collect()
    }

    #[test]
    fn a_pass_takes_those_that_start_near_the_first_and_fit_its_subjects() {
        let many: Vec<String> = (0..MAX_SUBJECTS).map(|n| format!("m.{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut pending: VecDeque<Waiting> = [
            waiting("a", 100_000, &["m.a"]),
            waiting("far", 100_000 + SPAN_MS + 1, &["m.far"]),
            waiting("b", 100_000 + SPAN_MS, &["m.b", "m.a"]),
            waiting("full", 100_000, &many),
            waiting("old", 1, &["m.c"]),
            waiting("c", 100_000 - SPAN_MS, &["m.c"]),
        ]
        .into();
        let (pass, subjects) = next_pass(&mut pending, 0);
        assert_eq!(names(&pass), ["a", "b", "c"]);
        assert_eq!(subjects, ["m.a", "m.b", "m.c"], "each once");
        assert_eq!(names(&Vec::from(std::mem::take(&mut pending))), ["far", "full", "old"], "left, in order");
        let mut pending: VecDeque<Waiting> =
            [waiting("old", 1, &["m.x"]), waiting("a", 200_000, &["m.a"]), waiting("b", 400_000, &["m.b"])].into();
        let (pass, _) = next_pass(&mut pending, 200_000 - SPAN_MS);
        assert_eq!(names(&pass), ["old", "a"], "no further back than the bus keeps: they start alike");
        assert_eq!(names(&next_pass(&mut pending, 0).0), ["b"]);
        assert!(next_pass(&mut pending, 0).0.is_empty());
    }

    /// A session whose subscriptions alone come to more subjects than a pass reads by name
    /// is read for on every kept subject (the router picks what it subscribes to): one
    /// client's many filters never make NATS a consumer of hundreds.
    #[test]
    fn a_session_with_more_subjects_than_a_pass_reads_by_name_reads_every_kept_one() {
        let many: Vec<String> = (0..=MAX_SUBJECTS).map(|n| format!("m.{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut pending: VecDeque<Waiting> = [waiting("wide", 100_000, &many), waiting("a", 100_000, &["m.a"])].into();
        let (pass, subjects) = next_pass(&mut pending, 0);
        assert_eq!(names(&pass), ["wide"]);
        assert_eq!(subjects, crate::cluster::KEPT_SUBJECTS);
    }
}
