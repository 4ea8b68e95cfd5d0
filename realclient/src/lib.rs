//! The mooncake-rs real client: the long-lived per-host daemon that owns the host's
//! shared-memory segment, keeps the master session (mount, heartbeat, remount with
//! inventory), and serves dummy clients over a Unix socket.
//!
//! # Layout
//!
//! - [`config`]: [`RealClientConfig`] (upstream flag names and defaults).
//! - [`inventory`]: the persistent record of the objects in this client's segment,
//!   which lets a restarted master — or a restarted real client — get them back.
//! - [`client`]: [`RealClient`], the master session and the store operations.
//! - [`master_handle`]: the master, remote over TCP or embedded in this process.
//! - [`service`]: the tarpc service for dummies ([`mooncake_proto::realclient`]).
//! - [`transfer`]: the transfer engine ([`transfer::Transport`]; TCP in [`transfer::tcp`]).
//! - [`run`](crate::run()): starts everything for the `mooncake_client` binary.

pub mod client;
pub mod config;
pub mod inventory;
pub mod master_handle;
pub mod service;
pub mod transfer;

pub use client::RealClient;
pub use config::RealClientConfig;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tokio_util::sync::CancellationToken;

use mooncake_ipc::{IpcServer, IpcServerConfig};
use mooncake_proto::realclient::RealClientService as _;

/// Runs a real client until `shutdown`: embedded master (if asked), segment, master
/// session, IPC listener. `on_ready` is called once dummies can connect.
pub async fn run(
    config: RealClientConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Arc<RealClient>),
) -> anyhow::Result<()> {
    let mut config = config;
    let mut local_master = None;
    if config.embedded_master {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let options = mooncake_master::ServerOptions {
            rpc_addr: config.master_server_address.clone(),
            metrics_addr: config.embedded_metrics_address.clone(),
            metadata_addr: None,
            summary_interval: Some(Duration::from_secs(10)),
        };
        let master_config = mooncake_master::MasterConfig::default()
            .with_cluster_token(config.cluster_token.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) =
                mooncake_master::run(master_config, options, token, move |bound, svc| {
                    let _ = tx.send((bound.rpc, svc.clone()));
                })
                .await
            {
                tracing::error!("embedded master failed: {e:#}");
            }
        });
        let (bound, svc) = rx.await.context("embedded master did not start")?;
        tracing::info!("embedded master listening on {bound} (this process calls it directly)");
        config.master_server_address = bound.to_string();
        local_master = Some(svc);
    }
    let client = RealClient::start(config.clone(), shutdown.clone(), local_master).await?;
    let mut ipc_config =
        IpcServerConfig::new(&config.ipc_socket_path).with_token(config.cluster_token.clone());
    if let Some(segment) = client.segment_region() {
        ipc_config = ipc_config.with_export(service::SEGMENT_EXPORT, segment);
    }
    let ipc = IpcServer::bind(ipc_config)
        .with_context(|| format!("cannot listen on {}", config.ipc_socket_path.display()))?;
    tracing::info!(
        "serving dummy clients on {}",
        config.ipc_socket_path.display()
    );
    on_ready(&client);
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = ipc.accept() => conn?,
        };
        let client = client.clone();
        tokio::spawn(async move {
            let (session, transport) = conn.into_transport();
            let handler = service::Handler::new(client, Some(session.clone()));
            BaseChannel::with_defaults(transport)
                .execute(handler.serve())
                .for_each(|f| async move {
                    tokio::spawn(f);
                })
                .await;
            session.close(Duration::from_secs(30)).await;
        });
    }
    client.shutdown().await;
    let _ = std::fs::remove_file(&config.ipc_socket_path);
    Ok(())
}
