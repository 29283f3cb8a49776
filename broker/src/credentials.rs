//! The device credential registry: a text file of device ids and argon2id password hashes,
//! read by the broker and edited by `iotmon devices`.
//!
//! Format: one device per line, `<device-id> <PHC string>`, for example
//! `temp-0042 $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`. Blank lines and lines starting
//! with `#` are ignored. Passwords are never stored, only their hashes; the file is written
//! with mode 0600 through a temporary file and a rename, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;

use crate::embedded::BrokerError;

/// The file name of the registry inside the data directory, when no path is configured.
pub const DEFAULT_FILE_NAME: &str = "devices.credentials";

/// Longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 64;

/// argon2id memory cost in KiB, time cost and lanes: OWASP's recommended minimum (19 MiB, two
/// passes). One verification takes tens of milliseconds of one core; the broker runs them
/// off the async workers, a few at a time, and caches successes (see `auth`).
const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
const ARGON2_PASSES: u32 = 2;
const ARGON2_LANES: u32 = 1;

/// Length of a generated password: 32 alphanumeric characters, about 190 bits.
const GENERATED_PASSWORD_LEN: usize = 32;

/// Device ids and their password hashes, as stored in the registry file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRegistry {
    /// Device id to PHC-format argon2id hash.
    hashes: BTreeMap<String, String>,
}

impl CredentialRegistry {
    /// Reads the registry at `path`; a missing file is an empty registry.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not `<device-id> <argon2 hash>`.
    pub fn load(path: &Path) -> Result<Self, BrokerError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|reason| BrokerError::Credentials {
                path: path.to_path_buf(),
                reason,
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(BrokerError::CredentialsIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses the file's text; the error names the first bad line.
    fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hash) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {}: expected `<device-id> <hash>`", number + 1))?;
            let hash = hash.trim();
            validate_device_id(id).map_err(|reason| format!("line {}: {reason}", number + 1))?;
            PasswordHash::new(hash)
                .map_err(|error| format!("line {}: not a password hash: {error}", number + 1))?;
            hashes.insert(id.to_string(), hash.to_string());
        }
        Ok(CredentialRegistry { hashes })
    }

    /// Writes the registry to `path` atomically: a temporary file beside it, flushed to disk,
    /// then renamed over the old one.
    ///
    /// # Errors
    /// The directory is not writable or the disk is full.
    pub fn save(&self, path: &Path) -> Result<(), BrokerError> {
        let io_error = |source| BrokerError::CredentialsIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let temporary = temporary_path(path);
        let mut file = open_private(&temporary).map_err(io_error)?;
        file.write_all(self.render().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io_error)
    }

    fn render(&self) -> String {
        let mut text = String::from(
            "# iotmon device credentials: <device-id> <argon2id hash>. Edit with `iotmon devices`.\n",
        );
        for (id, hash) in &self.hashes {
            text.push_str(id);
            text.push(' ');
            text.push_str(hash);
            text.push('\n');
        }
        text
    }

    /// Sets `id`'s password (hashing it), replacing any earlier one. Returns whether the
    /// device was already registered.
    ///
    /// # Errors
    /// The device id is not acceptable.
    pub fn set_password(&mut self, id: &str, password: &str) -> Result<bool, BrokerError> {
        validate_device_id(id).map_err(BrokerError::DeviceId)?;
        let hash = hash_password(password)?;
        Ok(self.hashes.insert(id.to_string(), hash).is_some())
    }

    /// Forgets `id`; returns whether it was registered.
    pub fn remove(&mut self, id: &str) -> bool {
        self.hashes.remove(id).is_some()
    }

    /// The registered device ids, sorted.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    /// The stored hash of `id`, if registered.
    pub fn hash_of(&self, id: &str) -> Option<&str> {
        self.hashes.get(id).map(String::as_str)
    }

    /// Number of registered devices.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The registry's path: `configured`, or [`DEFAULT_FILE_NAME`] in `data_dir`.
pub fn registry_path(configured: Option<&Path>, data_dir: &Path) -> PathBuf {
    configured.map_or_else(|| data_dir.join(DEFAULT_FILE_NAME), Path::to_path_buf)
}

/// A fresh random password for a device.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), GENERATED_PASSWORD_LEN)
}

/// Hashes `password` with argon2id and a random salt, in PHC string format.
///
/// # Errors
/// Only if argon2 rejects its own parameters, which are constants.
pub fn hash_password(password: &str) -> Result<String, BrokerError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| BrokerError::Hash(e.into()))?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| BrokerError::Hash(e.into()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC `hash`. Slow on purpose (argon2): call it off the
/// async workers.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // The parameters come from the hash itself, so older hashes keep verifying.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

fn hasher() -> Result<Argon2<'static>, BrokerError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .map_err(|e| BrokerError::Hash(e.into()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A device id must be usable as one MQTT topic level and as a client id: 1 to 64 bytes of
/// ASCII letters, digits, `-`, `_` and `.`.
///
/// # Errors
/// A sentence saying what is wrong with `id`.
pub fn validate_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID_BYTES {
        return Err(format!(
            "device id must be 1 to {MAX_DEVICE_ID_BYTES} bytes, got {}",
            id.len()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "device id {id:?} holds {c:?}; use letters, digits, '-', '_' and '.'"
        )),
        None => Ok(()),
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Creates `path` readable and writable by its owner only.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, b"s3cret"));
        assert!(!verify_password(&hash, b"s3cret "));
        assert!(!verify_password("not a hash", b"s3cret"));
    }

    #[test]
    fn the_file_round_trips_and_never_holds_the_password() {
        let dir = std::env::temp_dir().join(format!("iotmon-cred-{}", std::process::id()));
        let path = dir.join("devices.credentials");
        let mut registry = CredentialRegistry::default();
        assert!(!registry
            .set_password("temp-0042", "pw-one")
            .expect("valid id"));
        assert!(registry.set_password("temp-0042", "pw-two").expect("valid"));
        registry.set_password("door.7", "other").expect("valid id");
        registry.save(&path).expect("saved");

        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(!text.contains("pw-two") && !text.contains("other"));
        let back = CredentialRegistry::load(&path).expect("loads");
        assert_eq!(back, registry);
        assert_eq!(back.devices().collect::<Vec<_>>(), ["door.7", "temp-0042"]);
        assert!(verify_password(
            back.hash_of("temp-0042").expect("set"),
            b"pw-two"
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_bad_line_is_named() {
        let missing = CredentialRegistry::load(Path::new("/nonexistent/iotmon/creds"));
        assert!(missing.expect("missing is empty").is_empty());
        let error = CredentialRegistry::parse("# comment\n\ndev-1 not-a-hash\n").expect_err("bad");
        assert!(error.starts_with("line 3:"), "{error}");
        let error = CredentialRegistry::parse("dev/1 $argon2id$x\n").expect_err("bad id");
        assert!(error.contains("'/'"), "{error}");
    }

    #[test]
    fn device_ids_are_single_safe_topic_levels() {
        assert!(validate_device_id("temp-0042").is_ok());
        assert!(validate_device_id("a.b_c-D9").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b", "é", &"x".repeat(65)] {
            assert!(validate_device_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert_ne!(a, b);
    }
}
