#!/usr/bin/env bash
# The demo: build everything, then run unikerneld on the example declarations and watch
# it converge: boot, serve HTTP on host ports, replace on edit, stop on removal. Run as
# root on a Debian 12 host with /dev/kvm. Everything networked happens in a network
# namespace of its own (ukdemo), never in the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --locked --quiet
(cd examples/unikernels && cargo build --release --locked --quiet 2>/dev/null) || (cd examples/unikernels && cargo build --release --locked)
images=$PWD/examples/unikernels/target/x86_64-unknown-linux-gnu/release
bin=$PWD/target/release

echo "== unikernel-vmm alone: boot the hello image"
"$bin/unikernel-vmm" --kernel "$images/hello" --memory 16M --cmdline "hello from the demo"

work=$(mktemp -d /tmp/unikerneld-demo.XXXXXX)
ns=ukdemo
cleanup() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    for f in "$work"/state/services/*/vm.json; do
        [ -f "$f" ] && kill -9 "$(grep -o '"pid": [0-9]*' "$f" | grep -o '[0-9]*')" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "$work/conf"
for f in examples/declarations/*.kdl; do
    sed "s|/usr/share/unikerneld/images|$images|" "$f" > "$work/conf/$(basename "$f")"
done

status() { grep -E '"(name|state|pid|address|boot_ms)"' "$work/state/status.json" | tr -d ' \n' | sed 's/"name"/\n  "name"/g'; echo; }
wait_for() { # wait_for PATTERN: until status.json matches
    for _ in $(seq 200); do grep -q "$1" "$work/state/status.json" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for $1"; cat "$work/daemon.log"; return 1
}
running() { grep -c '"state": "running"' "$work/state/status.json" 2>/dev/null || true; }

echo "== unikernelctl check and plan"
"$bin/unikernelctl" check "$work/conf"
"$bin/unikernelctl" plan --offline "$work/conf"

echo "== unikerneld on $work/conf (in network namespace $ns)"
ip netns exec "$ns" "$bin/unikerneld" --config-dir "$work/conf" --state-dir "$work/state" >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do [ "$(running)" = 2 ] && break; sleep 0.05; done
status
echo "-- curl http://127.0.0.1:8080/ and :8081/ (host ports, proxied to the guests)"
ip netns exec "$ns" curl -s http://127.0.0.1:8080/
ip netns exec "$ns" curl -s http://127.0.0.1:8081/

echo "== edit web.kdl (memory 16M -> 32M): web is replaced, api keeps running"
sed -i 's/memory "16M"/memory "32M"/' "$work/conf/web.kdl"
wait_for '"memory_bytes": 33554432'
for _ in $(seq 200); do [ "$(running)" = 2 ] && break; sleep 0.05; done
status
ip netns exec "$ns" curl -s http://127.0.0.1:8080/

echo "== remove api.kdl: api stops, its tap goes"
rm "$work/conf/api.kdl"
for _ in $(seq 200); do grep -q '"api"' "$work/state/status.json" || break; sleep 0.05; done
status
ip -n "$ns" -br link | grep '^uk-' || true

echo "== the daemon's log"
cat "$work/daemon.log"
rm "$work/conf/web.kdl"
for _ in $(seq 200); do grep -q '"web"' "$work/state/status.json" || break; sleep 0.05; done
echo "== done"
