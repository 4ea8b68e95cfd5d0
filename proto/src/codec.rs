//! Framing, codec and handshake for every tarpc connection in mooncake-rs.
//!
//! A connection is a length-delimited byte stream. The first frame from the client is
//! a [`Hello`] naming the service, the protocol version and the cluster token; the server
//! answers with a [`HelloReply`]. After that, frames carry tarpc messages encoded with
//! postcard. Frames larger than [`MAX_FRAME_LEN`] are refused by the framing layer, so a
//! malformed length can never make a process allocate unbounded memory.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::auth::Credentials;
use crate::error::ErrorCode;
use std::net::IpAddr;

/// Largest frame accepted, in bytes.
pub const MAX_FRAME_LEN: usize = 256 << 20;
/// Largest [`Hello`] a server reads: nothing larger is buffered before the peer
/// has proved it holds the credential.
pub const MAX_HELLO_LEN: usize = 64 << 10;
/// Handshake magic ("MCRS").
pub const HELLO_MAGIC: u32 = 0x4d43_5253;
/// Version of the framing and handshake. Version 1 had no build or schema in
/// its hello; its peers are refused by version.
pub const PROTOCOL_VERSION: u16 = 2;
/// How long either side waits for the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// First frame of every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`HELLO_MAGIC`].
    pub magic: u32,
    /// Always [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Service the client expects (`master`, `realclient`, `peer`).
    pub service: String,
    /// Cluster token; empty when the cluster has none.
    pub token: String,
    /// The sender's [`crate::VERSION`], for the message when schemas differ.
    pub build: String,
    /// The sender's [`crate::WIRE_SCHEMA`].
    pub schema: u64,
}

/// The fields every version of [`Hello`] starts with: read first, so a peer of
/// another protocol version is told so rather than "malformed".
#[derive(Debug, Deserialize)]
struct HelloPrefix {
    magic: u32,
    version: u16,
}

/// Server's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    /// `Ok` when the connection is accepted.
    pub result: Result<(), ErrorCode>,
    /// Human-readable reason on refusal.
    pub message: String,
}

/// Errors of the connection helpers.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Socket-level failure.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer did not complete the handshake in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer spoke something else.
    #[error("handshake failed: {0}")]
    Protocol(String),
    /// A master address that cannot be dialled: `etcd://` names an HA cluster
    /// (the real client resolves its leader first), `redis://` and `k8s://` are
    /// upstream's other HA backends, not built here.
    #[error(
        "{0}: not a master host:port; etcd:// addresses are followed by the real client, and upstream's redis:// and k8s:// HA backends are not built here (use etcd://)"
    )]
    HaNotBuilt(String),
    /// The peer refused us (wrong token, wrong service).
    #[error("refused by peer ({code}): {message}")]
    Refused {
        /// Error code given by the peer.
        code: ErrorCode,
        /// Reason given by the peer.
        message: String,
    },
}

impl ConnectError {
    /// The error code a caller should report for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectError::Refused { code, .. } => *code,
            ConnectError::Timeout => ErrorCode::RpcTimeout,
            ConnectError::HaNotBuilt(_) => ErrorCode::InvalidParams,
            _ => ErrorCode::RpcFail,
        }
    }
}

/// Marker making the codec `Send + Sync` whatever the message types are.
type Directions<Item, SinkItem> = (fn() -> Item, fn(SinkItem));

/// A tarpc codec that encodes with postcard.
pub struct PostcardCodec<Item, SinkItem>(PhantomData<Directions<Item, SinkItem>>);

impl<Item, SinkItem> Default for PostcardCodec<Item, SinkItem> {
    fn default() -> Self {
        PostcardCodec(PhantomData)
    }
}

