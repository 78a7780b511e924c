//! When a connection last did something: an IO wrapper that records every byte read or
//! written, a guard for requests being handled, and the watchdog that closes a connection
//! whose first header is late or that has been idle too long.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::HttpLimits;

/// One connection's activity, shared by its IO, its requests and its watchdog.
pub(super) struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte read or written or request finished.
    last_ms: AtomicU64,
    /// Requests whose handler is running: a slow handler is not an idle connection.
    handling: AtomicUsize,
    /// Whether a complete request header has arrived.
    headed: AtomicBool,
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expired {
    Header,
    Idle,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
            headed: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request as being handled until the returned guard drops.
    pub(super) fn handling(self: &Arc<Self>) -> Handling {
        self.headed.store(true, Ordering::Relaxed);
        self.handling.fetch_add(1, Ordering::Relaxed);
        Handling(self.clone())
    }

    /// Resolves when the connection should be closed, and says why. Never resolves early: it
    /// re-reads the activity at each deadline and sleeps again if something happened meanwhile.
    pub(super) async fn watchdog(&self, limits: HttpLimits) -> Expired {
        loop {
            let now = Instant::now();
            match self.deadline(&limits, now) {
                Ok(at) => tokio::time::sleep_until(at).await,
                Err(expired) => return expired,
            }
        }
    }

    /// The next instant worth checking, or why the connection is over.
    fn deadline(&self, limits: &HttpLimits, now: Instant) -> Result<Instant, Expired> {
        if self.handling.load(Ordering::Relaxed) > 0 {
            // The handler's end counts as activity, so nothing can expire before this.
            return Ok(now + limits.idle_timeout);
        }
        let last = self.start + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let mut at = (last + limits.idle_timeout, Expired::Idle);
        // Counted from accept and not moved by activity, so a header sent a byte at a time is
        // still late. hyper's own header timer only starts at the first byte (hyper-util reads
        // the protocol preface first), so a silent connection needs this one.
        if !self.headed.load(Ordering::Relaxed) {
            let header_at = self.start + limits.header_timeout;
            if header_at < at.0 {
                at = (header_at, Expired::Header);
            }
        }
        if at.0 <= now { Err(at.1) } else { Ok(at.0) }
    }
}

/// A request being handled; see [`Activity::handling`].
pub(super) struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        // Touch first: the watchdog must not see zero handlers with the old instant.
        self.0.touch();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO object that records its reads and writes in an [`Activity`].
pub(super) struct Tracked<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Tracked<IO> {
    pub(super) fn new(io: IO, activity: Arc<Activity>) -> Tracked<IO> {
        Tracked { io, activity }
    }

    fn on_write(&self, done: &Poll<io::Result<usize>>) {
        if matches!(done, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.touch();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let done = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        done
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write(cx, buf);
        this.on_write(&done);
        done
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.on_write(&done);
        done
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..HttpLimits::default()
        }
    }

    #[test]
    fn before_the_first_header_the_earlier_deadline_wins() {
        let a = Activity::new();
        let at = |ms| a.start + Duration::from_millis(ms);
        assert_eq!(a.deadline(&limits(100, 500), at(0)), Ok(at(100)));
        assert_eq!(a.deadline(&limits(100, 500), at(100)), Err(Expired::Header));
        assert_eq!(a.deadline(&limits(900, 500), at(0)), Ok(at(500)));
        assert_eq!(a.deadline(&limits(900, 500), at(500)), Err(Expired::Idle));
    }

    #[test]
    fn bytes_do_not_move_the_first_header_deadline_but_do_move_the_idle_one() {
        let a = Activity::new();
        let at = |ms| a.start + Duration::from_millis(ms);
        a.last_ms.store(90, Ordering::Relaxed);
        assert_eq!(a.deadline(&limits(100, 500), at(100)), Err(Expired::Header));
        assert_eq!(a.deadline(&limits(900, 500), at(500)), Ok(at(590)));
    }

    #[test]
    fn a_running_handler_is_not_idle_and_after_a_header_only_idleness_counts() {
        let a = Activity::new();
        let at = |ms| a.start + Duration::from_millis(ms);
        let handling = a.handling();
        assert_eq!(a.deadline(&limits(100, 500), at(10_000)), Ok(at(10_500)));
        drop(handling);
        // The header arrived, so only the idle clock, restarted by the handler's end, remains.
        let next = a.deadline(&limits(100, 500), at(200)).expect("not expired");
        assert!(next >= at(500), "{next:?}");
    }
}
