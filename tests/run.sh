#!/usr/bin/env bash
# The whole test suite, green or not: README's second command, and all that .ci/run does.
# Installs the Debian packages the tests need when they are missing (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system packages the tests talk to -------------------------------------------------------
missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mbpoll >/dev/null 2>&1 || missing+=(mbpoll)
# The InfluxDB v2 write API the gateway's sink talks to (VictoriaMetrics accepts it).
command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || missing+=(victoria-metrics)
# Cross linkers for the ARM boards' builds of the edge, and qemu-user to run the aarch64 one.
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || missing+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
[ -x /usr/bin/qemu-aarch64 ] || missing+=(qemu-user)
# Headless Chromium and its WebDriver for the dashboard test; a CJK font for its screenshots and
# the report PDF, and poppler to render and read that PDF back.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
[ -x /usr/bin/pdftoppm ] || missing+=(poppler-utils)
# openssl makes the test CA for the HTTPS upload test.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- style and lints --------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# --- the shared core builds bare-metal (Cortex-M RS-485 node) ----------------------------------
if command -v rustup >/dev/null 2>&1; then
  echo "==> ems-core for thumbv7em-none-eabihf (no_std)"
  rustup target add thumbv7em-none-eabihf >/dev/null
  cargo build --quiet -p ems-core --no-default-features --features alloc,evidence --target thumbv7em-none-eabihf
else
  echo "==> no rustup: the no_std build of ems-core for thumbv7em-none-eabihf is NOT checked"
fi

# --- the edge as it ships to the ARM boards (profile `edge`; the aarch64 one runs under qemu) ---
if command -v rustup >/dev/null 2>&1; then
  rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null
fi
for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  echo "==> ems-edge release for $target"
  cargo build --quiet --profile edge -p ems-edge --target "$target"
done

# --- a plant's production gateway: without the demo, the edge and the simulator ----------------
echo "==> ems-gateway --no-default-features"
cargo build --quiet -p ems-gateway --no-default-features

# --- tests: the end-to-end ones start the binaries, so build them first -----------------------
echo "==> cargo build --workspace"
cargo build --workspace --quiet
echo "==> cargo test --workspace"
cargo test --workspace --no-fail-fast
