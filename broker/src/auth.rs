//! Device authentication: the handler rumqttd calls with each CONNECT's client id, user name
//! and password.
//!
//! The rule: user name = device id = MQTT client id, and the password must match the
//! device's argon2id hash in the credential registry. argon2 is slow on purpose, so a
//! verification runs on tokio's blocking pool, at most [`MAX_CONCURRENT_VERIFICATIONS`] at
//! once (a connect storm queues instead of taking every core or 19 MiB per attempt), and a
//! success is cached for [`CACHE_TTL`] as a keyed 64-bit digest of the password, so a device
//! that reconnects skips argon2. The registry file is re-read when it changes, at most once
//! per [`RELOAD_CHECK_INTERVAL`], and a reload empties the cache, so `iotmon devices remove`
//! takes effect on the next connect.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::credentials::{verify_password, CredentialRegistry};
use crate::embedded::BrokerError;
use crate::metrics::{BrokerMetrics, Refusal};

/// argon2 verifications running at once; more connects wait their turn.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// How long a verified password is trusted without running argon2 again.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Most devices kept in the cache; when full, an arbitrary entry makes room.
pub const CACHE_CAPACITY: usize = 100_000;
/// How often, at most, the registry file is checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The credential registry as the broker sees it, and the cache of recent successes.
#[derive(Debug)]
pub struct DeviceAuth {
    /// The registry file, re-read when it changes.
    path: PathBuf,
    registry: Mutex<LoadedRegistry>,
    /// Device id to (digest of the accepted password, when it was verified).
    cache: Mutex<HashMap<String, (u64, Instant)>>,
    /// A random key for the password digests, so the cache never holds a password and its
    /// digests are useless outside this process.
    digest_key: RandomState,
    /// Bounds argon2 runs in flight (CPU and memory).
    verifications: Semaphore,
    metrics: Arc<BrokerMetrics>,
}

#[derive(Debug)]
struct LoadedRegistry {
    registry: Arc<CredentialRegistry>,
    /// Modification time and length of the file when read; `None` if it did not exist.
    version: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The outcome of one credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused(Refusal),
}

impl DeviceAuth {
    /// Loads the registry at `path` (a missing file is an empty registry).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load(path: &Path, metrics: Arc<BrokerMetrics>) -> Result<Self, BrokerError> {
        let version = file_version(path);
        let registry = CredentialRegistry::load(path)?;
        if registry.is_empty() {
            warn!(
                path = %path.display(),
                "no device credentials registered: every device will be refused \
                 (add one with `iotmon devices add`, or allow anonymous devices)"
            );
        }
        Ok(DeviceAuth {
            path: path.to_path_buf(),
            registry: Mutex::new(LoadedRegistry {
                registry: Arc::new(registry),
                version,
                checked: Instant::now(),
            }),
            cache: Mutex::new(HashMap::new()),
            digest_key: RandomState::new(),
            verifications: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            metrics,
        })
    }

    /// Checks one CONNECT and counts the outcome.
    pub async fn check(&self, client_id: &str, username: &str, password: &str) -> Verdict {
        let verdict = self.decide(client_id, username, password).await;
        match verdict {
            Verdict::Accepted => self.metrics.accepted(),
            Verdict::Refused(why) => {
                debug!(client_id, ?why, "device connect refused");
                self.metrics.refused(why);
            }
        }
        verdict
    }

    async fn decide(&self, client_id: &str, username: &str, password: &str) -> Verdict {
        // rumqttd (patched) calls the handler with an empty user name for a CONNECT without
        // credentials; no device id is empty, so this can never be accepted.
        if username.is_empty() {
            return Verdict::Refused(Refusal::NoCredentials);
        }
        if username != client_id {
            return Verdict::Refused(Refusal::ClientIdMismatch);
        }
        let registry = self.current_registry();
        let Some(hash) = registry.hash_of(username) else {
            return Verdict::Refused(Refusal::UnknownDevice);
        };
        let digest = self.digest_key.hash_one((username, password));
        if self.cached(username, digest) {
            self.metrics.cache_hit();
            return Verdict::Accepted;
        }
        let Ok(_turn) = self.verifications.acquire().await else {
            return Verdict::Refused(Refusal::Unavailable);
        };
        let (hash, attempt) = (hash.to_string(), password.as_bytes().to_vec());
        match tokio::task::spawn_blocking(move || verify_password(&hash, &attempt)).await {
            Ok(true) => {
                self.remember(username, digest);
                Verdict::Accepted
            }
            Ok(false) => Verdict::Refused(Refusal::WrongPassword),
            Err(_) => Verdict::Refused(Refusal::Unavailable),
        }
    }

    /// The registry, re-read first if the file changed since the last check.
    fn current_registry(&self) -> Arc<CredentialRegistry> {
        let mut loaded = lock(&self.registry);
        if loaded.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            loaded.checked = Instant::now();
            let version = file_version(&self.path);
            if version != loaded.version {
                match CredentialRegistry::load(&self.path) {
                    Ok(registry) => {
                        debug!(devices = registry.len(), "device credentials reloaded");
                        loaded.registry = Arc::new(registry);
                        loaded.version = version;
                        lock(&self.cache).clear();
                    }
                    // Keep serving with the registry we have; say why once per change.
                    Err(error) => {
                        warn!(%error, "device credentials not reloaded");
                        loaded.version = version;
                    }
                }
            }
        }
        loaded.registry.clone()
    }

    fn cached(&self, device: &str, digest: u64) -> bool {
        lock(&self.cache)
            .get(device)
            .is_some_and(|(known, at)| *known == digest && at.elapsed() < CACHE_TTL)
    }

    fn remember(&self, device: &str, digest: u64) {
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(device) {
            if let Some(evicted) = cache.keys().next().cloned() {
                cache.remove(&evicted);
            }
        }
        cache.insert(device.to_string(), (digest, Instant::now()));
    }
}

