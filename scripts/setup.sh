#!/usr/bin/env bash
# Installs what building, testing and benchmarking unikerneld needs on a Debian 12 host.
# Idempotent: installs only what is missing. Sourced by test.sh and demo.sh.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_ensure setup build-essential binutils pkg-config qemu-system-x86 iproute2 strace curl dbus systemd \
    libglib2.0-bin util-linux git openssh-client

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        echo "setup: installing the Rust toolchain with rustup"
        apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    }
    export PATH="$HOME/.cargo/bin:$PATH"
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        rustup component add "$component"
    fi
done

if [ ! -c /dev/kvm ]; then
    echo "FATAL: /dev/kvm is missing: unikerneld boots real VMs (enable KVM or nested virtualisation)" >&2
    exit 1
fi
