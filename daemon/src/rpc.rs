//! The tarpc serve loop both daemons run on TCP: accept within limits, check the
//! handshake (service name, protocol version, credential), hand the connection to
//! the daemon's service, and stop everything on shutdown.

use std::future::Future;
use std::sync::Arc;

use mooncake_proto::auth::Credentials;
use mooncake_proto::codec::server_handshake;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::GuardedListener;

/// A connection that passed the handshake, framed for tarpc.
pub type Handshaken = Framed<TcpStream, LengthDelimitedCodec>;

/// Serves `service` (the handshake's service name) on `listener` until `shutdown`:
/// each connection that presents an acceptable credential is handed to `serve`
/// (which runs the tarpc channel) on `tracker`, and dropped on shutdown.
pub async fn serve_tarpc<F, Fut>(
    mut listener: GuardedListener,
    service: &'static str,
    credentials: Arc<Credentials>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(Handshaken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refusals = listener.refusal_log();
    loop {
        let (stream, peer, permit) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let _ = stream.set_nodelay(true);
        let (credentials, shutdown, refusals, serve) = (
            credentials.clone(),
            shutdown.clone(),
            refusals.clone(),
            serve.clone(),
        );
        tracker.spawn(async move {
            let _permit = permit;
            let framed =
                match server_handshake(stream, service, &credentials, Some(peer.ip())).await {
                    Ok(f) => f,
                    Err(e) => return refusals.refused(peer, e),
                };
            tokio::select! {
                _ = serve(framed) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
