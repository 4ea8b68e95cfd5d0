//! The clients of a store set up with upstream's `setup()`: one connection to
//! the real client this process runs, and, when this process contributes no
//! segment, one to a real client on the same host that serves the same master.
//!
//! Without a segment of its own, every value such a process puts lives in
//! another process's segment. When that process is a real client on this host,
//! calling it directly, as its own dummies do, takes the master and the copy to
//! it in one call: the value is copied once into its mapped segment and the
//! write is placed in space the master already granted it, with one commit,
//! where the in-process real client needs the master's `put_start`, the
//! holder's acceptance, the copy, the landed note and `put_end`. Reads are
//! served from its segment mapped here. Segment calls (`unmount`) and
//! everything tied to this process's own real client stay on that one; while
//! the host's real client is away (restarting, killed) calls go through this
//! process's real client as before.
//!
//! A store that finds none at `setup` looks again every 5 s in the background
//! until it does (a real client started after the inference process).
//!
//! `MC_HOST_REAL_CLIENT` chooses: unset or `auto` finds one (a real client whose
//! transfer port is on this host, in this network namespace, whose Unix
//! socket is reachable, the largest segment first), `off` (or `0`, `false`)
//! never routes, and `host:port` or a socket path names the real client (as
//! `setup_dummy`'s address). A named one is used only if this process's master
//! has its segment mounted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use mooncake_dummyclient::{ConnectOptions, DummyClient, DummyError};
use mooncake_proto::MResult;
use mooncake_realclient::RealClient;
use mooncake_realclient::background::BackgroundClient;

/// How long finding a real client on this host may take at `setup`.
const FIND_WITHIN: Duration = Duration::from_secs(2);
/// How often a store that found none looks again.
const FIND_AGAIN: Duration = Duration::from_secs(5);

/// Whether and where a segment-less `setup()` sends its calls to a real client
/// on this host (`MC_HOST_REAL_CLIENT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostRoute {
    /// Find one (the default).
    #[default]
    Auto,
    /// Never: every call goes through this process's real client.
    Off,
    /// The real client listening on this Unix socket.
    Named(PathBuf),
}

impl HostRoute {
    /// Reads `value` as `MC_HOST_REAL_CLIENT` is read; `None` (unset) is `Auto`.
    /// An error names what the value is not.
    pub fn parse(value: Option<&str>) -> Result<HostRoute, String> {
        let Some(v) = value.map(str::trim) else {
            return Ok(HostRoute::Auto);
        };
        match v.to_ascii_lowercase().as_str() {
            "" | "auto" | "1" | "true" | "on" => Ok(HostRoute::Auto),
            "off" | "0" | "false" | "no" => Ok(HostRoute::Off),
            _ => Ok(HostRoute::Named(named_socket(v)?)),
        }
    }
}

/// The socket of the real client `host:port` (its `--port`) or a path names.
fn named_socket(v: &str) -> Result<PathBuf, String> {
    if v.contains('/') {
        return Ok(PathBuf::from(v));
    }
    let port = v.rsplit_once(':').map_or(v, |(_, p)| p);
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{v:?} is neither auto, off, host:port nor a socket path"))?;
    Ok(mooncake_realclient::config::default_socket_path(port))
}

/// The clients of a set-up store: with `setup_dummy`, its one client; with
/// `setup`, the client of this process's real client and perhaps one of a real
/// client on this host.
pub struct Clients {
    /// Connected to the real client in this process.
    own: DummyClient,
    /// The real client on this host, once found.
    host: Arc<HostSlot>,
    /// Looks for one in the background until found; stopped on drop.
    finder: Option<Finder>,
}

/// Where the client of the real client on this host goes once found.
#[derive(Default)]
struct HostSlot {
    client: OnceLock<DummyClient>,
    /// Cleared for good when that client refused something the own one
    /// accepted (a buffer registration): calls then stay in this process.
    usable: AtomicBool,
    /// The buffers registered with the own client, as `(address, length)`:
    /// registered with the host's client too when it is found later. Held
    /// while registering with both, so neither misses one.
    registered: Mutex<Vec<(u64, u64)>>,
}

/// The background search for a real client on this host.
struct Finder {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Finder {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then ends; joined so that
        // it never uses the in-process real client after the store stopped it.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Clients {
    /// One client, for everything (`setup_dummy`).
    pub fn single(dummy: DummyClient) -> Clients {
        Clients {
            own: dummy,
            host: Arc::default(),
            finder: None,
        }
    }

