//! A connection's idle and frame timeouts, kept cheap on the hot path: I/O
//! only records times, and one timer is re-armed only when its deadline
//! moves earlier or it fires before the (since moved) deadline.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use super::reason::CloseReason;
use crate::stream::InputClock;

pub struct IdleTimer {
    timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    last_activity: Instant,
    /// When the oldest unfinished frame began, if there is one.
    pub partial_since: Option<Instant>,
    /// Below the frame: when the stream's oldest incomplete unit (a TLS
    /// record) began, for streams whose layers hide undecoded input.
    input: Option<Arc<InputClock>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    pub fn new(
        timeout: Option<Duration>,
        frame_timeout: Option<Duration>,
        input: Option<Arc<InputClock>>,
    ) -> Self {
        Self {
            timeout,
            frame_timeout,
            last_activity: Instant::now(),
            partial_since: None,
            input,
            sleep: None,
        }
    }

    /// The next deadline and what it means.
    fn next(&self, with_frame: bool) -> Option<(Instant, CloseReason)> {
        let idle = self
            .timeout
            .map(|timeout| (self.last_activity + timeout, CloseReason::IdleTimeout));
        let since = match (
            self.partial_since,
            self.input.as_ref().and_then(|c| c.since()),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let frame = match (with_frame, self.frame_timeout, since) {
            (true, Some(timeout), Some(since)) => {
                Some((since + timeout, CloseReason::FrameTimeout))
            }
            _ => None,
        };
        match (idle, frame) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    pub fn touch(&mut self) {
        if self.timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// Resolves with the reason once nothing has moved for the idle
    /// timeout, or (`with_frame`) an unfinished frame or record is older
    /// than the frame timeout; never if neither applies. The deadline is
    /// worked out again each time the task wakes (a read that consumed
    /// undecoded input may have started the frame clock), without reading
    /// the clock.
    pub async fn expired(&mut self, with_frame: bool) -> CloseReason {
        std::future::poll_fn(|cx| self.poll_expired(cx, with_frame)).await
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>, with_frame: bool) -> Poll<CloseReason> {
        loop {
            // No deadline: the other branches of the caller's select wake
            // the task, and then this is asked again.
            let Some((due, reason)) = self.next(with_frame) else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(due);
            let sleep = match &mut self.sleep {
                Some(sleep) => {
                    if sleep.is_elapsed() || sleep.deadline() > deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    sleep
                }
                None => self
                    .sleep
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired: at the deadline, or at an earlier one that activity
            // has since moved (then it is re-armed above).
            if sleep.deadline() >= deadline {
                return Poll::Ready(reason);
            }
        }
    }
}
