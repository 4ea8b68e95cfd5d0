//! [`IpcServer`]: accepts local clients on a Unix socket (mode 0660), checks their
//! credentials and token, opens a [`Session`] per control connection, and serves fd
//! channels (registrations, exports) in the background.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mooncake_proto::ErrorCode;
use mooncake_proto::auth::secrets_match;
use mooncake_proto::codec::{MAX_FRAME_LEN, PostcardTransport, transport};
use mooncake_proto::limits::{LogGate, accept_backoff};
use mooncake_shm::{Region, RegionOptions};

use crate::error::IpcError;
use crate::policy::{PeerInfo, PeerPolicy};
use crate::session::Session;
use crate::wire::{self, FdReply, FdRequest, Hello, HelloPrefix, HelloReply, Role};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Server configuration; build with `IpcServerConfig::new(path).with_*(...)`.
#[derive(Clone)]
pub struct IpcServerConfig {
    path: PathBuf,
    policy: PeerPolicy,
    token: String,
    exports: Vec<(String, Arc<Region>)>,
    region_options: RegionOptions,
}

impl IpcServerConfig {
    /// Listens at `path`, admits the default peers, no token, no exports.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        IpcServerConfig {
            path: path.into(),
            policy: PeerPolicy::default(),
            token: String::new(),
            exports: Vec::new(),
            region_options: RegionOptions::default(),
        }
    }
    /// Sets the uid allow-list.
    pub fn with_policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Requires a cluster token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
    /// Offers a region's fd to clients under `name`.
    pub fn with_export(mut self, name: impl Into<String>, region: Arc<Region>) -> Self {
        self.exports.push((name.into(), region));
        self
    }
    /// How registered regions are mapped.
    pub fn with_region_options(mut self, options: RegionOptions) -> Self {
        self.region_options = options;
        self
    }
}

/// An authenticated control connection and its session.
pub struct IpcConnection {
    /// The client's session (translation table).
    pub session: Arc<Session>,
    /// The socket, positioned after the handshake.
    pub stream: UnixStream,
}

impl IpcConnection {
    /// A tarpc transport over the control connection.
    pub fn into_transport<Item, SinkItem>(
        self,
    ) -> (Arc<Session>, PostcardTransport<UnixStream, Item, SinkItem>)
    where
        Item: for<'de> Deserialize<'de>,
        SinkItem: Serialize,
    {
        let framed = Framed::new(
            self.stream,
            LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME_LEN)
                .new_codec(),
        );
        (self.session, transport(framed))
    }
}

struct Shared {
    config: Arc<IpcServerConfig>,
    sessions: Mutex<HashMap<u64, Weak<Session>>>,
    tracker: TaskTracker,
}

/// The listener. Connections are accepted and authenticated in the background (one
/// task each, so a silent or hostile peer never delays others); admitted control
/// connections wait for [`accept`](IpcServer::accept), their sessions already usable by
/// the client's fd channel.
pub struct IpcServer {
    path: PathBuf,
    incoming: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<IpcConnection>>,
    shutdown: CancellationToken,
}

impl Drop for IpcServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl IpcServer {
    /// Binds the socket (replacing a stale socket file) with mode 0660 and starts
    /// accepting. Must be called inside a tokio runtime.
    pub fn bind(config: IpcServerConfig) -> Result<IpcServer, IpcError> {
        if let Ok(meta) = std::fs::symlink_metadata(&config.path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(&config.path)?;
            } else {
                return Err(IpcError::Protocol(format!(
                    "{} exists and is not a socket",
                    config.path.display()
                )));
            }
        }
        let listener = UnixListener::bind(&config.path)?;
        std::fs::set_permissions(&config.path, std::fs::Permissions::from_mode(0o660))?;
        let path = config.path.clone();
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            sessions: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared, tx, shutdown.clone()));
        Ok(IpcServer {
            path,
            incoming: tokio::sync::Mutex::new(rx),
            shutdown,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next admitted control connection.
    pub async fn accept(&self) -> Result<IpcConnection, IpcError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| IpcError::Protocol("listener stopped".into()))
    }
}

