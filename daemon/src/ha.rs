//! High availability through etcd, as upstream lays it out: the leader holds the
//! key `mooncake-store/<cluster_id>/master_view` under an etcd lease, its value the
//! leader's RPC address; the key's creation revision is the term's `view_version`
//! (it only grows, so it orders terms). Clients give the master address as
//! `etcd://h1:2379;h2:2379` and follow the key with a watch.
//!
//! What lives here is what both sides need: parsing master addresses, reading and
//! following the view (clients, and masters standing by), and the campaign with its
//! [`Fence`]: the leader's own, conservative idea of how long its lease lasts, which
//! it checks before it acknowledges anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `--cluster_id`'s default, and the clients' when `MC_STORE_CLUSTER_ID` is unset.
pub const DEFAULT_CLUSTER_ID: &str = "mooncake_cluster";
/// How long a leader's lease lasts without renewal. etcd grants at least its own
/// minimum (about 2 s with its default timings), so shorter values change nothing.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
/// Every etcd request gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The leader counts its lease as ending this much before etcd would, for clock
/// rates that differ between the two machines.
const FENCE_MARGIN: Duration = Duration::from_millis(150);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The etcd client failed (connection, request, stream).
    #[error("etcd: {0}")]
    Etcd(Box<etcd_client::Error>),
    /// etcd did not answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// The lease ended (or etcd answered that it is gone).
    #[error("the leader lease ended")]
    LeaseLost,
    /// An `etcd://` address that names no endpoint.
    #[error("no etcd endpoint in {0:?}")]
    NoEndpoints(String),
}

impl From<etcd_client::Error> for HaError {
    fn from(e: etcd_client::Error) -> Self {
        HaError::Etcd(Box::new(e))
    }
}

/// A master address as clients write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAddress {
    /// `host:port` of the one master.
    Direct(String),
    /// `etcd://h1:p;h2:p`: the leader is found through these etcd endpoints.
    Etcd(Vec<String>),
    /// `redis://…` or `k8s://…`: upstream's other backends, not built here.
    Unsupported(String),
}

impl MasterAddress {
    /// Reads `etcd://h1:p;h2:p` (`,` separates too), `redis://…` and `k8s://…`;
    /// anything else is a direct `host:port`.
    pub fn parse(address: &str) -> Result<MasterAddress, HaError> {
        let trimmed = address.trim();
        let lower = trimmed.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("etcd://").map(|_| &trimmed[7..]) {
            let endpoints: Vec<String> = rest
                .split([';', ','])
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect();
            if endpoints.is_empty() {
                return Err(HaError::NoEndpoints(address.to_string()));
            }
            return Ok(MasterAddress::Etcd(endpoints));
        }
        if lower.starts_with("redis://") || lower.starts_with("k8s://") {
            return Ok(MasterAddress::Unsupported(trimmed.to_string()));
        }
        Ok(MasterAddress::Direct(trimmed.to_string()))
    }
}

/// Splits `--ha_backend_connstring` / `--etcd_endpoints` (`h1:p;h2:p`, commas too,
/// an optional `etcd://` or `http://` in front of each).
pub fn parse_endpoints(connstring: &str) -> Vec<String> {
    connstring
        .split([';', ','])
        .map(str::trim)
        .map(|e| e.strip_prefix("etcd://").unwrap_or(e))
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// The key the leader holds: `mooncake-store/<cluster_id>/master_view`.
pub fn master_view_key(cluster_id: &str) -> String {
    format!(
        "mooncake-store/{}/master_view",
        cluster_id.trim_end_matches('/')
    )
}

/// The leader as etcd shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// The leader's RPC address (`host:port`).
    pub address: String,
    /// The term: the view key's creation revision.
    pub version: u64,
}

/// Connects to etcd (any of `endpoints`), with short timeouts: a dead etcd must
/// not hold a caller for long.
pub async fn connect(endpoints: &[String]) -> Result<Client, HaError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT);
    let connecting = Client::connect(endpoints, Some(options));
    match tokio::time::timeout(REQUEST_TIMEOUT * 2, connecting).await {
        Ok(client) => Ok(client?),
        Err(_) => Err(HaError::Timeout(REQUEST_TIMEOUT * 2)),
    }
}