impl<Item, SinkItem: Serialize> tokio_serde::Serializer<SinkItem>
    for PostcardCodec<Item, SinkItem>
{
    type Error = io::Error;
    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<Bytes, io::Error> {
        postcard::to_stdvec(item)
            .map(Bytes::from)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl<Item: for<'de> Deserialize<'de>, SinkItem> tokio_serde::Deserializer<Item>
    for PostcardCodec<Item, SinkItem>
{
    type Error = io::Error;
    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, io::Error> {
        postcard::from_bytes(src).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// A tarpc transport over any byte stream with the project's framing and codec.
pub type PostcardTransport<S, Item, SinkItem> =
    Transport<S, Item, SinkItem, PostcardCodec<Item, SinkItem>>;

fn framed<S: AsyncRead + AsyncWrite>(io: S) -> Framed<S, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_LEN)
        .new_framed(io)
}

/// Wraps an already-handshaken framed stream into a tarpc transport.
pub fn transport<S, Item, SinkItem>(
    framed: Framed<S, LengthDelimitedCodec>,
) -> PostcardTransport<S, Item, SinkItem>
where
    S: AsyncRead + AsyncWrite,
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    tarpc::serde_transport::new(framed, PostcardCodec::default())
}

/// Client side of the handshake: sends [`Hello`], waits for the reply.
pub async fn client_handshake<S>(
    io: S,
    service: &str,
    token: &str,
) -> Result<Framed<S, LengthDelimitedCodec>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(io);
    let hello = Hello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        service: service.to_string(),
        token: token.to_string(),
        build: crate::VERSION.to_string(),
        schema: crate::WIRE_SCHEMA,
    };
    let bytes = postcard::to_stdvec(&hello).map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let exchange = async {
        framed.send(Bytes::from(bytes)).await?;
        match framed.next().await {
            Some(frame) => Ok(frame?),
            None => Err(ConnectError::Protocol(
                "connection closed during handshake".into(),
            )),
        }
    };
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let reply: HelloReply =
        postcard::from_bytes(&frame).map_err(|e| ConnectError::Protocol(e.to_string()))?;
    match reply.result {
        Ok(()) => Ok(framed),
        Err(code) => Err(ConnectError::Refused {
            code,
            message: reply.message,
        }),
    }
}

/// Server side of the handshake: checks magic, version, service and the
/// credential the peer at `peer` presents (see [`Credentials::admits`]).
/// On refusal the reason is sent to the peer and returned here for logging.
pub async fn server_handshake<S>(
    io: S,
    service: &str,
    credentials: &Credentials,
    peer: Option<IpAddr>,
) -> Result<Framed<S, LengthDelimitedCodec>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = framed(io);
    framed.codec_mut().set_max_frame_length(MAX_HELLO_LEN);
    let frame = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(None) => return Err(ConnectError::Protocol("closed before handshake".into())),
        Ok(Some(frame)) => frame?,
    };
    let verdict = match postcard::take_from_bytes::<HelloPrefix>(&frame) {
        Err(e) => Err((ErrorCode::InvalidParams, format!("malformed hello: {e}"))),
        Ok((p, _)) if p.magic != HELLO_MAGIC => Err((ErrorCode::InvalidParams, "bad magic".into())),
        Ok((p, _)) if p.version != PROTOCOL_VERSION => Err((
            ErrorCode::InvalidVersion,
            format!(
                "handshake version {} (this process speaks {PROTOCOL_VERSION}): the peer is \
                 another mooncake-rs build; run all processes from the same build",
                p.version
            ),
        )),
        Ok(_) => match postcard::from_bytes::<Hello>(&frame) {
            Err(e) => Err((ErrorCode::InvalidParams, format!("malformed hello: {e}"))),
            Ok(h) if h.schema != crate::WIRE_SCHEMA => Err((
                ErrorCode::InvalidVersion,
                crate::schema_mismatch(&h.build, h.schema),
            )),
            Ok(h) if h.service != service => Err((
                ErrorCode::InvalidParams,
                format!("this endpoint serves {service:?}, not {:?}", h.service),
            )),
            Ok(h) if !credentials.admits(peer, &h.token) => {
                Err((ErrorCode::IllegalClient, credentials.refusal().into()))
            }
            Ok(_) => Ok(()),
        },
    };
    let reply = HelloReply {
        result: verdict.as_ref().map(|_| ()).map_err(|(code, _)| *code),
        message: verdict
            .as_ref()
            .err()
            .map(|(_, m)| m.clone())
            .unwrap_or_default(),
    };
    let bytes = postcard::to_stdvec(&reply).map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.send(Bytes::from(bytes))).await;
    match verdict {
        Ok(()) => {
            framed.codec_mut().set_max_frame_length(MAX_FRAME_LEN);
            Ok(framed)
        }
        Err((code, message)) => Err(ConnectError::Refused { code, message }),
    }
}

/// Connects to a TCP service, performs the handshake and returns a tarpc transport.
/// Presents `token`, or without one the host secret to a server on this host.
pub async fn connect_tcp<Item, SinkItem>(
    addr: &str,
    service: &str,
    token: &str,
) -> Result<PostcardTransport<tokio::net::TcpStream, Item, SinkItem>, ConnectError>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    stream.set_nodelay(true)?;
    let credentials = Credentials::new(token);
    let dest = stream.peer_addr().ok().map(|a| a.ip());
    let framed = client_handshake(stream, service, credentials.presented_to(dest)).await?;
    Ok(transport(framed))
}

