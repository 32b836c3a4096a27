//! Group commit: many requests' small writes, each awaited by its own request, carried out as
//! one statement.
//!
//! A single-row PostgreSQL transaction costs the server far more than the row (a round trip,
//! a commit, a WAL flush, a backend woken and put to sleep); under load every request paid it
//! for its idempotency key twice. A [`Batcher`] queues each request's item and a task takes
//! whatever is queued, up to [`Limits::max_items`], as one batch whenever fewer than
//! [`Limits::max_in_flight`] batches are running. Nothing waits on purpose: an idle service
//! runs each item alone at once, and batches grow only as items arrive faster than the store
//! answers, which is when the saving is wanted.
//!
//! The caller's future resolves with its own item's result; a batch that fails fails every
//! item in it (the statement is all or nothing). A caller that goes away does not cancel its
//! item: it is written all the same, as an awaited statement would have been once sent.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// Bounds on one batcher.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items in one batch (one statement's arrays).
    pub max_items: usize,
    /// Most batches running at once (database connections the batcher may hold).
    pub max_in_flight: usize,
    /// Most items waiting for a batch; further submitters wait for room.
    pub queue_capacity: usize,
}

/// Why an item got no result of its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError<E> {
    /// The batch it was in failed; every item in it shares the error.
    #[error("{0}")]
    Failed(Arc<E>),
    /// The batch's runner gave back a different number of results than items: a bug, and
    /// nothing about this item can be trusted.
    #[error("a batch of {items} items gave {results} results")]
    Miscounted { items: usize, results: usize },
    /// The batcher's task is gone (the process is stopping).
    #[error("the batcher has stopped")]
    Stopped,
}

struct Job<I, O, E> {
    item: I,
    reply: oneshot::Sender<Result<O, BatchError<E>>>,
}

/// Submits items to a batch-running task; cheap to clone.
pub struct Batcher<I, O, E> {
    queue: mpsc::Sender<Job<I, O, E>>,
}

impl<I, O, E> Clone for Batcher<I, O, E> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Starts the task that runs batches with `run`, which must give one result per item, in
    /// the items' order. The task ends when the last `Batcher` is dropped and the queue is
    /// empty.
    pub fn spawn<F, Fut>(limits: Limits, run: F) -> Batcher<I, O, E>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
    {
        assert!(limits.max_items >= 1 && limits.max_in_flight >= 1 && limits.queue_capacity >= 1);
        let (queue, jobs) = mpsc::channel(limits.queue_capacity);
        tokio::spawn(collect(limits, jobs, Arc::new(run)));
        Batcher { queue }
    }

    /// Runs `item` in the next batch and gives its result.
    pub async fn submit(&self, item: I) -> Result<O, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

/// Takes queued items as batches, at most `max_in_flight` running at once.
async fn collect<I, O, E, F, Fut>(
    limits: Limits,
    mut jobs: mpsc::Receiver<Job<I, O, E>>,
    run: Arc<F>,
) where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
{
    let running = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        // A place first, then the items: while every place is taken, items gather in the
        // queue and the next batch takes them all.
        let Ok(place) = Arc::clone(&running).acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(limits.max_items.min(64));
        batch.push(first);
        while batch.len() < limits.max_items {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            let _place = place;
            answer(batch, run).await;
        });
    }
}

/// Runs one batch and gives each job its result.
async fn answer<I, O, E, F, Fut>(batch: Vec<Job<I, O, E>>, run: Arc<F>)
where
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, E>>,
{
    let (items, replies): (Vec<I>, Vec<_>) =
        batch.into_iter().map(|job| (job.item, job.reply)).unzip();
    let count = items.len();
    match run(items).await {
        Ok(results) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A submitter that went away no longer wants its result.
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let results = results.len();
            tracing::error!(
                items = count,
                results,
                "a batch gave the wrong number of results"
            );
            for reply in replies {
                let _ = reply.send(Err(BatchError::Miscounted {
                    items: count,
                    results,
                }));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(BatchError::Failed(Arc::clone(&error))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        max_items: 8,
        max_in_flight: 1,
        queue_capacity: 1_000,
    };

    #[tokio::test]
    async fn each_submitter_gets_its_own_result() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(LIMITS, |items: Vec<u32>| async move {
                Ok(items.into_iter().map(|item| item * 10).collect())
            });
        let results = futures::future::join_all((0..100).map(|item| batcher.submit(item))).await;
        for (item, result) in results.into_iter().enumerate() {
            assert_eq!(result.expect("a result"), item as u32 * 10);
        }
    }

    #[tokio::test]
    async fn items_that_arrive_while_a_batch_runs_go_together_and_within_the_limit() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher: Batcher<u32, (), String> = Batcher::spawn(LIMITS, move |items: Vec<u32>| {
            seen.lock().expect("sizes").push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(vec![(); items.len()])
            }
        });
        let results = futures::future::join_all((0..40).map(|item| batcher.submit(item))).await;
        assert!(results.iter().all(Result::is_ok));
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(
            sizes.iter().all(|size| *size <= LIMITS.max_items),
            "{sizes:?}"
        );
        // One place: the first batch runs alone, the rest gathered behind it.
        assert!(sizes.len() <= 6, "{sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_item_in_it() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(LIMITS, |_items: Vec<u32>| async move {
                Err("database down".to_string())
            });
        let results = futures::future::join_all((0..3).map(|item| batcher.submit(item))).await;
        for result in results {
            assert_eq!(result.expect_err("failed").to_string(), "database down");
        }
    }

    #[tokio::test]
    async fn a_runner_that_miscounts_fails_the_batch_instead_of_pairing_wrongly() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(LIMITS, |items: Vec<u32>| async move {
                Ok(items.into_iter().skip(1).collect())
            });
        let result = batcher.submit(7).await;
        assert!(matches!(
            result,
            Err(BatchError::Miscounted {
                items: 1,
                results: 0
            })
        ));
    }
}
