//! Host-local IPC between dummy clients and the real client: a Unix-socket
//! listener with peer-credential checks, file-descriptor passing (SCM_RIGHTS) for
//! region registration, address translation for registered regions, and the tarpc
//! transport over the socket.
//!
//! A client opens two connections to the same socket. The **control** connection
//! carries tarpc calls (length-delimited postcard frames, see
//! [`mooncake_proto::codec`]). The **fd channel** carries registrations: each message
//! is a length-prefixed postcard payload sent with one `sendmsg`, with at most one fd
//! attached, and is read with exact-length `recvmsg` calls so no fd is ever lost to
//! an over-read. Both start with a [`wire::Hello`]; the fd channel names the session
//! the control connection opened, with its secret.
//!
//! # Layout
//!
//! - [`wire`]: hello, fd-channel messages, and the framed send/receive with fds.
//! - [`policy`]: [`PeerPolicy`], the uid allow-list.
//! - [`session`]: [`Session`] and its translation table of registered regions;
//!   [`Translation`] is a bounds-checked window into one of them.
//! - [`server`]: [`IpcServer`], accepting and authenticating connections.
//! - [`client`]: [`IpcClient`], connecting, registering regions, opening exports.
//! - [`error`]: the crate error type, [`IpcError`].

pub mod client;
pub mod error;
pub mod policy;
pub mod server;
pub mod session;
pub mod wire;

pub use client::IpcClient;
pub use error::IpcError;
pub use policy::PeerPolicy;
pub use server::{IpcConnection, IpcServer, IpcServerConfig};
pub use session::{Session, Translation};
