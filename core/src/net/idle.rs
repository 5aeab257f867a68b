//! A deadline on clients that stop sending: a request whose body has not advanced for a while
//! (while the server waits for it) fails, so that a stalled or very slow client cannot hold a
//! server's task and buffers. Time the server spends on its own work (planning, running the
//! query) does not count: the clock runs only while the server waits for the client.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;

/// A body that fails when its client keeps the reader waiting longer than `idle`.
pub struct IdleBody {
    inner: Body,
    idle: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBody {
    pub fn new(inner: Body, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            waiting: None,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                        format!("the client sent nothing for {} s", idle.as_secs()),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC service whose requests' bodies are [`IdleBody`]s.
#[derive(Debug, Clone)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle }
    }
}

impl<S: NamedService> NamedService for IdleTimeout<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for IdleTimeout<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let idle = self.idle;
        self.inner
            .call(request.map(|body| Body::new(IdleBody::new(body, idle))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// A body sending `frames` frames, `every` apart.
    fn body(frames: usize, every: Duration) -> Body {
        let stream = futures::stream::iter(0..frames).then(move |i| async move {
            tokio::time::sleep(every).await;
            Ok::<_, tonic::Status>(Frame::data(Bytes::from(vec![i as u8])))
        });
        Body::new(http_body_util::StreamBody::new(stream))
    }

    async fn read(mut body: IdleBody) -> Result<usize, tonic::Status> {
        let mut frames = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame?;
            frames += 1;
        }
        Ok(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_read_and_one_that_stalls_is_cut_off() {
        let idle = Duration::from_secs(10);
        // Slow but steady: each frame within the deadline.
        let steady = IdleBody::new(body(5, Duration::from_secs(9)), idle);
        assert_eq!(read(steady).await.unwrap(), 5);
        // Stalled: a frame later than the deadline.
        let stalled = IdleBody::new(body(2, Duration::from_secs(11)), idle);
        let error = read(stalled).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        // Time the server spends elsewhere between reads does not count.
        let mut paused = IdleBody::new(body(2, Duration::from_secs(1)), idle);
        let first = std::future::poll_fn(|cx| Pin::new(&mut paused).poll_frame(cx)).await;
        assert!(first.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(read(paused).await.unwrap(), 1);
    }
}
