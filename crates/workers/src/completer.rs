//! Completions shared between a worker's attempts: each finished attempt hands its result to one
//! task, which commits everything waiting with one [`Queue::complete_many`]. Short jobs that
//! finish together share a commit (one disk sync on the embedded store, one resolver pass on
//! FoundationDB) instead of paying one each. Nothing waits to fill a batch: a completion that
//! finds the task idle is committed at once, alone; the ones that arrive during that commit go in
//! the next.

use std::sync::Arc;

use serde_json::Value;
use steward_queue::{json_size, Error, Lease, Queue};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// At most this many completions share a commit.
const MAX_BATCH: usize = 128;
/// At most this many result bytes share a commit (`complete_many` refuses more than 4 MiB).
const MAX_BATCH_BYTES: usize = 1 << 20;

type Reply = oneshot::Sender<Result<(), Error>>;

/// A handle to the completion task; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Completer {
    queue: Arc<Queue>,
    tx: mpsc::UnboundedSender<(Lease, Value, Reply)>,
}

impl Completer {
    /// Starts the completion task; it ends when every handle is dropped and the completions
    /// already handed over are committed.
    pub(crate) fn spawn(queue: Arc<Queue>) -> (Completer, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::clone(&queue), rx));
        (Completer { queue, tx }, task)
    }

    /// Completes the job as [`Queue::complete`] would (the same answers), in a shared commit.
    pub(crate) async fn complete(&self, lease: &Lease, value: Value) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((lease, value, _))) =
            self.tx.send((lease.clone(), value, reply))
        {
            // The task is gone (it only ends after every handle): complete directly.
            return self.queue.complete(&lease, value).await;
        }
        // A dropped reply means the task panicked mid-commit: the job may or may not be
        // completed. Reported as such; if it was not, its lease expires and it runs again.
        answer
            .await
            .unwrap_or(Err(Error::Store(steward_store::Error::CommitUnknownResult)))
    }
}

async fn run(queue: Arc<Queue>, mut rx: mpsc::UnboundedReceiver<(Lease, Value, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut bytes = json_size(&first.1);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes = bytes.saturating_add(json_size(&next.1));
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (done, replies): (Vec<(Lease, Value)>, Vec<Reply>) = batch
            .into_iter()
            .map(|(lease, value, reply)| ((lease, value), reply))
            .unzip();
        match queue.complete_many(&done).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // Ignored: the attempt stopped waiting (its task was aborted).
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // The shared commit failed as a whole (after its retries): each completion
                // gets its own, so each gets its own answer.
                tracing::warn!(error = %e, jobs = done.len(), "batched completion failed; completing one by one");
                for ((lease, value), reply) in done.into_iter().zip(replies) {
                    let _ = reply.send(queue.complete(&lease, value).await);
                }
            }
        }
    }
}