/// The current leader, or `None` when there is none, and the revision read at.
pub async fn read_leader(
    client: &mut Client,
    key: &str,
) -> Result<(Option<LeaderView>, i64), HaError> {
    let answer = client.get(key, None).await?;
    let revision = answer.header().map_or(0, |h| h.revision());
    let view = answer.kvs().first().map(|kv| LeaderView {
        address: String::from_utf8_lossy(kv.value()).into_owned(),
        version: kv.create_revision() as u64,
    });
    Ok((view, revision))
}

/// Follows the leader of `cluster_id` until `stop`: the receiver always holds the
/// latest view seen (`None` while there is no leader or etcd cannot be reached).
/// A watch carries changes at once; a lost etcd connection is retried with backoff
/// and the view re-read.
pub fn follow_leader(
    endpoints: Vec<String>,
    cluster_id: &str,
    stop: CancellationToken,
) -> watch::Receiver<Option<LeaderView>> {
    let (tx, rx) = watch::channel(None);
    let key = master_view_key(cluster_id);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match stop
                .run_until_cancelled(watch_once(&endpoints, &key, &tx))
                .await
            {
                None => return,
                Some(Ok(())) => {
                    // The watch ended (etcd closed it): read and watch again, but
                    // never in a tight loop.
                    backoff = Duration::from_millis(100);
                    if stop
                        .run_until_cancelled(tokio::time::sleep(Duration::from_millis(50)))
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("following the master view in etcd: {e}");
                    // Without etcd the last view may still be right: keep it; a
                    // client whose calls fail reconnects to it anyway.
                    if stop
                        .run_until_cancelled(tokio::time::sleep(backoff))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    rx
}

/// Reads the view, then applies watch events until the stream ends or fails.
async fn watch_once(
    endpoints: &[String],
    key: &str,
    tx: &watch::Sender<Option<LeaderView>>,
) -> Result<(), HaError> {
    let mut client = connect(endpoints).await?;
    let (view, revision) = read_leader(&mut client, key).await?;
    tx.send_if_modified(|v| replace_if_changed(v, view));
    let options = etcd_client::WatchOptions::new().with_start_revision(revision + 1);
    let (_watcher, mut stream) = client.watch(key, Some(options)).await?;
    // etcd keeps a watch over a quiet connection; the client's HTTP/2 keep-alive
    // notices a dead server.
    while let Some(answer) = stream.message().await? {
        for event in answer.events() {
            let view = match event.event_type() {
                EventType::Put => event.kv().map(|kv| LeaderView {
                    address: String::from_utf8_lossy(kv.value()).into_owned(),
                    version: kv.create_revision() as u64,
                }),
                EventType::Delete => None,
            };
            tx.send_if_modified(|v| replace_if_changed(v, view));
        }
        if answer.canceled() {
            break;
        }
    }
    Ok(())
}

fn replace_if_changed(slot: &mut Option<LeaderView>, view: Option<LeaderView>) -> bool {
    if *slot == view {
        return false;
    }
    *slot = view;
    true
}

/// The leader's own view of its lease: valid until a point it computes from the
/// moment it *sent* each successful renewal (never later than etcd's own expiry),
/// and lost for good once it ends or etcd says the lease is gone.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Milliseconds after `base` the lease is trusted until.
    valid_until_ms: AtomicU64,
    lost: CancellationToken,
}

impl Fence {
    fn new(valid_until: Instant) -> Self {
        let fence = Fence {
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            lost: CancellationToken::new(),
        };
        fence.extend(valid_until);
        fence
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    fn extend(&self, until: Instant) {
        let until = until.checked_sub(FENCE_MARGIN).unwrap_or(self.base);
        self.valid_until_ms
            .fetch_max(self.millis(until), Ordering::AcqRel);
    }

    /// Whether this process may still act as the leader.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self.millis(Instant::now()) < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Marks the lease lost (also when a check finds it ended).
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// Completes once the lease is known lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }
}

/// A term won: the view this master holds and its fence. The lease is renewed in
/// the background until [`Leadership::resign`] or until renewal fails past the
/// lease's end, which loses the fence.
pub struct Leadership {
    /// What clients see.
    pub view: LeaderView,
    /// Checked before every acknowledgement.
    pub fence: Arc<Fence>,
    lease_id: i64,
    client: Client,
    renewal: CancellationToken,
}

impl Leadership {
    /// Gives the term up: stops renewing and revokes the lease, so that a standby
    /// takes over at once instead of after the lease's time.
    pub async fn resign(mut self) {
        self.renewal.cancel();
        self.fence.lose();
        let revoke = self.client.lease_revoke(self.lease_id);
        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, revoke).await {
            tracing::debug!("revoking the leader lease: {e}");
        }
    }
}

/// Tries once to become the leader: creates the view key under a fresh lease if
/// no one holds it. `Ok(None)`: someone else leads.
pub async fn campaign(
    client: &mut Client,
    cluster_id: &str,
    my_address: &str,
    ttl: Duration,
) -> Result<Option<Leadership>, HaError> {
    let key = master_view_key(cluster_id);
    let ttl_s = ttl.as_secs().max(1) as i64;
    let asked = Instant::now();
    let lease = client.lease_grant(ttl_s, None).await?;
    let granted = Duration::from_secs(lease.ttl().max(0) as u64);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            my_address,
            Some(PutOptions::new().with_lease(lease.id())),
        )]);
    let answer = client.txn(txn).await?;
    if !answer.succeeded() {
        let _ = client.lease_revoke(lease.id()).await;
        return Ok(None);
    }
    let version = answer.header().map_or(0, |h| h.revision()) as u64;
    let fence = Arc::new(Fence::new(asked + granted));
    let renewal = CancellationToken::new();
    tokio::spawn(renew(
        client.clone(),
        lease.id(),
        ttl,
        fence.clone(),
        renewal.clone(),
    ));
    Ok(Some(Leadership {
        view: LeaderView {
            address: my_address.to_string(),
            version,
        },
        fence,
        lease_id: lease.id(),
        client: client.clone(),
        renewal,
    }))
}

