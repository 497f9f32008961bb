#!/usr/bin/env bash
# The test suite: formatting, lints, the example unikernels, and every test (unit tests and
# end-to-end tests that boot real VMs under /dev/kvm). Run as root on a Debian 12 host.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd examples/unikernels && cargo fmt -- --check)

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== example unikernels"
# From their own folder, so their .cargo/config.toml (no-SSE, freestanding) applies. rustc
# warns there that the x86_64 ABI wants SSE2 (known, see that file): show output on failure.
if ! log=$(cd examples/unikernels && cargo build --release --locked 2>&1); then
    echo "$log"
    exit 1
fi
ls examples/unikernels/target/x86_64-unknown-linux-gnu/release/ | grep -E '^(hello|hello-lx|hello-bz|hello-mb|triplefault|hostile)$'

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; if (p == 0) exit 1 }' "$log"

echo "== the Debian package in a real systemd (tests/package/run.sh)"
bash tests/package/run.sh

echo "== fuzz targets, briefly (scripts/fuzz.sh)"
bash scripts/fuzz.sh