    /// Connects to `background` and, when `no_segment` and `route` allow, to a
    /// real client on this host; when there is none yet, keeps looking every
    /// few seconds in the background.
    ///
    /// # Safety
    ///
    /// `background` runs in this process; the caller keeps the contract of
    /// [`DummyClient::connect_in_process`] for every buffer it registers.
    pub unsafe fn connect(
        background: &BackgroundClient,
        token: &str,
        options: ConnectOptions,
        no_segment: bool,
        route: HostRoute,
    ) -> Result<Clients, DummyError> {
        // SAFETY: `background` runs in this process (this function's contract),
        // which also carries the buffer contract over to the caller.
        let own = unsafe {
            DummyClient::connect_in_process(background.socket(), token, options.clone())
        }?;
        let host = Arc::new(HostSlot {
            usable: AtomicBool::new(true),
            ..HostSlot::default()
        });
        if !no_segment || route == HostRoute::Off {
            return Ok(Clients {
                own,
                host,
                finder: None,
            });
        }
        let search = Search {
            client: background.client().clone(),
            token: token.to_string(),
            options,
            route,
        };
        // SAFETY: as above; a real client in another process never serves this
        // process's memory (it checks the peer's pid), so what no region maps
        // is staged.
        if let Some(found) = unsafe { search.find(true) } {
            let _ = host.client.set(found);
            return Ok(Clients {
                own,
                host,
                finder: None,
            });
        }
        tracing::info!(
            "no real client on this host to send calls to yet; looking again every {} s",
            FIND_AGAIN.as_secs()
        );
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let slot = host.clone();
        let thread = std::thread::Builder::new()
            .name("mooncake-find-host".into())
            .spawn(move || {
                // Until found or told to stop (the sender dropped).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FIND_AGAIN)
                {
                    // SAFETY: the contract of `connect`, which the store keeps
                    // for as long as this thread runs (it is joined on drop).
                    let Some(found) = (unsafe { search.find(false) }) else {
                        continue;
                    };
                    let registered = slot.registered.lock();
                    let all_taken = registered
                        .iter()
                        .all(|&(addr, len)| found.register_buffer(addr, len).is_ok());
                    if all_taken {
                        let _ = slot.client.set(found);
                        return;
                    }
                    tracing::warn!(
                        "the real client on this host refused a registered buffer; calls stay in this process"
                    );
                }
            })
            .ok();
        Ok(Clients {
            own,
            host,
            finder: thread.map(|t| Finder {
                stop: Some(stop),
                thread: Some(t),
            }),
        })
    }

    /// The client calls on objects go through: the host's real client while
    /// connected to it, else this process's.
    pub fn data(&self) -> &DummyClient {
        match self.host.client.get() {
            Some(h) if self.host.usable.load(Ordering::Relaxed) && h.is_connected() => h,
            _ => &self.own,
        }
    }

    /// The client of the real client in this process (of the host's, with
    /// `setup_dummy`): for what belongs to that client (its name, its segments).
    pub fn own(&self) -> &DummyClient {
        &self.own
    }

    /// Whether calls on objects go to a real client on this host now.
    pub fn routed(&self) -> bool {
        !std::ptr::eq(self.data(), &self.own)
    }

    /// Registers the buffer with both clients; the own client's answer is the
    /// answer.
    pub fn register_buffer(&self, addr: u64, len: u64) -> MResult<()> {
        let mut registered = self.host.registered.lock();
        let own = self.own.register_buffer(addr, len);
        if own.is_ok() {
            registered.push((addr, len));
            if let Some(h) = self.host.client.get()
                && let Err(e) = h.register_buffer(addr, len)
            {
                tracing::warn!(
                    "the real client on this host refused a buffer ({e}); calls go through this process's client from now on"
                );
                self.host.usable.store(false, Ordering::Relaxed);
            }
        }
        own
    }

    /// Unregisters the buffer from both clients; the own client's answer is
    /// the answer.
    pub fn unregister_buffer(&self, addr: u64) -> MResult<()> {
        let mut registered = self.host.registered.lock();
        registered.retain(|&(a, _)| a != addr);
        if let Some(h) = self.host.client.get() {
            let _ = h.unregister_buffer(addr);
        }
        self.own.unregister_buffer(addr)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // The search first: it may be using the in-process real client.
        self.finder.take();
    }
}

/// What finding the real client on this host needs.
struct Search {
    client: Arc<RealClient>,
    token: String,
    options: ConnectOptions,
    route: HostRoute,
}

impl Search {
    /// The client of the real client on this host the route names or finds,
    /// when its segment is mounted with this process's master. `first`: the
    /// attempt at `setup`, whose failures are reported (later ones quietly).
    ///
    /// # Safety
    ///
    /// As [`Clients::connect`].
    unsafe fn find(&self, first: bool) -> Option<DummyClient> {
        let client = &self.client;
        let socket = match &self.route {
            HostRoute::Off => return None,
            HostRoute::Named(socket) => socket.clone(),
            HostRoute::Auto => client.same_host_real_client(FIND_WITHIN)?.0,
        };
        // SAFETY: the caller's contract.
        let connected =
            unsafe { DummyClient::connect_in_process(&socket, &self.token, self.options.clone()) };
        let host = match connected {
            Ok(h) => h,
            Err(e) => {
                if first {
                    tracing::info!(
                        "the real client at {} cannot be used ({e}); calls go through this process's client",
                        socket.display()
                    );
                }
                return None;
            }
        };
        let mounted = host.segment_id().is_some_and(|id| {
            client
                .runtime_handle()
                .block_on(client.all_segments())
                .is_ok_and(|all| all.iter().any(|d| d.id == id))
        });
        if !mounted {
            if first {
                tracing::warn!(
                    "the real client at {} does not serve this store's master; calls go through this process's client",
                    socket.display()
                );
            }
            return None;
        }
        tracing::info!(
            "no segment of its own: calls go to the real client on this host at {}",
            socket.display()
        );
        Some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_auto_off_and_names() {
        assert_eq!(HostRoute::parse(None), Ok(HostRoute::Auto));
        assert_eq!(HostRoute::parse(Some("auto")), Ok(HostRoute::Auto));
        assert_eq!(HostRoute::parse(Some("0")), Ok(HostRoute::Off));
        assert_eq!(HostRoute::parse(Some("OFF")), Ok(HostRoute::Off));
        assert_eq!(
            HostRoute::parse(Some("/tmp/rc.sock")),
            Ok(HostRoute::Named(PathBuf::from("/tmp/rc.sock")))
        );
        assert_eq!(
            HostRoute::parse(Some("127.0.0.1:50052")),
            Ok(HostRoute::Named(
                mooncake_realclient::config::default_socket_path(50052)
            ))
        );
        assert!(HostRoute::parse(Some("somewhere")).is_err());
    }
}
