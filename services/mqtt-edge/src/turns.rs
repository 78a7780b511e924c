//! Work done in order by whoever submits it, where it runs (the session journal's writes, the
//! durable streams' appends): an edge worker does what waits at the end of its current turn
//! (a task on its runtime), and its PUBACKs leave in that turn; anyone else (a bus task, a
//! timer) leaves it to a thread of the work's own. Waking another thread to write and waking
//! the worker back cost more than an embedded write's microseconds (half the CPU of a
//! persistent QoS 1 message went to those wakes).
//!
//! One writer at a time holds the turn and does what waits until nothing does; a submitter
//! that finds the turn taken leaves its job to the holder, who looks again after giving the
//! turn back. So every job is done, in the order submitted, one write at a time (on whichever
//! thread's connection: each is answered before the next is sent).
//!
//! A store with connections (Redis) gives each writing thread one of its own ([`own`]), so a
//! write's answer wakes the worker that waits and no other thread. A write that failed (timed
//! out) may still land later: before the next write goes over another connection, the failed
//! one's is fenced ([`Fence`]).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use broker::relations::BoxFuture;
use tokio::sync::mpsc;

/// What is done in turns.
pub(crate) trait Work: Send + Sync + Sized + 'static {
    /// What is submitted.
    type Job: Send + 'static;
    /// Does `jobs`, the next ones submitted, holding the turn. If the future is dropped before
    /// it ends (its worker stopped), the work's thread is asked to do what waits.
    fn write(turns: &Arc<Turns<Self>>, jobs: Vec<Self::Job>) -> impl Future<Output = ()> + Send + '_;
    /// Called on the work's thread every tick, before it does what waits.
    fn tick(turns: &Arc<Turns<Self>>) -> impl Future<Output = ()> + Send + '_;
}

/// Jobs waiting for their turn, and who does them.
pub(crate) struct Turns<W: Work> {
    pub work: W,
    jobs: Mutex<Waiting<W::Job>>,
    /// Someone is doing jobs.
    turn: AtomicBool,
    /// Someone is on their way to (spawned on a worker, or asked of the work's thread).
    pending: AtomicBool,
    /// Someone will be once a linger ends ([`Turns::submit_within`]).
    lingering: AtomicBool,
    /// To the work's thread: do what waits.
    nudge: mpsc::UnboundedSender<()>,
}

/// The jobs waiting, and when each is due.
struct Waiting<J> {
    jobs: VecDeque<J>,
    /// One per job, in the same order.
    due: VecDeque<Due>,
}

impl<J> Default for Waiting<J> {
    fn default() -> Self {
        Waiting { jobs: VecDeque::new(), due: VecDeque::new() }
    }
}

/// When a waiting job is to be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Soon ([`Turns::submit`]).
    Soon,
    /// Once this instant has passed ([`Turns::submit_within`]).
    At(tokio::time::Instant),
    /// With the next job done, or at the work's thread's next tick ([`Turns::leave`]).
    WithNext,
}

impl<J> Waiting<J> {
    fn push(&mut self, job: J, due: Due) {
        self.jobs.push_back(job);
        self.due.push_back(due);
    }

    /// How many jobs from the front are to be done now: up to the last that is due, or all.
    fn due_now(&self, all: bool) -> usize {
        if all {
            return self.jobs.len();
        }
        let now = tokio::time::Instant::now();
        let due = |d: &Due| match *d {
            Due::Soon => true,
            Due::At(at) => at <= now,
            Due::WithNext => false,
        };
        self.due.iter().rposition(due).map_or(0, |last| last + 1)
    }

    /// When the first job that lingers is due, if one does.
    fn next_linger(&self) -> Option<tokio::time::Instant> {
        self.due.iter().find_map(|d| match *d {
            Due::At(at) => Some(at),
            Due::Soon | Due::WithNext => None,
        })
    }

    /// Puts `jobs` first in line, due soon.
    fn put_back(&mut self, jobs: Vec<J>) {
        for job in jobs.into_iter().rev() {
            self.jobs.push_front(job);
            self.due.push_front(Due::Soon);
        }
    }

    fn take(&mut self, n: usize) -> Vec<J> {
        self.due.drain(..n);
        self.jobs.drain(..n).collect()
    }
}

