//! A session's heartbeat: a tick every interval, delayed rather than bunched when the session
//! misses one, that costs nothing to poll before it is due.
//!
//! Why not tokio's `Interval`: the session polls every branch of its loop at every wake, and
//! polling the interval's timer (registering the waker again, the timer's own bookkeeping)
//! was about 1.5% of a private delivery's instructions in the node (docs/DESIGN.md,
//! "Counting instructions"). The timer keeps the waker
//! it was last polled with until it fires, and a session's task always wakes with the same
//! one, so before the deadline a clock read is all a poll needs.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

/// The tick of one session.
#[derive(Debug)]
pub struct Heartbeat {
    // Boxed: a `Sleep` inline would add its size to every session's task; the box is 128
    // bytes of its own.
    sleep: Pin<Box<Sleep>>,
    every: Duration,
    /// Whether the timer holds this task's waker for its current deadline.
    armed: bool,
}

impl Heartbeat {
    /// Ticks every `every`, the first time `every` from now.
    pub fn new(every: Duration) -> Self {
        Self {
            sleep: Box::pin(sleep_until(Instant::now() + every)),
            every,
            armed: false,
        }
    }

    /// Completes at the next tick. Cancel-safe. Must be polled from one task only.
    pub fn tick(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_tick(cx))
    }

    fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && Instant::now() < self.sleep.deadline() {
            return Poll::Pending;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // From now, not from the missed deadline: a late tick delays the next ones.
                let next = Instant::now() + self.every;
                self.sleep.as_mut().reset(next);
                self.armed = false;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks come once per interval, the first one interval after the start, and a poll
    /// before the deadline (which only reads the clock) does not lose the wake-up: the task
    /// is woken at the deadline all the same.
    #[tokio::test(start_paused = true)]
    async fn ticks_once_per_interval_and_wakes_the_task_at_the_deadline() {
        let every = Duration::from_secs(5);
        let start = Instant::now();
        let mut beat = Heartbeat::new(every);
        for n in 1..=3u32 {
            // Polled early several times with this task's waker, as a busy session's loop does.
            for _ in 0..3 {
                let early = std::future::poll_fn(|cx| Poll::Ready(beat.poll_tick(cx))).await;
                assert!(early.is_pending());
            }
            beat.tick().await;
            assert_eq!(Instant::now() - start, every * n);
        }
    }

    /// A tick taken late pushes the next one a whole interval past it.
    #[tokio::test(start_paused = true)]
    async fn a_late_tick_delays_the_next() {
        let every = Duration::from_secs(5);
        let start = Instant::now();
        let mut beat = Heartbeat::new(every);
        tokio::time::sleep(Duration::from_secs(12)).await;
        beat.tick().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(12));
        beat.tick().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(17));
    }
}
