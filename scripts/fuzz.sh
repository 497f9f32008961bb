#!/usr/bin/env bash
# The fuzz targets (fuzz/, cargo fuzz on a nightly toolchain; the main build stays on
# stable): each runs for FUZZ_SECS seconds (default 20) from its seeds, and any crash fails
# the run with the input that caused it in fuzz/artifacts/<target>/. Seeds: our example
# declarations and our example kernel images (all boot protocols); snapshot_state starts
# empty. Longer runs: FUZZ_SECS=3600 bash scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${FUZZ_SECS:-20}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seeds=fuzz/corpus
mkdir -p "$seeds/kdl" "$seeds/kernel_loader" "$seeds/snapshot_state"
cp examples/declarations/*.kdl "$seeds/kdl/"
images=examples/unikernels/target/x86_64-unknown-linux-gnu/release
for image in hello hello-lx hello-bz hello-mb; do
    [ -f "$images/$image" ] && cp "$images/$image" "$seeds/kernel_loader/$image"
done

cargo +nightly fuzz build -O
for target in kdl kernel_loader snapshot_state; do
    echo "== fuzz $target (${secs}s)"
    rm -rf "fuzz/artifacts/$target"
    cargo +nightly fuzz run -O "$target" "$seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|SUMMARY|==[0-9]+==)|panicked' || true
    # libFuzzer's exit status is lost in the pipe: a crash leaves an artifact.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "FAIL: fuzz $target found a crash: $(ls fuzz/artifacts/$target/)" >&2
        exit 1
    fi
done