/// What the writer holding the turn does between two writes when more jobs wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Between {
    /// Lets its thread's other tasks run first (a worker's connections).
    Yield,
    /// Goes straight on (a submitter that polls the writing once, its work's thread gone).
    Nothing,
}

/// Jobs taken into one write at most.
const MAX_JOBS: usize = 1024;

impl<W: Work> Turns<W> {
    /// Starts the work's thread (named `thread`), which ticks every `tick_every`.
    pub fn start(work: W, thread: &str, tick_every: Duration) -> Result<Arc<Self>, String> {
        let (nudge, nudges) = mpsc::unbounded_channel();
        let turns = Arc::new(Turns {
            work,
            jobs: Default::default(),
            turn: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            nudge,
        });
        crate::on_own_thread(thread, Self::serve(Arc::downgrade(&turns), nudges, tick_every))?;
        Ok(turns)
    }

    /// Queues `job` after everything submitted before, to be done soon.
    pub fn submit(self: &Arc<Self>, job: W::Job) {
        self.waiting().push(job, Due::Soon);
        if self.pending.swap(true, Ordering::AcqRel) {
            return; // whoever set it does this job too
        }
        if let Some(worker) = worker_here() {
            // An edge worker: do it once the tasks already queued on it have run (on its
            // runtime rather than its `LocalSet`: a task of the runtime's may submit too).
            drop(worker.spawn(self.clone().do_what_waits(Between::Yield, false)));
        } else if self.nudge.send(()).is_err() {
            self.do_here();
        }
    }

    /// Queues `job` after everything submitted before, to be done within `linger`, or sooner
    /// with a job submitted meanwhile to be done soon. Meanwhile [`Turns::amend`] may take it
    /// back. Off an edge worker, as [`Turns::submit`].
    pub fn submit_within(self: &Arc<Self>, job: W::Job, linger: Duration) {
        let Some(worker) = worker_here() else { return self.submit(job) };
        let at = tokio::time::Instant::now() + linger;
        self.waiting().push(job, Due::At(at));
        if self.pending.load(Ordering::Acquire) {
            return; // whoever is on their way sees to it once done (`linger_on`)
        }
        self.linger_until(at, &worker);
    }

    /// Does what waits at `at` unless a linger under way does it first.
    fn linger_until(self: &Arc<Self>, at: tokio::time::Instant, worker: &tokio::runtime::Handle) {
        if self.lingering.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut lingered = Lingered { turns: self.clone(), ended: false };
        drop(worker.spawn(async move {
            tokio::time::sleep_until(at).await;
            lingered.ended = true;
            let turns = lingered.turns.clone();
            drop(lingered);
            turns.do_what_waits(Between::Yield, false).await;
        }));
    }

