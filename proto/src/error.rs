//! [`ErrorCode`]: the store's error type, numbered exactly as upstream Mooncake's
//! `ErrorCode` (`mooncake-store/include/types.h`), because Python callers see these
//! integers directly.

use serde::{Deserialize, Serialize};

/// Result type of every store operation that crosses the wire.
pub type MResult<T> = Result<T, ErrorCode>;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $upstream:literal;)*) => {
        /// An upstream-compatible error code. `OK` (0) is not a variant: success is `Ok(_)`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
        #[repr(i32)]
        pub enum ErrorCode {
            $($(#[$doc])* #[error($upstream)] $name = $value,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The upstream integer value (always negative).
            pub const fn as_i32(self) -> i32 {
                self as i32
            }

            /// The upstream spelling, e.g. `OBJECT_NOT_FOUND`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $upstream,)*
                }
            }

            /// Maps an upstream integer back to a code; `None` for 0 and unknown values.
            pub fn from_i32(value: i32) -> Option<ErrorCode> {
                match value {
                    $($value => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// Unexpected internal failure.
    InternalError = -1, "INTERNAL_ERROR";
    /// A buffer is too small for the data.
    BufferOverflow = -10, "BUFFER_OVERFLOW";
    /// Shard index out of range.
    ShardIndexOutOfRange = -100, "SHARD_INDEX_OUT_OF_RANGE";
    /// The segment is not mounted.
    SegmentNotFound = -101, "SEGMENT_NOT_FOUND";
    /// The segment is already mounted.
    SegmentAlreadyExists = -102, "SEGMENT_ALREADY_EXISTS";
    /// The client is unknown to the master.
    ClientNotFound = -103, "CLIENT_NOT_FOUND";
    /// No space could be allocated, even after eviction.
    NoAvailableHandle = -200, "NO_AVAILABLE_HANDLE";
    /// Version mismatch.
    InvalidVersion = -300, "INVALID_VERSION";
    /// The key is empty or too long.
    InvalidKey = -400, "INVALID_KEY";
    /// Writing failed.
    WriteFail = -500, "WRITE_FAIL";
    /// A parameter is invalid (size, pointer, config, regex, ...).
    InvalidParams = -600, "INVALID_PARAMS";
    /// The caller is not allowed to do this (not the writer, wrong cluster token).
    IllegalClient = -601, "ILLEGAL_CLIENT";
    /// Invalid write.
    InvalidWrite = -700, "INVALID_WRITE";
    /// Invalid read.
    InvalidRead = -701, "INVALID_READ";
    /// Invalid replica.
    InvalidReplica = -702, "INVALID_REPLICA";
    /// The object's write has not ended yet.
    ReplicaIsNotReady = -703, "REPLICA_IS_NOT_READY";
    /// No such object.
    ObjectNotFound = -704, "OBJECT_NOT_FOUND";
    /// The object already exists (clients map this to success for put).
    ObjectAlreadyExists = -705, "OBJECT_ALREADY_EXISTS";
    /// The object holds a read lease.
    ObjectHasLease = -706, "OBJECT_HAS_LEASE";
    /// The read lease expired before the transfer ended.
    LeaseExpired = -707, "LEASE_EXPIRED";
    /// The object has a replication task.
    ObjectHasReplicationTask = -708, "OBJECT_HAS_REPLICATION_TASK";
    /// The object has no replication task.
    ObjectNoReplicationTask = -709, "OBJECT_NO_REPLICATION_TASK";
    /// Replica not found.
    ReplicaNotFound = -710, "REPLICA_NOT_FOUND";
    /// Replica already exists.
    ReplicaAlreadyExists = -711, "REPLICA_ALREADY_EXISTS";
    /// Replica is gone.
    ReplicaIsGone = -712, "REPLICA_IS_GONE";
    /// Replica is not in local memory.
    ReplicaNotInLocalMemory = -713, "REPLICA_NOT_IN_LOCAL_MEMORY";
    /// A replica is busy.
    ObjectReplicaBusy = -714, "OBJECT_REPLICA_BUSY";
    /// A data transfer failed.
    TransferFail = -800, "TRANSFER_FAIL";
    /// Checksum mismatch.
    ChecksumMismatch = -801, "CHECKSUM_MISMATCH";
    /// An RPC failed (peer unreachable, connection lost, malformed reply).
    RpcFail = -900, "RPC_FAIL";
    /// An RPC timed out.
    RpcTimeout = -901, "RPC_TIMEOUT";
    /// etcd operation failed.
    EtcdOperationError = -1000, "ETCD_OPERATION_ERROR";
    /// etcd key does not exist.
    EtcdKeyNotExist = -1001, "ETCD_KEY_NOT_EXIST";
    /// etcd transaction failed.
    EtcdTransactionFail = -1002, "ETCD_TRANSACTION_FAIL";
    /// etcd context cancelled.
    EtcdCtxCancelled = -1003, "ETCD_CTX_CANCELLED";
    /// OpLog entry not found.
    OplogEntryNotFound = -1004, "OPLOG_ENTRY_NOT_FOUND";
    /// k8s lease operation failed.
    K8sLeaseOperationError = -1005, "K8S_LEASE_OPERATION_ERROR";
    /// k8s lease not found.
    K8sLeaseNotFound = -1006, "K8S_LEASE_NOT_FOUND";
    /// OpLog catch-up incomplete.
    IncompleteOplogCatchUp = -1007, "INCOMPLETE_OPLOG_CATCH_UP";
    /// Not available in the current status (e.g. not the leader).
    UnavailableInCurrentStatus = -1010, "UNAVAILABLE_IN_CURRENT_STATUS";
    /// Not available in the current mode.
    UnavailableInCurrentMode = -1011, "UNAVAILABLE_IN_CURRENT_MODE";
    /// Not supported.
    NotSupported = -1012, "NOT_SUPPORTED";
    /// File not found.
    FileNotFound = -1100, "FILE_NOT_FOUND";
    /// File open failed.
    FileOpenFail = -1101, "FILE_OPEN_FAIL";
    /// File read failed.
    FileReadFail = -1102, "FILE_READ_FAIL";
    /// File write failed.
    FileWriteFail = -1103, "FILE_WRITE_FAIL";
    /// File buffer invalid.
    FileInvalidBuffer = -1104, "FILE_INVALID_BUFFER";
    /// File lock failed.
    FileLockFail = -1105, "FILE_LOCK_FAIL";
    /// File handle invalid.
    FileInvalidHandle = -1106, "FILE_INVALID_HANDLE";
    /// Bucket not found.
    BucketNotFound = -1200, "BUCKET_NOT_FOUND";
    /// Bucket already exists.
    BucketAlreadyExists = -1201, "BUCKET_ALREADY_EXISTS";
    /// Keys exceed bucket limit.
    KeysExceedBucketLimit = -1202, "KEYS_EXCEED_BUCKET_LIMIT";
    /// Keys ultra limit.
    KeysUltraLimit = -1203, "KEYS_ULTRA_LIMIT";
    /// Offload is not enabled.
    UnableOffload = -1300, "UNABLE_OFFLOAD";
    /// Unable to offload.
    UnableOffloading = -1301, "UNABLE_OFFLOADING";
    /// Task not found.
    TaskNotFound = -1400, "TASK_NOT_FOUND";
    /// Too many pending tasks.
    TaskPendingLimitExceeded = -1401, "TASK_PENDING_LIMIT_EXCEEDED";
    /// Job not found.
    JobNotFound = -1402, "JOB_NOT_FOUND";
    /// Serialization unsupported.
    SerializeUnsupported = -1500, "SERIALIZE_UNSUPPORTED";
    /// Serialization failed.
    SerializeFail = -1501, "SERIALIZE_FAIL";
    /// Deserialization failed.
    DeserializeFail = -1502, "DESERIALIZE_FAIL";
    /// Persisting failed.
    PersistentFail = -1503, "PERSISTENT_FAIL";
    /// DFS network timeout.
    DfsNetworkTimeout = -1600, "DFS_NETWORK_TIMEOUT";
    /// DFS unavailable.
    DfsServiceUnavailable = -1601, "DFS_SERVICE_UNAVAILABLE";
    /// DFS quota exceeded.
    DfsQuotaExceeded = -1602, "DFS_QUOTA_EXCEEDED";
    /// DFS permission denied.
    DfsPermissionDenied = -1603, "DFS_PERMISSION_DENIED";
    /// DFS stale handle.
    DfsStaleHandle = -1604, "DFS_STALE_HANDLE";
    /// DFS partial write.
    DfsPartialWrite = -1605, "DFS_PARTIAL_WRITE";
    /// Tenant quota exceeded.
    TenantQuotaExceeded = -1700, "TENANT_QUOTA_EXCEEDED";
    /// Tenant not registered.
    TenantNotRegistered = -1701, "TENANT_NOT_REGISTERED";
    /// Tenant not empty.
    TenantNotEmpty = -1702, "TENANT_NOT_EMPTY";
}

/// Converts a result into upstream's integer convention: 0 for success, the code otherwise.
pub fn to_status<T>(result: &MResult<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(code) => code.as_i32(),
    }
}

/// One result per key from a batch call that may have failed as a whole: a whole-call
/// error (or an answer of the wrong length) becomes that error for every key.
pub fn per_key<T>(len: usize, batch: MResult<Vec<MResult<T>>>) -> Vec<MResult<T>> {
    match batch {
        Ok(results) if results.len() == len => results,
        Ok(_) => (0..len).map(|_| Err(ErrorCode::RpcFail)).collect(),
        Err(code) => (0..len).map(|_| Err(code)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_matches_upstream() {
        assert_eq!(ErrorCode::NoAvailableHandle.as_i32(), -200);
        assert_eq!(ErrorCode::InvalidParams.as_i32(), -600);
        assert_eq!(ErrorCode::ObjectNotFound.as_i32(), -704);
        assert_eq!(ErrorCode::ObjectAlreadyExists.as_i32(), -705);
        assert_eq!(ErrorCode::RpcFail.as_i32(), -900);
        assert_eq!(ErrorCode::TenantNotEmpty.as_i32(), -1702);
        assert_eq!(ErrorCode::ObjectHasLease.name(), "OBJECT_HAS_LEASE");
    }

    #[test]
    fn round_trips_through_integers() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_i32(code.as_i32()), Some(*code));
            assert!(code.as_i32() < 0);
        }
        assert_eq!(ErrorCode::from_i32(0), None);
        assert_eq!(ErrorCode::from_i32(-12345), None);
        assert_eq!(to_status::<()>(&Ok(())), 0);
        assert_eq!(to_status::<()>(&Err(ErrorCode::InvalidKey)), -400);
    }

    #[test]
    fn batch_failures_spread_to_every_key() {
        assert_eq!(
            per_key::<u8>(2, Err(ErrorCode::RpcTimeout)),
            vec![Err(ErrorCode::RpcTimeout); 2]
        );
        assert_eq!(
            per_key(3, Ok(vec![Ok(1u8)])),
            vec![Err(ErrorCode::RpcFail); 3],
            "short answer"
        );
        assert_eq!(per_key(1, Ok(vec![Ok(7u8)])), vec![Ok(7)]);
    }
}
