#!/usr/bin/env bash
# Runs every iotmon check: formatting, lints, the Rust test suite (unit, integration and
# end-to-end tests against real MQTT clients, Debian's mosquitto and mosquitto-clients, and
# Python's paho-mqtt; the InfluxDB sink against Debian's victoria-metrics) and the browser test
# (headless Chromium). Installs the system packages and the Python package the tests need when
# run as root on a Debian-like machine; otherwise names what is missing and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_packages+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_packages+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v python3 >/dev/null 2>&1 || need_packages+=(python3 python3-pip)
command -v victoria-metrics >/dev/null 2>&1 || need_packages+=(victoria-metrics)
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
# The broker interoperability tests drive Eclipse paho-mqtt; pinned so a release cannot
# change what the tests check.
PAHO_VERSION=2.1.0
if ! python3 -c "import paho.mqtt, sys; sys.exit(paho.mqtt.__version__ != '$PAHO_VERSION')" 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing paho-mqtt==$PAHO_VERSION"
    python3 -m pip install -q "paho-mqtt==$PAHO_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "paho-mqtt==$PAHO_VERSION"
  else
    echo "missing test dependency: paho-mqtt==$PAHO_VERSION (python3 -m pip install --user paho-mqtt==$PAHO_VERSION)" >&2
    exit 1
  fi
fi
# Debian puts mosquitto in /usr/sbin, which is not always on a user's PATH.
export PATH="$PATH:/usr/sbin"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== browser test"
(cd tests/browser && npm ci --no-audit --no-fund >/dev/null && npm test)
