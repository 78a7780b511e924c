//! The request body timeout: a body that has not finished arriving by its deadline ends in an
//! error for the handler reading it, and the request is answered 408 on a closing connection.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn Error + Send + Sync>;

/// Whether a request's body missed its deadline.
pub(super) struct Expiry(Arc<AtomicBool>);

impl Expiry {
    pub(super) fn expired(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Gives `req`'s body a deadline `timeout` from now.
pub(super) fn limit<B>(req: Request<B>, timeout: Duration) -> (Request<Body>, Expiry)
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + timeout;
    let req = req.map(|inner| Body::new(DeadlineBody { inner, deadline, sleep: None, expired: expired.clone() }));
    (req, Expiry(expired))
}

/// What a client whose body was late gets, whatever the handler made of the error. The
/// connection closes after it: the rest of the body may still arrive and must not be read as
/// the next request.
pub(super) fn late_body_response() -> Response {
    (StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], "request body timed out\n").into_response()
}

/// The error a late body ends with.
#[derive(Debug)]
struct BodyTimedOut;

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body timed out")
    }
}

impl Error for BodyTimedOut {}

struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    /// Armed the first time the body has to wait, so bodies that are already there cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
