#!/usr/bin/env bash
# Runs every iotmon check: formatting, lints, the Rust test suite (unit, integration and
# end-to-end tests against real MQTT clients and Debian's mosquitto) and the browser test
# (headless Chromium). Installs the system packages the tests need when run as root on a
# Debian-like machine; otherwise names what is missing and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_packages+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v node >/dev/null 2>&1 || need_packages+=(nodejs npm)

if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test dependencies: ${need_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  else
    echo "missing test dependencies: ${need_packages[*]}" >&2
    echo "install them (Debian: sudo apt-get install ${need_packages[*]}) and run again" >&2
    exit 1
  fi
fi
# Debian puts mosquitto in /usr/sbin, which is not always on a user's PATH.
export PATH="$PATH:/usr/sbin"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== browser test"
(cd tests/browser && npm ci --no-audit --no-fund >/dev/null && npm test)
