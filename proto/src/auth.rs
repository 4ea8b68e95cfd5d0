//! Who may come through a TCP door (master RPC, the real client's `--port`, the
//! transfer port, the admin HTTP write endpoints).
//!
//! - With a cluster token (`--cluster_token` / `MOONCAKE_CLUSTER_TOKEN`), every peer
//!   must present it.
//! - Without one, a peer on this host must present the **host secret**: 32 random
//!   bytes in a file only this user can read, made by the first mooncake process
//!   that needs it (`$MOONCAKE_HOST_SECRET_FILE`, else `~/.mooncake/host_secret`,
//!   else `/dev/shm/mooncake-host-secret-<uid>`). Processes of the same user (and
//!   root, who can read any file) find it; other local users cannot, so they cannot
//!   reach another user's objects through a TCP port. Peers on other hosts are
//!   trusted without a token, as upstream does: a fleet spanning hosts that must
//!   keep out a hostile network sets a token.
//!
//! A peer is "on this host" when its address is one this host can bind (loopback
//! or any local interface address), which is what a local process connecting
//! through any of the host's addresses shows.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the host secret file.
pub const HOST_SECRET_ENV: &str = "MOONCAKE_HOST_SECRET_FILE";
/// Length of the host secret, in hex characters.
const SECRET_HEX_LEN: usize = 64;

/// Errors reading or creating the host secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("host secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file exists but cannot be trusted.
    #[error("host secret {path} is not safe to use: {reason}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The credentials a process presents and checks.
#[derive(Clone, Debug)]
pub struct Credentials {
    token: String,
    host_secret: Option<String>,
}

impl Credentials {
    /// Credentials for a process configured with `token` (empty: none). Without a
    /// token the host secret is loaded, or created when there is none yet; when it
    /// cannot be (no writable place), local peers are refused and a warning says why.
    pub fn new(token: &str) -> Credentials {
        let host_secret = if token.is_empty() {
            match shared_host_secret() {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!(
                        "mooncake: {e}; connections between local processes will be refused (set {HOST_SECRET_ENV} or a cluster token)"
                    );
                    None
                }
            }
        } else {
            None
        };
        Credentials {
            token: token.to_string(),
            host_secret,
        }
    }

    /// Credentials checking only `token` (tests and tools that carry their own).
    pub fn token_only(token: &str) -> Credentials {
        Credentials {
            token: token.to_string(),
            host_secret: None,
        }
    }

    /// Whether a cluster token is configured.
    pub fn has_token(&self) -> bool {
        !self.token.is_empty()
    }

    /// What to present to a server at `dest`: the token, or for a server on this
    /// host the host secret (never sent to another host).
    pub fn presented_to(&self, dest: Option<IpAddr>) -> &str {
        if !self.token.is_empty() {
            return &self.token;
        }
        match (&self.host_secret, dest) {
            (Some(secret), Some(ip)) if is_local_address(ip) => secret,
            _ => "",
        }
    }

    /// Whether a peer at `peer` presenting `given` may come in.
    pub fn admits(&self, peer: Option<IpAddr>, given: &str) -> bool {
        if !self.token.is_empty() {
            return secrets_match(&self.token, given);
        }
        let local = peer.is_none_or(is_local_address);
        if !local {
            return true;
        }
        match &self.host_secret {
            Some(secret) => secrets_match(secret, given),
            None => false,
        }
    }

    /// Why [`admits`](Self::admits) said no, for the refusal message.
    pub fn refusal(&self) -> &'static str {
        if self.has_token() {
            "wrong cluster token"
        } else {
            "a process on this host must present the host secret (another user, or a process that cannot read the secret file)"
        }
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Whether `ip` belongs to this host (loopback or a local interface address).
pub fn is_local_address(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return is_local_address(IpAddr::V4(v4));
    }
    // Only addresses of this host's interfaces can be bound.
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The host secret of this user, loaded once per process.
pub fn shared_host_secret() -> Result<String, AuthError> {
    static SECRET: OnceLock<Result<String, String>> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let path = host_secret_path();
            load_or_create(&path).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| AuthError::Unsafe {
            path: host_secret_path(),
            reason,
        })
}

/// Where this user's host secret lives. Every process must find it the same
/// way, whatever configured it, so this reads the environment itself.
#[allow(clippy::disallowed_methods)]
pub fn host_secret_path() -> PathBuf {
    if let Some(p) = std::env::var_os(HOST_SECRET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let dir = Path::new(&home).join(".mooncake");
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir.join("host_secret");
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/dev/shm/mooncake-host-secret-{uid}"))
}

/// Reads the secret at `path`, creating it (mode 0600) when absent.
pub fn load_or_create(path: &Path) -> Result<String, AuthError> {
    let io_err = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    match read_trusted(path) {
        Ok(s) => return Ok(s),
        Err(AuthError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; SECRET_HEX_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written whole under a temporary name, then linked into place: a process
    // racing us sees either no file or the complete secret, and the first link wins.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(secret.as_bytes()).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_trusted(path),
        Err(e) => Err(io_err(e)),
    }
}

/// Reads a secret file that only this user could have written and that no
/// other user can read.
fn read_trusted(path: &Path) -> Result<String, AuthError> {
    let unsafe_file = |reason: String| AuthError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(unsafe_file("not a regular file".into()));
    }
    if meta.uid() != me {
        return Err(unsafe_file(format!(
            "owned by uid {} (this process runs as uid {me})",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unsafe_file(format!(
            "mode {:o} lets other users read or write it (chmod 600)",
            meta.permissions().mode() & 0o777
        )));
    }
    let mut secret = String::new();
    (&mut file)
        .take(SECRET_HEX_LEN as u64 + 1)
        .read_to_string(&mut secret)
        .map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let secret = secret.trim().to_string();
    if secret.len() < 32 {
        return Err(unsafe_file("too short".into()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mc-secret-{}-{tag}", std::process::id()))
    }

    #[test]
    fn secret_is_created_once_private_and_reread() {
        let path = temp_path("create");
        let _ = std::fs::remove_file(&path);
        let a = load_or_create(&path).unwrap();
        assert_eq!(a.len(), SECRET_HEX_LEN);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), a);
        // A file others can read is refused, not used.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(AuthError::Unsafe { .. })
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn local_peers_need_the_secret_remote_ones_the_token() {
        let open = Credentials {
            token: String::new(),
            host_secret: Some("s".repeat(64)),
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!open.admits(Some(lo), ""));
        assert!(!open.admits(Some(lo), "guess"));
        assert!(open.admits(Some(lo), &"s".repeat(64)));
        assert!(
            open.admits(Some(remote), ""),
            "no token: other hosts trusted"
        );
        assert_eq!(open.presented_to(Some(lo)), "s".repeat(64));
        assert_eq!(open.presented_to(Some(remote)), "", "never sent off-host");
        let tokened = Credentials::token_only("t0k");
        assert!(!tokened.admits(Some(remote), ""));
        assert!(!tokened.admits(Some(lo), &"s".repeat(64)));
        assert!(tokened.admits(Some(remote), "t0k"));
        assert_eq!(tokened.presented_to(Some(remote)), "t0k");
        assert!(is_local_address("::1".parse().unwrap()));
        assert!(is_local_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_local_address(remote));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "abcd"));
        assert!(secrets_match("", ""));
    }
}
