//! A master connection of the calling thread's own, for the threads serving a
//! dummy's call ring. Each such thread runs its calls on a runtime of its own
//! (`fastpath`), so a master call made there writes its request and reads its
//! answer on that thread. Through the shared connection the same call hands its
//! request to the connection's task on the runtime's workers and is woken by it
//! with the answer: two thread wake-ups more per call, tens of microseconds each
//! on a small virtual machine whose idle cores halt. For the same reason a ring
//! thread runs transfers and landed notes itself ([`run_blocking`]) instead of
//! handing them to the runtime's blocking pool.

use std::cell::RefCell;

use super::*;

/// This thread's connection, for one client and one master session.
struct ThreadMaster {
    client: ClientId,
    generation: u64,
    /// `None`: connecting failed (the shared connection serves this session).
    handle: Option<MasterHandle>,
}

thread_local! {
    static THREAD_MASTER: RefCell<Option<ThreadMaster>> = const { RefCell::new(None) };
    static SERVING_A_RING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one serving a call ring: a thread of its own,
/// which may block, so transfers and notes run on it rather than being handed
/// to the blocking pool (another two wake-ups).
pub(crate) fn mark_ring_thread() {
    SERVING_A_RING.with(|s| s.set(true));
}

/// Runs blocking work: here on a ring thread, else on the runtime's blocking pool.
pub(super) async fn run_blocking<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    if SERVING_A_RING.with(|s| s.get()) {
        Some(work())
    } else {
        tokio::task::spawn_blocking(work).await.ok()
    }
}

impl RealClient {
    /// On a thread serving a call ring, before a call: opens the thread's own
    /// connection to the master of the current session (once per session; a
    /// failure leaves the shared connection serving). Nothing to do with the
    /// master in this process.
    pub(crate) async fn prepare_thread_master(&self) {
        if self.local_master.is_some() || !self.healthy() {
            return;
        }
        let generation = *self.master_generation.borrow();
        let current = THREAD_MASTER.with(|t| t.borrow().as_ref().map(|m| (m.client, m.generation)));
        if current == Some((self.client_id, generation)) {
            return;
        }
        let Some(address) = self.master_address.lock().clone() else {
            return;
        };
        let connecting = connect_master(&address, &self.config.cluster_token);
        let handle = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
            Ok(Ok(client)) => Some(MasterHandle::Remote(client)),
            Ok(Err(e)) => {
                tracing::debug!("a ring thread's own master connection failed ({e}); sharing");
                None
            }
            Err(_) => None,
        };
        THREAD_MASTER.with(|t| {
            *t.borrow_mut() = Some(ThreadMaster {
                client: self.client_id,
                generation,
                handle,
            })
        });
    }

    /// This thread's own connection to the current session's master, if any.
    pub(super) fn thread_master(&self) -> Option<MasterHandle> {
        let generation = *self.master_generation.borrow();
        THREAD_MASTER.with(|t| {
            t.borrow()
                .as_ref()
                .filter(|m| m.client == self.client_id && m.generation == generation)
                .and_then(|m| m.handle.clone())
        })
    }

    /// Drops this thread's own connection after it failed: the shared one serves
    /// until the next session.
    pub(super) fn drop_thread_master(&self) {
        THREAD_MASTER.with(|t| {
            if let Some(m) = t.borrow_mut().as_mut()
                && m.client == self.client_id
            {
                m.handle = None;
            }
        })
    }
}
