//! The HTTP serve loop: HTTP/1.1 with a header read timeout, connections capped
//! per peer and in total, accept errors backed off.

use mooncake_proto::limits::ConnectionLimiter;

use crate::GuardedListener;

/// A client must send its request headers within this long.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections one peer address may hold on an HTTP port.
const HTTP_CONNECTIONS_PER_PEER: usize = 64;
/// Connections all peers together may hold on an HTTP port.
const HTTP_CONNECTIONS: usize = 1024;

/// Serves `router` on `listener` until `shutdown`: HTTP/1.1 with a header read
/// timeout (a peer that trickles half a header is dropped), connections capped per
/// peer and in total, accept errors backed off. Handlers can extract the peer's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let mut listener = GuardedListener::new(
        listener,
        ConnectionLimiter::new(HTTP_CONNECTIONS_PER_PEER, HTTP_CONNECTIONS),
        "http",
    );
    // Connections live on their own tracker, so that this task (on the
    // daemon's tracker) ends only once every connection has.
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer, permit) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
