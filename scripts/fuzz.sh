#!/usr/bin/env bash
# The fuzz targets (fuzz/, cargo fuzz on a nightly toolchain; the main build stays on
# stable): each runs for FUZZ_SECS seconds (default 20) from its seeds, and any crash fails
# the run with the input that caused it in fuzz/artifacts/<target>/. Seeds: our example
# declarations, our example kernel images (all boot protocols), a driver that sets up the
# virtio-net device and moves a frame each way (fuzz/seeds/virtio_net.py), a console
# replay header; snapshot_state starts empty. Longer runs: FUZZ_SECS=3600 bash scripts/fuzz.sh
# (by hand, kdl needs `ulimit -s 1048576` first, as here); FUZZ_TARGETS="virtio_net" picks some.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${FUZZ_SECS:-20}
targets=${FUZZ_TARGETS:-"kdl kernel_loader snapshot_state virtio_net console_header console_feed"}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seeds=fuzz/corpus
for target in $targets; do mkdir -p "$seeds/$target"; done
cp examples/declarations/*.kdl "$seeds/kdl/"
images=examples/unikernels/target/x86_64-unknown-linux-gnu/release
for image in hello hello-lx hello-bz hello-mb; do
    [ -f "$images/$image" ] && cp "$images/$image" "$seeds/kernel_loader/$image"
done
python3 fuzz/seeds/virtio_net.py "$seeds/virtio_net/driver-init-tx-rx"
printf '42 1000\n\0\0\0\0\0\0\0\0' >"$seeds/console_header/header"
# Where the last daemon read to (byte 2: offset 32), then two 64-byte frames: a replay at
# 0, then live output from its end.
python3 -c 'import sys, struct
f = lambda kind, at, text: bytes([1, kind]) + struct.pack("<Q", at) + text.ljust(54, b"x")
sys.stdout.buffer.write(bytes([2]) + f(1, 0, b"old\n") + f(0, 54, b"new\nline"))' >"$seeds/console_feed/frames"

cargo +nightly fuzz build -O
# The kdl target reads declarations on libFuzzer's main thread: give it the stack the
# daemon's parser thread has (512 MiB; the target refuses to run with less).
ulimit -s $((1 << 20))
for target in $targets; do
    echo "== fuzz $target (${secs}s)"
    rm -rf "fuzz/artifacts/$target"
    # -close_fd_mask=2: the targets' own stderr (the VMM's warnings about what a hostile
    # driver did, once per run) is not printed; a crash still leaves its artifact, and
    # `cargo +nightly fuzz run TARGET ARTIFACT` shows its message.
    log=$(mktemp)
    status=0
    # -timeout=10: one input running that long is a hang (a loop a guest can spin), not a
    # slow unit; without it libFuzzer waits 20 minutes before saying so.
    cargo +nightly fuzz run -O "$target" "$seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -close_fd_mask=2 >"$log" 2>&1 \
        || status=$?
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|SUMMARY|==[0-9]+==)|panicked|Segmentation' "$log" || true
    rm -f "$log"
    # A crash leaves an artifact, except one libFuzzer cannot catch (a stack overflow is a
    # bare SIGSEGV): its exit status says so.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "FAIL: fuzz $target found a crash: $(ls fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    if [ "$status" -ne 0 ]; then
        echo "FAIL: fuzz $target ended with status $status and no artifact (see above)" >&2
        exit 1
    fi
done