/// Renews the lease every third of its time; extends the fence from each
/// renewal's send time; loses it when etcd says the lease is gone or when the
/// fence runs out before a renewal gets through.
async fn renew(
    mut client: Client,
    lease_id: i64,
    ttl: Duration,
    fence: Arc<Fence>,
    stop: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut stream = None;
    loop {
        if stop
            .run_until_cancelled(tokio::time::sleep(period))
            .await
            .is_none()
        {
            return;
        }
        if !fence.valid() {
            tracing::warn!("the leader lease ran out before it could be renewed");
            fence.lose();
            return;
        }
        if stream.is_none() {
            match tokio::time::timeout(period, client.lease_keep_alive(lease_id)).await {
                Ok(Ok(s)) => stream = Some(s),
                _ => continue,
            }
        }
        let Some((keeper, answers)) = stream.as_mut() else {
            continue;
        };
        let sent = Instant::now();
        let renewed = tokio::time::timeout(period, async {
            keeper.keep_alive().await?;
            answers.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                fence.extend(sent + Duration::from_secs(answer.ttl() as u64));
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!("etcd says the leader lease is gone");
                fence.lose();
                return;
            }
            _ => stream = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_in_every_spelling() {
        assert_eq!(
            MasterAddress::parse("etcd://10.0.0.1:2379;10.0.0.2:2379").unwrap(),
            MasterAddress::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        assert_eq!(
            MasterAddress::parse(" ETCD://h:1, h:2 ").unwrap(),
            MasterAddress::Etcd(vec!["h:1".into(), "h:2".into()])
        );
        assert!(MasterAddress::parse("etcd://").is_err());
        assert!(matches!(
            MasterAddress::parse("redis://r:6379").unwrap(),
            MasterAddress::Unsupported(_)
        ));
        assert_eq!(
            MasterAddress::parse("127.0.0.1:50051").unwrap(),
            MasterAddress::Direct("127.0.0.1:50051".into())
        );
        assert_eq!(
            parse_endpoints("etcd://a:1;b:2,,c:3"),
            vec!["a:1", "b:2", "c:3"]
        );
        assert_eq!(master_view_key("team/"), "mooncake-store/team/master_view");
    }

    #[test]
    fn a_fence_ends_on_time_and_when_lost() {
        let fence = Fence::new(Instant::now() + Duration::from_secs(10));
        assert!(fence.valid());
        fence.lose();
        assert!(!fence.valid());
        let short = Fence::new(Instant::now() + FENCE_MARGIN / 2);
        assert!(!short.valid(), "the margin is taken off the lease's end");
    }
}