/// Refusals and accept failures are logged at most once a second, with a count.
static REFUSALS: LogGate = LogGate::new(Duration::from_secs(1));
static ACCEPT_ERRORS: LogGate = LogGate::new(Duration::from_secs(1));

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    tx: tokio::sync::mpsc::Sender<IpcConnection>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    // Out of fds: back off instead of spinning on the same error.
                    if let Some(held_back) = ACCEPT_ERRORS.admit() {
                        tracing::warn!(error = %e, held_back, "IPC accept failed");
                    }
                    tokio::time::sleep(accept_backoff(failures)).await;
                    failures += 1;
                    continue;
                }
            },
        };
        let shared2 = shared.clone();
        let tx = tx.clone();
        shared.tracker.spawn(async move {
            match admit(&shared2, stream).await {
                Ok(Some(conn)) => {
                    let _ = tx.send(conn).await;
                }
                Ok(None) => {}
                Err(reason) => {
                    if let Some(held_back) = REFUSALS.admit() {
                        tracing::warn!(held_back, "refused IPC connection: {reason}");
                    }
                }
            }
        });
    }
    shared.tracker.close();
}

/// Decodes a hello, refusing other magics, versions and wire schemas by name.
fn check_hello(bytes: &[u8]) -> Result<Hello, (ErrorCode, String)> {
    let malformed =
        |e: postcard::Error| (ErrorCode::InvalidParams, format!("malformed hello: {e}"));
    let (prefix, _) = postcard::take_from_bytes::<HelloPrefix>(bytes).map_err(malformed)?;
    if prefix.magic != wire::MAGIC {
        return Err((ErrorCode::InvalidVersion, "bad magic".into()));
    }
    if prefix.version != wire::VERSION {
        return Err((
            ErrorCode::InvalidVersion,
            format!(
                "IPC version {} (this real client speaks {}): the dummy is another mooncake-rs \
                 build; run it from the same build as mooncake_client",
                prefix.version,
                wire::VERSION
            ),
        ));
    }
    let hello = postcard::from_bytes::<Hello>(bytes).map_err(malformed)?;
    if hello.schema != mooncake_proto::WIRE_SCHEMA {
        return Err((
            ErrorCode::InvalidVersion,
            mooncake_proto::schema_mismatch(&hello.build, hello.schema),
        ));
    }
    Ok(hello)
}

async fn refuse(stream: &UnixStream, code: ErrorCode, message: String) -> String {
    let reply = HelloReply {
        result: Err(code),
        message: message.clone(),
    };
    let _ = tokio::time::timeout(HELLO_TIMEOUT, wire::send(stream, &reply, None)).await;
    message
}

async fn admit(shared: &Arc<Shared>, stream: UnixStream) -> Result<Option<IpcConnection>, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let peer = PeerInfo {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, wire::recv_raw(&stream)).await;
    let hello = match hello {
        Err(_) => return Err("no hello within the timeout".into()),
        Ok(Err(e)) => return Err(format!("malformed hello: {e}")),
        Ok(Ok((bytes, _fds))) => bytes,
    };
    let config = &shared.config;
    if let Err(reason) = config.policy.check(&peer) {
        return Err(refuse(&stream, ErrorCode::IllegalClient, reason.to_string()).await);
    }
    let hello = match check_hello(&hello) {
        Ok(hello) => hello,
        Err((code, message)) => return Err(refuse(&stream, code, message).await),
    };
    if !secrets_match(&config.token, &hello.token) {
        return Err(refuse(
            &stream,
            ErrorCode::IllegalClient,
            "wrong cluster token".into(),
        )
        .await);
    }
    match hello.role {
        Role::Control => {
            let (id, secret) = (rand::random::<u64>(), rand::random::<u64>());
            let session = Arc::new(Session::new(id, secret, peer));
            {
                let mut sessions = shared.sessions.lock();
                sessions.retain(|_, s| s.strong_count() > 0);
                sessions.insert(id, Arc::downgrade(&session));
            }
            let reply = HelloReply {
                result: Ok((id, secret)),
                message: String::new(),
            };
            wire::send(&stream, &reply, None)
                .await
                .map_err(|e| format!("hello reply: {e}"))?;
            tracing::debug!(session = id, uid = peer.uid, pid = ?peer.pid, "IPC session opened");
            Ok(Some(IpcConnection { session, stream }))
        }
        Role::Fds { session, secret } => {
            let found = shared.sessions.lock().get(&session).and_then(Weak::upgrade);
            let Some(found) = found.filter(|s| s.secret() == secret && s.peer().uid == peer.uid)
            else {
                return Err(
                    refuse(&stream, ErrorCode::IllegalClient, "unknown session".into()).await,
                );
            };
            let reply = HelloReply {
                result: Ok((session, secret)),
                message: String::new(),
            };
            wire::send(&stream, &reply, None)
                .await
                .map_err(|e| format!("hello reply: {e}"))?;
            serve_fd_channel(stream, found, shared.config.clone()).await;
            Ok(None)
        }
    }
}

