//! A connection's idle and frame timeouts, kept cheap on the hot path: I/O
//! only records times (from the coarse [`Stamp`] clock), and one timer is
//! re-armed only when its deadline moves earlier or it fires before the
//! (since moved) deadline. While it is armed for the current deadline, a
//! poll from the same task does not touch the timer at all: the timer
//! already holds the task's waker.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use super::reason::CloseReason;
use crate::{clock::Stamp, stream::InputClock};

pub struct IdleTimer {
    timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    last_activity: Stamp,
    /// When the oldest unfinished frame began, if there is one.
    pub partial_since: Option<Stamp>,
    /// Below the frame: when the stream's oldest incomplete unit (a TLS
    /// record) began, for streams whose layers hide undecoded input.
    input: Option<Arc<InputClock>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline `sleep` is armed for, and the waker it holds.
    armed: Option<(Stamp, Waker)>,
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
            last_activity: Stamp::now(),
            partial_since: None,
            input,
            sleep: None,
            armed: None,
        }
    }

    /// The next deadline and what it means.
    fn next(&self, with_frame: bool) -> Option<(Stamp, CloseReason)> {
        let idle = self
            .timeout
            .map(|timeout| (self.last_activity.after(timeout), CloseReason::IdleTimeout));
        let since = match (
            self.partial_since,
            self.input.as_ref().and_then(|c| c.since()),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let frame = match (with_frame, self.frame_timeout, since) {
            (true, Some(timeout), Some(since)) => {
                Some((since.after(timeout), CloseReason::FrameTimeout))
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
            self.last_activity = Stamp::now();
        }
    }

    /// An unfinished frame began now.
    pub fn frame_started(&mut self) {
        self.partial_since = Some(Stamp::now());
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
            if let (Some(sleep), Some((armed_for, waker))) = (&mut self.sleep, &mut self.armed) {
                if sleep.is_elapsed() {
                    // It fired: at the deadline, or at an earlier one that
                    // activity has since moved (then it is re-armed below).
                    if due <= *armed_for {
                        return Poll::Ready(reason);
                    }
                } else if due >= *armed_for {
                    // Armed for this deadline or an earlier one, holding
                    // this task's waker: nothing to do until it fires.
                    if waker.will_wake(cx.waker()) {
                        return Poll::Pending;
                    }
                    waker.clone_from(cx.waker());
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    continue;
                }
            }
            let deadline = tokio::time::Instant::from_std(due.to_instant());
            let sleep = match &mut self.sleep {
                Some(sleep) => {
                    sleep.as_mut().reset(deadline);
                    sleep
                }
                None => self
                    .sleep
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            self.armed = Some((due, cx.waker().clone()));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timer is armed for the idle deadline and then polled again by
    /// the same task without touching the timer; a frame that starts later
    /// moves the deadline earlier, and that must re-arm it.
    #[tokio::test]
    async fn a_deadline_that_moves_earlier_is_armed_although_the_task_did_not_change() {
        let frame = Duration::from_millis(100);
        let mut timer = IdleTimer::new(Some(Duration::from_secs(30)), Some(frame), None);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..3 {
            assert!(timer.poll_expired(&mut cx, true).is_pending());
        }
        let started = std::time::Instant::now();
        timer.frame_started();
        let reason = tokio::time::timeout(Duration::from_secs(5), timer.expired(true))
            .await
            .expect("the frame deadline did not fire");
        assert!(matches!(reason, CloseReason::FrameTimeout), "{reason}");
        assert!(started.elapsed() >= frame - Duration::from_millis(20));
    }
}
