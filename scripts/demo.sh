#!/usr/bin/env bash
# The demo: build everything, then boot each example unikernel with unikernel-vmm and
# show what it printed and how fast. Run as root on a Debian 12 host.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --locked --quiet
(cd examples/unikernels && cargo build --release --locked --quiet 2>/dev/null) || (cd examples/unikernels && cargo build --release --locked)
images=examples/unikernels/target/x86_64-unknown-linux-gnu/release

for image in hello hello-lx; do
    echo "== $image"
    start=$(date +%s%N)
    ./target/release/unikernel-vmm --kernel "$images/$image" --memory 16M --cmdline "demo of $image"
    echo "   exit status $?, $(( ($(date +%s%N) - start) / 1000 )) us from spawn to exit"
done
echo "== triplefault (a guest that dies; the VMM says why and exits 1)"
./target/release/unikernel-vmm --kernel "$images/triplefault" || echo "   exit status $?"
