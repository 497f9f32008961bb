#!/usr/bin/env python3
"""Is the statically linked VMM (what the package ships) faster to the guest's first byte
than the dynamically linked one? Runs both alternately (A B A B) on the `hello` image and
prints p50/p90 of spawn -> first console byte and the difference.

    cargo build --release -p unikernel-vmm
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p unikernel-vmm \\
        --target x86_64-unknown-linux-gnu --target-dir target/static
    (cd examples/unikernels && cargo build --release)
    python3 tests/package/static_vs_dynamic.py [RUNS]
"""
import statistics
import subprocess
import sys
import time

IMAGE = "examples/unikernels/target/x86_64-unknown-linux-gnu/release/hello"
BINARIES = {
    "dynamic": "target/release/unikernel-vmm",
    "static": "target/static/x86_64-unknown-linux-gnu/release/unikernel-vmm",
}


def first_byte_ms(binary):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "--kernel", IMAGE, "--memory", "16M", "--cmdline", "x"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if p.stdout.read(1) == b"":
        sys.exit(f"{binary}: no console output")
    t = (time.perf_counter() - t0) * 1e3
    p.stdout.read()
    if p.wait() != 0:
        sys.exit(f"{binary}: exit status {p.returncode}")
    return t


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    samples = {k: [] for k in BINARIES}
    for _ in range(runs):
        for kind, binary in BINARIES.items():
            samples[kind].append(first_byte_ms(binary))
    for kind, v in samples.items():
        v.sort()
        print(f"{kind:8} spawn -> first byte p50 {statistics.median(v):.3f} ms"
              f"  p90 {v[int(len(v) * 0.9)]:.3f} ms  (n={len(v)})")
    d = statistics.median(samples["dynamic"])
    s = statistics.median(samples["static"])
    print(f"static - dynamic at p50: {s - d:+.3f} ms ({s / d:.2f}x)")


if __name__ == "__main__":
    main()
