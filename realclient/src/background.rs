//! [`BackgroundClient`]: a real client running on its own threads inside another
//! program — the Python package's `setup()`, which upstream implements as a full
//! client in the inference process. Dummies in the same process reach it through
//! its private Unix socket; it stops (unmounting its segment) when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{Endpoints, RealClient, RealClientConfig, run};

/// A real client served by a runtime on background threads of this process.
pub struct BackgroundClient {
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Arc<RealClient>,
    endpoints: Endpoints,
}

/// A socket path no other client of this process (or host) uses.
pub fn private_socket_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "mooncake_inproc_{}_{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

impl BackgroundClient {
    /// Starts a real client with `config` on `worker_threads` runtime threads and
    /// waits until dummies can connect and (up to `master_wait`) until the master
    /// session is up: an unreachable master is an error, as upstream's setup.
    pub fn start(
        config: RealClientConfig,
        worker_threads: usize,
        master_wait: Duration,
    ) -> crate::error::Result<BackgroundClient> {
        let master = config.master_server_address.clone();
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(Arc<RealClient>, Endpoints), String>>();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("mooncake-client".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads.max(1))
                    .thread_name("mooncake-client")
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot start the runtime: {e}")));
                        return;
                    }
                };
                let ready = tx.clone();
                let result = runtime.block_on(run(config, token, move |client, endpoints| {
                    let _ = ready.send(Ok((client.clone(), endpoints.clone())));
                }));
                if let Err(e) = result {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            })
            .map_err(crate::Error::io("cannot start the real client thread"))?;
        let (client, endpoints) = match rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(crate::Error::Startup(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(crate::Error::Startup(
                    "the real client stopped before it was ready".into(),
                ));
            }
        };
        let mut started = BackgroundClient {
            shutdown,
            thread: Some(thread),
            client,
            endpoints,
        };
        let deadline = Instant::now() + master_wait;
        while !started.client.healthy() {
            if Instant::now() >= deadline {
                started.stop();
                return Err(crate::Error::Startup(format!(
                    "cannot reach the master at {master}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(started)
    }

    /// The Unix socket dummies of this process connect to.
    pub fn socket(&self) -> &Path {
        &self.endpoints.ipc_socket
    }

    /// Where the client listens.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The client itself.
    pub fn client(&self) -> &Arc<RealClient> {
        &self.client
    }

    /// Stops the client (calls drain, the segment is unmounted) and waits for it.
    pub fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundClient {
    fn drop(&mut self) {
        self.stop();
    }
}
