//! [`MasterConfig`]: every tunable of the master, with upstream's defaults.

use std::time::Duration;

use mooncake_proto::DEFAULT_MAX_KEY_LEN;

/// How replicas are placed on segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocationStrategy {
    /// Random start, linear probe (upstream default).
    #[default]
    Random,
    /// Sample candidates and prefer the emptiest.
    FreeRatioFirst,
}

impl std::str::FromStr for AllocationStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(AllocationStrategy::Random),
            "free_ratio_first" => Ok(AllocationStrategy::FreeRatioFirst),
            other => Err(format!(
                "unknown allocation strategy {other:?} (expected random or free_ratio_first)"
            )),
        }
    }
}

/// Master configuration. Build with `MasterConfig::default().with_*(...)`.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Read lease granted by `get_replica_list`.
    pub default_kv_lease_ttl: Duration,
    /// Default soft-pin lifetime.
    pub default_kv_soft_pin_ttl: Duration,
    /// Upper bound for a requested soft-pin lifetime.
    pub max_kv_soft_pin_ttl: Duration,
    /// Whether eviction may take soft-pinned objects in its second pass.
    pub allow_evict_soft_pinned_objects: bool,
    /// Fraction of capacity freed by one eviction.
    pub eviction_ratio: f64,
    /// Used fraction above which eviction starts.
    pub eviction_high_watermark_ratio: f64,
    /// A client silent this long is expired.
    pub client_ttl: Duration,
    /// An unfinished write younger than this cannot be taken over.
    pub put_start_discard_timeout: Duration,
    /// Space of an abandoned write is reclaimed after this.
    pub put_start_release_timeout: Duration,
    /// Placement strategy.
    pub allocation_strategy: AllocationStrategy,
    /// Longest accepted key, in bytes.
    pub max_key_len: usize,
    /// Cluster token every connecting client must present ("" = none).
    pub cluster_token: String,
    /// Number of metadata shards (a power of two).
    pub shard_count: usize,
    /// Pending inventory changes kept per client before it must resync.
    pub inventory_log_limit: usize,
    /// The disk tier: when objects are copied to it and back.
    pub offload: OffloadPolicy,
}

/// What the master does with the real clients' disk tiers (upstream's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadPolicy {
    /// `--enable_offload`: objects are copied to a disk tier on the host of one of
    /// their memory replicas.
    pub enabled: bool,
    /// `--offload_on_evict`: the copy is made when eviction picks the object
    /// instead of when its write ends.
    pub on_evict: bool,
    /// `--promotion_on_hit`: an object only on disk read this many times
    /// (`--promotion_admission_threshold`) is copied back to memory.
    pub promotion_on_hit: bool,
    /// See `promotion_on_hit`.
    pub promotion_admission_threshold: u32,
    /// `--offloading_queue_limit`: offload copies queued at most at once.
    pub queue_limit: usize,
    /// `--enable_disk_eviction`: a full disk tier drops its least recently used
    /// copies (objects only on disk go with them); without it, offloads wait.
    pub disk_eviction: bool,
}

impl Default for OffloadPolicy {
    fn default() -> Self {
        OffloadPolicy {
            enabled: false,
            on_evict: false,
            promotion_on_hit: false,
            promotion_admission_threshold: 2,
            queue_limit: 50_000,
            disk_eviction: true,
        }
    }
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            default_kv_lease_ttl: Duration::from_millis(10_000),
            default_kv_soft_pin_ttl: Duration::from_millis(1_800_000),
            max_kv_soft_pin_ttl: Duration::from_millis(86_400_000),
            allow_evict_soft_pinned_objects: true,
            eviction_ratio: 0.05,
            eviction_high_watermark_ratio: 0.90,
            client_ttl: Duration::from_secs(10),
            put_start_discard_timeout: Duration::from_secs(30),
            put_start_release_timeout: Duration::from_secs(600),
            allocation_strategy: AllocationStrategy::Random,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            cluster_token: String::new(),
            shard_count: 1024,
            inventory_log_limit: 1 << 20,
            offload: OffloadPolicy::default(),
        }
    }
}

impl MasterConfig {
    /// Sets the read lease.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.default_kv_lease_ttl = ttl;
        self
    }
    /// Sets the default soft-pin lifetime.
    pub fn with_soft_pin_ttl(mut self, ttl: Duration) -> Self {
        self.default_kv_soft_pin_ttl = ttl;
        self
    }
    /// Sets whether soft-pinned objects may be evicted in the second pass.
    pub fn with_allow_evict_soft_pinned(mut self, allow: bool) -> Self {
        self.allow_evict_soft_pinned_objects = allow;
        self
    }
    /// Sets the eviction ratio.
    pub fn with_eviction_ratio(mut self, ratio: f64) -> Self {
        self.eviction_ratio = ratio;
        self
    }
    /// Sets the high watermark.
    pub fn with_high_watermark(mut self, ratio: f64) -> Self {
        self.eviction_high_watermark_ratio = ratio;
        self
    }
    /// Sets the client TTL.
    pub fn with_client_ttl(mut self, ttl: Duration) -> Self {
        self.client_ttl = ttl;
        self
    }
    /// Sets the abandoned-write timeouts (take-over, reclaim).
    pub fn with_put_timeouts(mut self, discard: Duration, release: Duration) -> Self {
        self.put_start_discard_timeout = discard;
        self.put_start_release_timeout = release;
        self
    }
    /// Sets the placement strategy.
    pub fn with_allocation_strategy(mut self, strategy: AllocationStrategy) -> Self {
        self.allocation_strategy = strategy;
        self
    }
    /// Sets what is done with the disk tiers.
    pub fn with_offload(mut self, offload: OffloadPolicy) -> Self {
        self.offload = offload;
        self
    }
    /// Sets the key length limit.
    pub fn with_max_key_len(mut self, len: usize) -> Self {
        self.max_key_len = len;
        self
    }
    /// Sets the cluster token.
    pub fn with_cluster_token(mut self, token: impl Into<String>) -> Self {
        self.cluster_token = token.into();
        self
    }
    /// Sets the number of shards (rounded up to a power of two).
    pub fn with_shard_count(mut self, shards: usize) -> Self {
        self.shard_count = shards.max(1).next_power_of_two();
        self
    }

    /// Checks ratios and durations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ratio = |name: &'static str, value: f64| {
            if value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::RatioOutOfRange { name, value })
            }
        };
        ratio("eviction_ratio", self.eviction_ratio)?;
        ratio(
            "eviction_high_watermark_ratio",
            self.eviction_high_watermark_ratio,
        )?;
        if self.client_ttl.is_zero() {
            return Err(ConfigError::NotPositive("client_ttl"));
        }
        if self.max_key_len == 0 {
            return Err(ConfigError::NotPositive("max key length"));
        }
        Ok(())
    }
}

/// A [`MasterConfig`] setting out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A ratio outside (0, 1].
    #[error("{name} must be in (0, 1], got {value}")]
    RatioOutOfRange {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count or duration that must be above zero.
    #[error("{0} must be positive")]
    NotPositive(&'static str),
}