/// Locks `mutex`, recovering from a panic elsewhere: the guarded data stays consistent
/// because every critical section here is a single insert, remove or replace.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_file(tag: &str, devices: &[(&str, &str)]) -> PathBuf {
        let path = std::env::temp_dir()
            .join(format!("iotmon-auth-{tag}-{}", std::process::id()))
            .join("devices.credentials");
        let mut registry = CredentialRegistry::default();
        for (id, password) in devices {
            registry.set_password(id, password).expect("valid id");
        }
        registry.save(&path).expect("saved");
        path
    }

    #[tokio::test]
    async fn the_rule_is_user_name_equals_client_id_and_the_right_password() {
        let path = registry_file("rule", &[("dev-1", "pw")]);
        let metrics = Arc::new(BrokerMetrics::default());
        let auth = DeviceAuth::load(&path, metrics.clone()).expect("loads");
        assert_eq!(auth.check("dev-1", "dev-1", "pw").await, Verdict::Accepted);
        let refused = |why| Verdict::Refused(why);
        assert_eq!(
            auth.check("dev-1", "dev-1", "wrong").await,
            refused(Refusal::WrongPassword)
        );
        assert_eq!(
            auth.check("other", "dev-1", "pw").await,
            refused(Refusal::ClientIdMismatch)
        );
        assert_eq!(
            auth.check("dev-2", "dev-2", "pw").await,
            refused(Refusal::UnknownDevice)
        );
        assert_eq!(
            auth.check("dev-1", "", "").await,
            refused(Refusal::NoCredentials)
        );
        // A second good connect is answered from the cache; a wrong password is not.
        assert_eq!(auth.check("dev-1", "dev-1", "pw").await, Verdict::Accepted);
        assert_eq!(
            auth.check("dev-1", "dev-1", "wrong").await,
            refused(Refusal::WrongPassword)
        );
        let mut registry = iotmon_wire::metrics::Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let out = iotmon_wire::metrics::render(&[&registry]);
        assert!(
            out.contains("iotmon_broker_auth_cache_hits_total 1"),
            "{out}"
        );
        assert_eq!(metrics.refused_count(Refusal::WrongPassword), 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn a_removed_device_is_refused_after_the_file_changes() {
        let path = registry_file("reload", &[("dev-1", "pw"), ("dev-2", "pw2")]);
        let auth = DeviceAuth::load(&path, Arc::default()).expect("loads");
        assert_eq!(auth.check("dev-1", "dev-1", "pw").await, Verdict::Accepted);
        let mut registry = CredentialRegistry::load(&path).expect("loads");
        registry.remove("dev-1");
        registry.save(&path).expect("saved");
        // Force the next check to look at the file.
        lock(&auth.registry).checked -= RELOAD_CHECK_INTERVAL;
        assert_eq!(
            auth.check("dev-1", "dev-1", "pw").await,
            Verdict::Refused(Refusal::UnknownDevice)
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