async fn serve_fd_channel(stream: UnixStream, session: Arc<Session>, config: Arc<IpcServerConfig>) {
    loop {
        let (request, mut fds) = match wire::recv::<FdRequest>(&stream).await {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!(session = session.id(), error = %e, "fd channel closed on a bad message");
                }
                return;
            }
        };
        if session.is_closed() {
            return;
        }
        let (reply, attach) = match request {
            FdRequest::Register {
                client_base,
                size,
                fd_offset,
            } => {
                let reply = if fds.len() != 1 {
                    FdReply::Error(ErrorCode::InvalidParams)
                } else {
                    let fd = fds.pop().expect("one fd");
                    match Region::from_fd(fd, fd_offset, size, &config.region_options) {
                        Err(e) => {
                            tracing::warn!(session = session.id(), error = %e, "registration refused");
                            FdReply::Error(e.code())
                        }
                        Ok(region) => match session.register(client_base, region) {
                            Ok(()) => FdReply::Registered,
                            Err(code) => FdReply::Error(code),
                        },
                    }
                };
                (reply, None)
            }
            FdRequest::Unregister { client_base } => match session.unregister(client_base) {
                Ok(()) => (FdReply::Unregistered, None),
                Err(code) => (FdReply::Error(code), None),
            },
            FdRequest::Open { name } => match config.exports.iter().find(|(n, _)| *n == name) {
                Some((_, region)) => (
                    FdReply::Opened {
                        size: region.len() as u64,
                    },
                    Some(region.clone()),
                ),
                None => (FdReply::Error(ErrorCode::InvalidParams), None),
            },
        };
        drop(fds);
        let fd = attach.as_ref().map(|r| r.fd());
        if wire::send(&stream, &reply, fd).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u16, schema: u64) -> Hello {
        Hello {
            magic: wire::MAGIC,
            version,
            role: Role::Control,
            token: String::new(),
            build: "0.0.1-old".into(),
            schema,
        }
    }

    #[test]
    fn a_dummy_of_another_build_is_refused_by_name() {
        let ok = postcard::to_stdvec(&hello(wire::VERSION, mooncake_proto::WIRE_SCHEMA)).unwrap();
        assert!(check_hello(&ok).is_ok());

        let other = postcard::to_stdvec(&hello(wire::VERSION, 7)).unwrap();
        let (code, message) = check_hello(&other).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidVersion);
        assert!(
            message.contains("0.0.1-old") && message.contains("same build"),
            "{message}"
        );

        // Version 1 hellos ended after the token.
        #[derive(serde::Serialize)]
        struct HelloV1 {
            magic: u32,
            version: u16,
            role: Role,
            token: String,
        }
        let v1 = HelloV1 {
            magic: wire::MAGIC,
            version: 1,
            role: Role::Control,
            token: String::new(),
        };
        let (code, message) = check_hello(&postcard::to_stdvec(&v1).unwrap()).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidVersion);
        assert!(message.contains("IPC version 1"), "{message}");

        let (code, _) = check_hello(b"\x01").unwrap_err();
        assert_eq!(code, ErrorCode::InvalidParams);
    }
}