    /// After a writer's turn: jobs that still linger are done when their linger ends.
    fn linger_on(self: &Arc<Self>) {
        let Some(at) = self.waiting().next_linger() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(here) => self.linger_until(at, &here),
            Err(_) => drop(self.nudge.send(())),
        }
    }

    /// Changes the jobs waiting, none of them added or taken away (none is under way
    /// meanwhile: they are taken under the same lock).
    pub fn amend<R>(&self, change: impl FnOnce(&mut [W::Job]) -> R) -> R {
        change(self.waiting().jobs.make_contiguous())
    }

    /// Does what waits on this thread, the work's own being gone (it panicked): what is done
    /// at once is done (an embedded write), on a runtime of its own off any (a write's timeout
    /// needs one).
    fn do_here(self: &Arc<Self>) {
        use futures_util::FutureExt;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Polled once: nothing yields between writes.
            self.clone().do_what_waits(Between::Nothing, true).now_or_never();
            return;
        }
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(self.clone().do_what_waits(Between::Nothing, true)),
            Err(e) => tracing::error!(error = %e, "cannot write: no thread to write on, and no runtime"),
        }
    }

    /// Queues `job` to be done with the next one submitted, or at the next tick.
    pub fn leave(&self, job: W::Job) {
        self.waiting().push(job, Due::WithNext);
    }

    /// Puts `jobs` back, first in line (a write cut short).
    pub fn put_back(&self, jobs: Vec<W::Job>) {
        self.waiting().put_back(jobs);
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting<W::Job>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the turn if nobody holds it.
    fn take_turn(&self) -> bool {
        self.turn.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Gives back the turn [`Turns::take_turn`] took.
    fn give_turn(&self) {
        self.turn.store(false, Ordering::Release);
    }

    /// Does every job due (with `all`, every job waiting), unless someone else is (they do
    /// it). Jobs still lingering after it are done when their linger ends.
    async fn do_what_waits(self: Arc<Self>, between: Between, all: bool) {
        self.pending.store(false, Ordering::Release);
        loop {
            if !self.take_turn() {
                return;
            }
            let mut held = Held { turns: &self, ended: false };
            loop {
                let jobs: Vec<W::Job> = {
                    let mut waiting = self.waiting();
                    let n = waiting.due_now(all).min(MAX_JOBS);
                    waiting.take(n)
                };
                if jobs.is_empty() {
                    break;
                }
                W::write(&self, jobs).await;
                // Other workers may keep submitting: before the next write, this worker's own
                // tasks run (the PUBACKs this write let go, its connections' reads). An embedded
                // write never yields, and a worker writing others' jobs back to back would
                // starve its own connections meanwhile.
                if between == Between::Yield && self.waiting().due_now(all) > 0 {
                    tokio::task::yield_now().await;
                }
            }
            held.ended = true;
            drop(held);
            // A job due submitted while the turn was taken is this writer's to do.
            if self.waiting().due_now(all) == 0 {
                self.linger_on();
                return;
            }
        }
    }

    /// The work's thread: does what others submitted (or left for later), and ticks.
    async fn serve(turns: Weak<Self>, mut nudges: mpsc::UnboundedReceiver<()>, tick_every: Duration) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                nudged = nudges.recv() => match (nudged, turns.upgrade()) {
                    (Some(()), Some(t)) => t.do_what_waits(Between::Yield, false).await,
                    _ => break,
                },
                _ = ticks.tick() => {
                    let Some(t) = turns.upgrade() else { break };
                    W::tick(&t).await;
                    t.do_what_waits(Between::Yield, true).await;
                }
            }
        }
    }
}

/// Tidies a store that writes on its caller's thread (the embedded one, `what`): `tidy` while
/// writes go on, then `between` holding the turn (a worker holds it for a write's
/// microseconds).
pub(crate) async fn tidy<W: Work>(
    turns: &Turns<W>,
    what: &str,
    tidy: impl Fn() -> Result<(), String>,
    between: impl Fn() -> Result<(), String>,
) {
    if let Err(e) = tidy() {
        tracing::warn!(error = %e, "cannot tidy {what}");
    }
    while !turns.take_turn() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let tidied = between();
    turns.give_turn();
    if let Err(e) = tidied {
        tracing::warn!(error = %e, "cannot tidy {what}");
    }
}

/// The runtime of the edge worker this runs on, if it does.
fn worker_here() -> Option<tokio::runtime::Handle> {
    crate::relay::runs_here().then(tokio::runtime::Handle::try_current).and_then(Result::ok)
}

/// A linger under way, over when dropped. Dropped before it `ended` (its worker stopped, or
/// the task never ran), it asks the work's thread to see to what lingers.
struct Lingered<W: Work> {
    turns: Arc<Turns<W>>,
    ended: bool,
}

impl<W: Work> Drop for Lingered<W> {
    fn drop(&mut self) {
        self.turns.lingering.store(false, Ordering::Release);
        if !self.ended {
            let _ = self.turns.nudge.send(());
        }
    }
}

/// The turn, held until dropped; dropped before the holder ended (its worker stopped in the
/// middle of a write), it asks the work's thread to do what waits.
struct Held<'a, W: Work> {
    turns: &'a Turns<W>,
    ended: bool,
}

impl<W: Work> Drop for Held<'_, W> {
    fn drop(&mut self) {
        self.turns.give_turn();
        if !self.ended {
            let _ = self.turns.nudge.send(());
        }
    }
}

/// A store's connection on one thread, as [`own`] keeps it.
type Connecting<S> = BoxFuture<'static, Result<Arc<S>, String>>;

