//! [`IpcClient`]: the client side: opens a session, registers regions by passing
//! their fds, and maps regions the server exports.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use mooncake_proto::ErrorCode;
use mooncake_proto::codec::{MAX_FRAME_LEN, PostcardTransport, transport};
use mooncake_shm::{Region, RegionOptions};

use crate::error::IpcError;
use crate::wire::{self, FdReply, FdRequest, Hello, HelloReply, Role};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected client. Dropping it closes the fd channel; the server ends the
/// session when the control connection closes.
pub struct IpcClient {
    session: u64,
    fds: Mutex<UnixStream>,
}

async fn hello(stream: &UnixStream, role: Role, token: &str) -> Result<(u64, u64), IpcError> {
    let hello = Hello {
        magic: wire::MAGIC,
        version: wire::VERSION,
        role,
        token: token.to_string(),
        build: mooncake_proto::VERSION.to_string(),
        schema: mooncake_proto::WIRE_SCHEMA,
    };
    let exchange = async {
        wire::send(stream, &hello, None).await?;
        wire::recv::<HelloReply>(stream).await
    };
    let (reply, _) = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| IpcError::Timeout("hello"))??;
    reply.result.map_err(|code| IpcError::Refused {
        code,
        message: reply.message,
    })
}

impl IpcClient {
    /// Connects to the server at `path`: returns the client (fd channel) and the
    /// control stream for [`control_transport`].
    pub async fn connect(path: &Path, token: &str) -> Result<(IpcClient, UnixStream), IpcError> {
        let control = UnixStream::connect(path).await?;
        let (session, secret) = hello(&control, Role::Control, token).await?;
        let fds = UnixStream::connect(path).await?;
        hello(&fds, Role::Fds { session, secret }, token).await?;
        Ok((
            IpcClient {
                session,
                fds: Mutex::new(fds),
            },
            control,
        ))
    }

    /// The session id the server assigned.
    pub fn session(&self) -> u64 {
        self.session
    }

    async fn request(
        &self,
        request: &FdRequest,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(FdReply, Vec<std::os::fd::OwnedFd>), IpcError> {
        let stream = self.fds.lock().await;
        let exchange = async {
            wire::send(&stream, request, fd).await?;
            wire::recv::<FdReply>(&stream).await
        };
        Ok(tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| IpcError::Timeout("fd channel request"))??)
    }

    /// Registers `len` bytes of `region` starting at `offset`, which this process
    /// sees at `region.as_ptr() + offset`.
    pub async fn register(&self, region: &Region, offset: u64, len: u64) -> Result<u64, IpcError> {
        region.check(offset, len)?;
        let client_base = region.as_ptr() as u64 + offset;
        let request = FdRequest::Register {
            client_base,
            size: len,
            fd_offset: region.fd_offset() + offset,
        };
        match self.request(&request, Some(region.fd())).await?.0 {
            FdReply::Registered => Ok(client_base),
            FdReply::Error(code) => Err(IpcError::Refused {
                code,
                message: "registration refused".into(),
            }),
            other => Err(IpcError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sends a raw registration (any fd, any claimed base): for tests of bad input.
    pub async fn register_raw(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        client_base: u64,
        size: u64,
        fd_offset: u64,
    ) -> Result<(), ErrorCode> {
        let request = FdRequest::Register {
            client_base,
            size,
            fd_offset,
        };
        match self.request(&request, Some(fd)).await {
            Ok((FdReply::Registered, _)) => Ok(()),
            Ok((FdReply::Error(code), _)) => Err(code),
            Ok(_) => Err(ErrorCode::RpcFail),
            Err(e) => Err(e.code()),
        }
    }

    /// Forgets the registration starting at `client_base`.
    pub async fn unregister(&self, client_base: u64) -> Result<(), IpcError> {
        match self
            .request(&FdRequest::Unregister { client_base }, None)
            .await?
            .0
        {
            FdReply::Unregistered => Ok(()),
            FdReply::Error(code) => Err(IpcError::Refused {
                code,
                message: "unregister refused".into(),
            }),
            other => Err(IpcError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Maps a file on a local disk the server exports under `name` (the disk
    /// tier's data file), whole.
    pub async fn open_file(&self, name: &str) -> Result<Region, IpcError> {
        let (reply, mut fds) = self
            .request(&FdRequest::Open { name: name.into() }, None)
            .await?;
        match reply {
            FdReply::Opened { size } if fds.len() == 1 => {
                Ok(Region::from_disk_fd(fds.pop().expect("one fd"), size)?)
            }
            FdReply::Error(code) => Err(IpcError::Refused {
                code,
                message: format!("no export named {name:?}"),
            }),
            other => Err(IpcError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Maps a region the server exports under `name`.
    pub async fn open(&self, name: &str, options: &RegionOptions) -> Result<Region, IpcError> {
        let (reply, mut fds) = self
            .request(&FdRequest::Open { name: name.into() }, None)
            .await?;
        match reply {
            FdReply::Opened { size } if fds.len() == 1 => Ok(Region::from_fd(
                fds.pop().expect("one fd"),
                0,
                size,
                options,
            )?),
            FdReply::Error(code) => Err(IpcError::Refused {
                code,
                message: format!("no export named {name:?}"),
            }),
            other => Err(IpcError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

/// A tarpc transport over the control stream returned by [`IpcClient::connect`].
pub fn control_transport<Item, SinkItem>(
    stream: UnixStream,
) -> PostcardTransport<UnixStream, Item, SinkItem>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let framed = Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec(),
    );
    transport(framed)
}
