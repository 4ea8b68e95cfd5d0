//! Periodic background work on a task tracker.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs `tick` every `every` (the first run after one interval; late ticks are
/// skipped, not bunched) on `tracker` until `stop` is cancelled.
pub fn every<F, Fut>(tracker: &TaskTracker, stop: CancellationToken, every: Duration, mut tick: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tracker.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        interval.tick().await;
        while stop.run_until_cancelled(interval.tick()).await.is_some() {
            tick().await;
        }
    });
}

/// Like [`every`], for synchronous work that may block: each run goes to the
/// blocking pool.
pub fn every_blocking<F>(tracker: &TaskTracker, stop: CancellationToken, period: Duration, tick: F)
where
    F: Fn() + Clone + Send + Sync + 'static,
{
    every(tracker, stop, period, move || {
        let tick = tick.clone();
        async move {
            let _ = tokio::task::spawn_blocking(tick).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_every_interval_until_cancelled() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        every(&tracker, stop.clone(), Duration::from_secs(1), move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
