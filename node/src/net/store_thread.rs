//! The store thread: one thread owns the node's store; connection tasks send it closures and
//! await their results, so the store needs no locks and SQLite sees one writer per process.

use tokio::sync::oneshot;

use super::NetError;
use crate::node::Node;

type Job = Box<dyn FnOnce(&mut Node) + Send>;

enum StoreMsg {
    Job(Job),
    /// Close the store (drop the node) and end the thread; then answer.
    Stop(oneshot::Sender<()>),
}

/// A handle to the thread that owns the node's store.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: std::sync::mpsc::Sender<StoreMsg>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Moves `node` onto its own thread.
    pub fn spawn(node: Node) -> StoreHandle {
        let (tx, rx) = std::sync::mpsc::channel::<StoreMsg>();
        let mut node = node;
        std::thread::Builder::new()
            .name("outpost-store".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    match msg {
                        StoreMsg::Job(job) => job(&mut node),
                        StoreMsg::Stop(done) => {
                            drop(node);
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the store thread: {e}"));
        StoreHandle { jobs: tx }
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(StoreMsg::Job(Box::new(move |node| {
                let _ = tx.send(f(node));
            })))
            .map_err(|_| NetError::StoreGone)?;
        rx.await.map_err(|_| NetError::StoreGone)
    }

    /// Finishes the jobs already sent, closes the store and ends its thread: when this
    /// returns, the database is closed. Later calls fail with [`NetError::StoreGone`].
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(StoreMsg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