/// Connects to the master at `addr` and returns a ready client.
pub async fn connect_master(
    addr: &str,
    token: &str,
) -> Result<crate::master::MasterClient, ConnectError> {
    if addr
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("etcd://")
    {
        return Err(ConnectError::HaNotBuilt(addr.to_string()));
    }
    let transport = connect_tcp(addr, "master", token).await?;
    let mut config = tarpc::client::Config::default();
    config.max_in_flight_requests = 10_000;
    Ok(crate::master::MasterClient::new(config, transport).spawn())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn handshake_accepts_matching_token_and_refuses_others() {
        for (server_token, client_token, ok) in [
            // No token and no host secret: a peer of unknown address is refused.
            ("", "", false),
            ("s3cret", "s3cret", true),
            ("s3cret", "wrong", false),
            ("s3cret", "", false),
        ] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn(async move {
                let creds = Credentials::token_only(server_token);
                server_handshake(a, "master", &creds, None).await.is_ok()
            });
            let client = client_handshake(b, "master", client_token).await;
            assert_eq!(server.await.unwrap(), ok);
            match client {
                Ok(_) => assert!(ok),
                Err(e) => {
                    assert!(!ok);
                    assert_eq!(e.code(), ErrorCode::IllegalClient);
                }
            }
        }
    }

    #[tokio::test]
    async fn handshake_refuses_wrong_service_and_garbage() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let open = Credentials::token_only("");
        let o = open.clone();
        let server = tokio::spawn(async move { server_handshake(a, "master", &o, None).await });
        let client = client_handshake(b, "peer", "").await;
        assert!(server.await.unwrap().is_err());
        assert_eq!(client.unwrap_err().code(), ErrorCode::InvalidParams);

        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { server_handshake(a, "master", &open, None).await });
        let mut raw = framed(b);
        raw.send(Bytes::from_static(b"\xff\xff\xff garbage"))
            .await
            .unwrap();
        assert!(server.await.unwrap().is_err());
    }

    /// Sends `hello` raw and returns what the server answered.
    async fn answer_to(hello: Vec<u8>) -> HelloReply {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            server_handshake(a, "master", &Credentials::token_only(""), None).await
        });
        let mut raw = framed(b);
        raw.send(Bytes::from(hello)).await.unwrap();
        let reply = raw.next().await.unwrap().unwrap();
        assert!(server.await.unwrap().is_err());
        postcard::from_bytes(&reply).unwrap()
    }

    #[tokio::test]
    async fn a_peer_of_another_build_is_refused_by_name() {
        // A build from before the schema field: its hello as it was.
        #[derive(Serialize)]
        struct HelloV1 {
            magic: u32,
            version: u16,
            service: String,
            token: String,
        }
        let old = HelloV1 {
            magic: HELLO_MAGIC,
            version: 1,
            service: "master".into(),
            token: String::new(),
        };
        let reply = answer_to(postcard::to_stdvec(&old).unwrap()).await;
        assert_eq!(reply.result, Err(ErrorCode::InvalidVersion));
        assert!(reply.message.contains("same build"), "{}", reply.message);

        // Same handshake, other wire types.
        let other = Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            service: "master".into(),
            token: String::new(),
            build: "9.9.9".into(),
            schema: crate::WIRE_SCHEMA ^ 1,
        };
        let reply = answer_to(postcard::to_stdvec(&other).unwrap()).await;
        assert_eq!(reply.result, Err(ErrorCode::InvalidVersion));
        assert!(reply.message.contains("9.9.9"), "{}", reply.message);
        assert!(
            reply
                .message
                .contains(&format!("{:016x}", crate::WIRE_SCHEMA)),
            "{}",
            reply.message
        );
    }

    #[tokio::test]
    async fn an_oversized_hello_is_refused_before_it_is_buffered() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            server_handshake(a, "master", &Credentials::token_only("t"), None).await
        });
        let mut raw = tokio_util::codec::FramedWrite::new(b, LengthDelimitedCodec::new());
        // Announces 200 MiB; the server must give up at the length, not wait for it.
        let _ = raw.get_mut().write_all(&(200u32 << 20).to_be_bytes()).await;
        let r = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("refused at once")
            .unwrap();
        assert!(r.is_err());
    }
}