/// The store `owner`'s writes go to on this thread: a connection of the thread's own once
/// `connect` made it (asked for on the first write here, and again a while after it could not
/// be made), `shared` till then, or when `connect` has none to make (a store that serves every
/// thread alike, as the embedded one, which writes on its caller's thread).
pub(crate) fn own<S: ?Sized + Send + Sync + 'static>(
    owner: &Arc<impl Any + Send + Sync>,
    shared: &Arc<S>,
    connect: impl FnOnce() -> Option<Connecting<S>>,
) -> Arc<S> {
    let found = HERE.try_with(|here| {
        let mut here = here.borrow_mut();
        here.retain(|o| o.owner.strong_count() > 0);
        let at = match here.iter().position(|o| same(&o.owner, owner)) {
            Some(at) => at,
            None => {
                let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(owner) as Weak<dyn Any + Send + Sync>;
                here.push(OwnStore { owner: weak, store: Own::Failed(None) });
                here.len() - 1
            }
        };
        let own = &mut here[at].store;
        match own {
            Own::Ready(store) => return store.downcast_ref::<Arc<S>>().cloned(),
            Own::Shared | Own::Connecting => return None,
            Own::Failed(Some(at)) if at.elapsed() < RECONNECT_AFTER => return None,
            Own::Failed(_) => {}
        }
        match (connect(), tokio::runtime::Handle::try_current()) {
            (Some(connecting), Ok(runtime)) => {
                *own = Own::Connecting;
                let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(owner) as Weak<dyn Any + Send + Sync>;
                drop(runtime.spawn(connected_here(weak, connecting)));
            }
            _ => *own = Own::Shared,
        }
        None
    });
    found.ok().flatten().unwrap_or_else(|| shared.clone())
}

fn same(weak: &Weak<dyn Any + Send + Sync>, owner: &Arc<impl Any + Send + Sync>) -> bool {
    std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(owner))
}

/// Notes this thread's own store for `owner` once `connecting` makes it.
async fn connected_here<S: ?Sized + Send + Sync + 'static>(
    owner: Weak<dyn Any + Send + Sync>,
    connecting: Connecting<S>,
) {
    let store = match connecting.await {
        Ok(store) => Own::Ready(Box::new(store)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect this thread to the store yet: writing over the shared connection");
            Own::Failed(Some(std::time::Instant::now()))
        }
    };
    let _ = HERE.try_with(|here| {
        let mut here = here.borrow_mut();
        if let Some(mine) = here.iter_mut().find(|o| std::ptr::addr_eq(o.owner.as_ptr(), owner.as_ptr())) {
            mine.store = store;
        }
    });
}

/// How soon a thread that could not connect to a store of its own tries again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's own stores, one per owner ([`own`]).
    static HERE: std::cell::RefCell<Vec<OwnStore>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct OwnStore {
    owner: Weak<dyn Any + Send + Sync>,
    store: Own,
}

enum Own {
    /// The `Arc<S>` of [`own`].
    Ready(Box<dyn Any>),
    Connecting,
    /// The shared store serves this thread as well.
    Shared,
    /// Could not be made (when), or not asked for yet (`None`).
    Failed(Option<std::time::Instant>),
}

/// The connection a write last failed on. A write that timed out may still land; on another
/// connection, a later write could land before it. So the next write waits for an answer over
/// that connection first (one connection answers in order): Redis is then done with what it
/// was sent.
pub(crate) struct Fence<S: ?Sized>(Mutex<Option<Arc<S>>>);

impl<S: ?Sized> Default for Fence<S> {
    fn default() -> Self {
        Fence(Mutex::new(None))
    }
}

