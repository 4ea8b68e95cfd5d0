//! Messages of the IPC handshake and fd channel, and the exact-length send/receive
//! that carries an fd with a message.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::Interest;
use tokio::net::UnixStream;

use mooncake_proto::ErrorCode;

/// Magic of every hello ("MCIP").
pub const MAGIC: u32 = 0x4d43_4950;
/// Version of this protocol. Version 1 had no build or schema in its hello.
pub const VERSION: u16 = 2;
/// Largest fd-channel or hello message.
pub const MAX_MESSAGE: usize = 64 << 10;
/// Most fds accepted with one message (extras are closed).
const MAX_FDS: usize = 4;

/// What a connection is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    /// tarpc calls; opens a new session.
    Control,
    /// Registrations for an existing session.
    Fds {
        /// Session id from the control connection's reply.
        session: u64,
        /// Session secret from the same reply.
        secret: u64,
    },
}

/// First message of every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// Control or fd channel.
    pub role: Role,
    /// Cluster token ("" when none).
    pub token: String,
    /// The sender's `mooncake_proto::VERSION`, named when schemas differ.
    pub build: String,
    /// The sender's `mooncake_proto::WIRE_SCHEMA`: the calls on the control
    /// connection are the proto crate's types.
    pub schema: u64,
}

/// The fields every version of [`Hello`] starts with, read first so that a peer
/// of another version is told so rather than "malformed".
#[derive(Debug, Clone, Deserialize)]
pub struct HelloPrefix {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
}

/// Answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    /// Session id and secret (control) or echo (fd channel); refusal code otherwise.
    pub result: Result<(u64, u64), ErrorCode>,
    /// Reason on refusal.
    pub message: String,
}

/// Requests on the fd channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FdRequest {
    /// Map `size` bytes at `fd_offset` of the attached fd; the client sees them at
    /// `client_base` in its own address space.
    Register {
        /// Client virtual address of the first byte.
        client_base: u64,
        /// Length.
        size: u64,
        /// Offset of the first byte in the fd.
        fd_offset: u64,
    },
    /// Forget the registration starting at `client_base`.
    Unregister {
        /// Client virtual address given at registration.
        client_base: u64,
    },
    /// Send the fd of a region the server exports (e.g. its global segment).
    Open {
        /// Export name.
        name: String,
    },
}

/// Answers on the fd channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FdReply {
    /// Registered.
    Registered,
    /// Unregistered.
    Unregistered,
    /// The export's fd is attached; it is `size` bytes long.
    Opened {
        /// Length of the export.
        size: u64,
    },
    /// Refused.
    Error(ErrorCode),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Sends one length-prefixed postcard message, with `fd` attached to its first byte.
pub async fn send<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let payload = postcard::to_stdvec(msg).map_err(|e| invalid(e.to_string()))?;
    if payload.len() > MAX_MESSAGE {
        return Err(invalid("message too large"));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&payload);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut sent = 0;
    let mut attach = !fds.is_empty();
    while sent < buf.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&buf[sent..])];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if attach {
                control.push(SendAncillaryMessage::ScmRights(&fds));
            }
            rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match result {
            Ok(n) => {
                sent += n;
                attach = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn recv_exact(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        stream.readable().await?;
        let result = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                .map_err(io::Error::from)?;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = msg {
                    fds.extend(received);
                }
            }
            Ok(r.bytes)
        });
        match result {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed mid-message",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives one message and the fds that came with it. Never reads past the message.
pub async fn recv<T: DeserializeOwned>(stream: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let (payload, fds) = recv_raw(stream).await?;
    let msg = postcard::from_bytes(&payload).map_err(|e| invalid(e.to_string()))?;
    Ok((msg, fds))
}

/// Receives one message's bytes undecoded, with the fds that came with it.
pub async fn recv_raw(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    recv_exact(stream, &mut len, &mut fds).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(invalid(format!(
            "message of {len} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    let mut payload = vec![0u8; len];
    recv_exact(stream, &mut payload, &mut fds).await?;
    Ok((payload, fds))
}
