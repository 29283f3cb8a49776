//! A self-signed TLS certificate for tests, made by the `openssl` CLI: an EC P-256 key, valid
//! for a day, for `localhost` and `127.0.0.1`. Shared by the simulator's fleet tests and the
//! broker's interop tests (included there by path).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes `cert.pem` and `key.pem` into `dir`; returns their paths. The certificate is its
/// own issuer, so clients trust it by loading it as their CA file.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // rustls refuses a CA certificate as a server's own: mark it an end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI runs (apt-get install openssl)");
    assert!(status.success(), "openssl made a certificate");
    // A broker started as root (mosquitto) may drop to its own user, which must read the key.
    make_readable(&key);
    (cert, key)
}

fn make_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}