impl<S: ?Sized> Fence<S> {
    /// Passes the fence, if any: `probe` (a read) answered within `limit` over the connection
    /// a write last failed on, so Redis is done with what it was sent. Else the fence stays,
    /// and the write that asks is refused too.
    pub async fn pass<T>(
        &self,
        limit: Duration,
        probe: impl for<'a> FnOnce(&'a S) -> BoxFuture<'a, Result<T, String>>,
    ) -> Result<(), String> {
        let Some(failed) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return Ok(());
        };
        match crate::within(limit, probe(&failed)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.put(failed);
                Err(format!("the connection a write failed on does not answer yet: {e}"))
            }
        }
    }

    /// A write failed over `store`.
    pub fn put(&self, store: Arc<S>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Notes the jobs it does, after a timeout's worth of runtime (as a Redis write needs).
    #[derive(Default)]
    struct Noted(Mutex<Vec<u32>>);

    impl Work for Noted {
        type Job = u32;

        async fn write(turns: &Arc<Turns<Self>>, jobs: Vec<u32>) {
            let _ = tokio::time::timeout(Duration::from_secs(1), std::future::ready(())).await;
            turns.work.0.lock().expect("not poisoned").extend(jobs);
        }

        async fn tick(_: &Arc<Turns<Self>>) {}
    }

    /// Writes on its caller's thread without yielding, as the embedded store does; each write
    /// submits another job, as another worker submitting all along would, up to `until`.
    struct Blocking {
        written: Mutex<Vec<u32>>,
        until: u32,
    }

    impl Work for Blocking {
        type Job = u32;

        async fn write(turns: &Arc<Turns<Self>>, jobs: Vec<u32>) {
            let last = *jobs.last().expect("a job");
            turns.work.written.lock().expect("not poisoned").extend(jobs);
            if last < turns.work.until {
                turns.submit(last + 1);
            }
        }

        async fn tick(_: &Arc<Turns<Self>>) {}
    }

    #[tokio::test]
    async fn a_worker_writing_what_others_keep_submitting_lets_its_own_tasks_run_between_writes() {
        let turns =
            Turns::start(Blocking { written: Mutex::default(), until: 50 }, "test-blocking", Duration::from_secs(60))
                .expect("started");
        crate::relay::on_a_worker(|| async {
            turns.submit(1);
            // This task runs again between two writes, not only once all are done.
            let seen = loop {
                tokio::task::yield_now().await;
                let seen = turns.work.written.lock().expect("not poisoned").len();
                if seen > 0 {
                    break seen;
                }
            };
            assert!(seen < 50, "this worker's task waited for all {seen} writes");
            while turns.work.written.lock().expect("not poisoned").len() < 50 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(*turns.work.written.lock().expect("not poisoned"), (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_lingering_job_is_done_when_its_linger_ends_or_with_a_job_due_sooner() {
        let turns = Turns::start(Noted::default(), "test-linger", Duration::from_secs(60)).expect("started");
        let done = || turns.work.0.lock().expect("not poisoned").clone();
        let linger = Duration::from_millis(200);
        crate::relay::on_a_worker(|| async {
            turns.submit_within(1, linger);
            turns.leave(2);
            tokio::time::sleep(linger / 4).await;
            assert_eq!(done(), [] as [u32; 0], "lingering, and left for later");
            turns.submit(3);
            let started = std::time::Instant::now();
            while done().len() < 3 {
                assert!(started.elapsed() < linger / 2, "done with the job due soon, in order");
                tokio::task::yield_now().await;
            }
            assert_eq!(done(), [1, 2, 3]);
            let started = std::time::Instant::now();
            turns.submit_within(4, linger);
            turns.leave(5);
            turns.submit_within(6, linger * 2);
            while done().len() < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(started.elapsed() >= linger, "not before its linger ended");
            assert_eq!(done(), [1, 2, 3, 4], "what comes after it waits");
            while done().len() < 6 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(started.elapsed() >= linger * 2);
            assert_eq!(done(), [1, 2, 3, 4, 5, 6], "in order");
        })
        .await;
    }

    #[test]
    fn a_linger_whose_worker_stops_first_is_seen_to_by_the_works_thread() {
        let turns = Turns::start(Noted::default(), "test-linger-stop", Duration::from_secs(60)).expect("started");
        let done = || turns.work.0.lock().expect("not poisoned").clone();
        let linger = Duration::from_millis(50);
        for job in [1, 2] {
            let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            worker.block_on(crate::relay::on_a_worker(|| async { turns.submit_within(job, linger) }));
            // Its linger's task is dropped with it, before it ran.
            drop(worker);
            let started = std::time::Instant::now();
            while done().len() < job as usize {
                assert!(started.elapsed() < Duration::from_secs(5), "done long before the tick");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert_eq!(done(), [1, 2]);
    }

    #[test]
    fn without_the_works_thread_the_submitter_does_the_job_with_or_without_a_runtime() {
        let (nudge, nudges) = mpsc::unbounded_channel();
        drop(nudges);
        let turns = Arc::new(Turns {
            work: Noted::default(),
            jobs: Default::default(),
            turn: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            nudge,
        });
        turns.submit(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async { turns.submit(2) });
        assert_eq!(*turns.work.0.lock().expect("not poisoned"), [1, 2]);
        assert!(turns.take_turn(), "the turn was given back");
    }
}
