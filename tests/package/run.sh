#!/usr/bin/env bash
# The Debian package in a real systemd: builds the .deb from this checkout
# (dpkg-buildpackage, lintian), boots a Debian 12 tree with systemd-nspawn (its own network
# namespace, /dev/kvm and /dev/net/tun bound in), and checks inside what a host operator
# relies on: apt install, the unit, an HTTP unikernel on its host port, unikernelctl and
# busctl, the D-Bus policy, the journal, each VM in its own scope with its limits, a daemon
# restart and a package upgrade that restart no VM, reload, remove and purge.
#
# Run as root on a Debian 12 host with /dev/kvm (scripts/test.sh runs it). The Debian tree
# is made once with debootstrap from the mirror in apt's sources and cached in
# $UK_TEST_CACHE (default /var/cache/unikerneld-tests). Each check prints pass or FAIL; the
# script fails if any failed.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/../.."
started=$(date +%s)

[ -c /dev/kvm ] || { echo "FATAL: /dev/kvm is missing: the package test boots real VMs" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FATAL: run as root (debootstrap, systemd-nspawn)" >&2; exit 1; }

source scripts/apt.sh
apt_ensure "package test" debhelper lintian debootstrap systemd-container dpkg-dev

failures=0
check() { # check "what" command...: runs the command, prints pass/FAIL
    local what=$1
    shift
    if out=$("$@" 2>&1); then
        echo "pass  $what"
    else
        echo "FAIL  $what"
        [ -n "$out" ] && printf '%s\n' "$out" | tail -20 | sed 's/^/      /'
        failures=$((failures + 1))
    fi
}

work=$(mktemp -d /tmp/uk-package.XXXXXX)
nspawn_pid=
cleanup() {
    if [ "$failures" != 0 ] && [ -n "${leader:-}" ]; then
        echo "== unikerneld's journal in the container (last 80 lines)"
        nsenter -t "$leader" -a journalctl -q -n 80 -u unikerneld --no-pager 2>&1 | sed 's/^/      /' || true
    fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== build the package (dpkg-buildpackage -us -uc -b)"
version=$(dpkg-parsechangelog -S Version)
t0=$(date +%s)
if ! dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log"
    echo "FATAL: the package does not build" >&2
    exit 1
fi
echo "built in $(($(date +%s) - t0)) s"
for f in ../unikerneld_"${version}"_amd64.{deb,buildinfo,changes}; do mv "$f" "$work/"; done
deb=$work/unikerneld_${version}_amd64.deb
lintian_out=$(lintian "$work/unikerneld_${version}_amd64.changes" 2>&1 | grep -v '^running with root' || true)
[ -n "$lintian_out" ] && printf '%s\n' "$lintian_out" | sed 's/^/lintian: /'
check "lintian reports no errors" bash -c "! grep -q '^E:' <<<'$lintian_out'"

echo "== a Debian 12 tree with systemd (debootstrap, cached)"
cache=${UK_TEST_CACHE:-/var/cache/unikerneld-tests}
packages=systemd,systemd-sysv,dbus,iproute2,curl,ca-certificates,procps,man-db
mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.{list,sources} 2>/dev/null |
    awk '{ print $2; exit }' || true)
mirror=${mirror:-http://deb.debian.org/debian}
tree=$cache/bookworm-$(echo "$packages" | md5sum | cut -c1-8)
if [ ! -x "$tree/lib/systemd/systemd" ]; then
    mkdir -p "$cache"
    rm -rf "$tree.tmp"
    t0=$(date +%s)
    debootstrap --variant=minbase --include="$packages" bookworm "$tree.tmp" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; exit 1; }
    rm -rf "$tree"
    mv "$tree.tmp" "$tree"
    echo "debootstrap from $mirror in $(($(date +%s) - t0)) s"
fi
root=$work/root
cp -a --reflink=auto "$tree" "$root"
echo uktest >"$root/etc/hostname"
cp "$deb" "$root/root/"
# Nothing in the container needs a login prompt.
ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"

echo "== boot it (systemd-nspawn -b)"
t0=$(date +%s%N)
systemd-nspawn -D "$root" -b --register=no --keep-unit --private-network \
    --bind=/dev/kvm --bind=/dev/net/tun -M uktest --console=read-only >"$work/console.log" 2>&1 &
nspawn_pid=$!
leader=
for _ in $(seq 100); do
    leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
    sleep 0.1
done
[ -n "$leader" ] || { cat "$work/console.log"; echo "FATAL: the container did not start" >&2; exit 1; }
inside() { nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
for _ in $(seq 100); do [ -S "/proc/$leader/root/run/systemd/private" ] && break; sleep 0.05; done
state=$(inside timeout 60 systemctl is-system-running --wait || true)
echo "booted ($state) in $((($(date +%s%N) - t0) / 1000000)) ms"

# Helpers run inside the container.
http() { inside curl -s --max-time 5 "http://127.0.0.1:$1/"; }
main_pid() { inside systemctl show -P MainPID unikerneld; }
vm_pid() { inside unikernelctl status web --json 2>/dev/null | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$' || true; }
wait_http() { # wait_http PORT PATTERN
    for _ in $(seq 500); do
        http "$1" 2>/dev/null | grep -q "$2" && return 0
        sleep 0.02
    done
    echo "no answer matching '$2' on port $1"
    return 1
}

echo "== install"
check "apt install ./unikerneld_${version}_amd64.deb" \
    inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/root/unikerneld_${version}_amd64.deb"
check "unikerneld.service is active (enabled and started by the package)" \
    bash -c "[ \"\$(nsenter -t $leader -a systemctl is-active unikerneld)\" = active ] && [ \"\$(nsenter -t $leader -a systemctl is-enabled unikerneld)\" = enabled ]"
check "systemd-analyze verify unikerneld.service unikernel.slice" \
    inside systemd-analyze verify unikerneld.service unikernel.slice
check "man unikerneld(8), unikernelctl(1), unikernels.kdl(5) are installed" \
    inside test -f /usr/share/man/man8/unikerneld.8.gz -a -f /usr/share/man/man1/unikernelctl.1.gz -a -f /usr/share/man/man5/unikernels.kdl.5.gz
check "bash completion for unikernelctl is installed" \
    inside test -f /usr/share/bash-completion/completions/unikernelctl

echo "== a declaration dropped into /etc/unikernels"
inside cp /usr/share/doc/unikerneld/examples/web.kdl /etc/unikernels/web.kdl
t0=$(date +%s%N)
check "web answers on its host port 8080" wait_http 8080 "web 1"
echo "      (file copied -> first HTTP 200 in $((($(date +%s%N) - t0) / 1000000)) ms, polling every 20 ms)"
# Status follows the guest within one publishing period (100 ms).
check "unikernelctl status web says running" \
    bash -c "for i in \$(seq 50); do nsenter -t $leader -a unikernelctl status web 2>&1 | grep -q 'State: running' && exit 0; sleep 0.05; done; nsenter -t $leader -a unikernelctl status web"
check "busctl lists web" bash -c "nsenter -t $leader -a busctl call org.unikerneld1 /org/unikerneld1 org.unikerneld1.Manager ListUnikernels | grep -q '\"web\"'"
check "a non-root unikernelctl restart web is denied (exit 6)" \
    bash -c "nsenter -t $leader -a setpriv --reuid=65534 --regid=65534 --clear-groups unikernelctl restart web; [ \$? = 6 ]"
check "a non-root unikernelctl status web is allowed" \
    inside setpriv --reuid=65534 --regid=65534 --clear-groups unikernelctl status web
check "journalctl UNIKERNEL=web shows the guest's console line" \
    bash -c "for i in \$(seq 50); do nsenter -t $leader -a journalctl -q UNIKERNEL=web | grep -q 'http: web listening on port 80' && exit 0; sleep 0.1; done; exit 1"
pid=$(vm_pid)
check "the VMM ($pid) is in unikernel-web.scope, not in unikerneld.service" \
    bash -c "for i in \$(seq 50); do c=\$(nsenter -t $leader -a cat /proc/$pid/cgroup); grep -q 'unikernel.slice/unikernel-web.scope' <<<\"\$c\" && ! grep -q unikerneld.service <<<\"\$c\" && exit 0; sleep 0.1; done; echo \"\$c\"; exit 1"
check "systemctl status unikernel-web.scope shows the VMM" \
    bash -c "nsenter -t $leader -a systemctl status unikernel-web.scope | grep -q 'unikernel-vmm'"
check "the VMM ($pid) is jailed: a uid of its own range, no capabilities, NoNewPrivs, seccomp on every thread" \
    inside sh -c "awk '/^Uid:/ { exit !(\$2 >= 2063597568 && \$2 < 2063663104) }' /proc/$pid/status \
        && grep -q '^CapEff:[[:space:]]*0000000000000000' /proc/$pid/status \
        && grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$pid/status \
        && ! grep -L '^Seccomp:[[:space:]]*2' /proc/$pid/task/*/status | grep -q . \
        || { cat /proc/$pid/status; exit 1; }"
check "the guest command line is not in /proc/$pid/cmdline" \
    inside sh -c "! tr '\\000' ' ' </proc/$pid/cmdline | grep -q 'ip='"
check "a user outside the unikerneld group cannot read web's console (exit 6)" \
    bash -c "nsenter -t $leader -a setpriv --reuid=65534 --regid=65534 --clear-groups unikernelctl logs web; [ \$? = 6 ]"
check "a member of the unikerneld group can" \
    bash -c "g=\$(nsenter -t $leader -a getent group unikerneld | cut -d: -f3); nsenter -t $leader -a setpriv --reuid=65534 --regid=65534 --groups=\$g unikernelctl logs web | grep -q 'listening on port 80'"
inside journalctl -q -u unikerneld -g 'in unikernel-web.scope' -o cat | sed 's/^/      journal: /' | head -1
echo "      boot (spawn -> serving): $(inside unikernelctl status web --json | grep -o '"boot_time_usec": *[0-9]*' | grep -o '[0-9]*$') us"
address=$(inside unikernelctl status web --json | grep -o '"address": *"[0-9.]*"' | grep -o '[0-9.]*"$' | tr -d '"')

echo "== limits, reload"
inside sed -i 's|^    restart "always"|    restart "always"\n    limits { memory-max "64M"; cpu-weight 50; }|' /etc/unikernels/web.kdl
check "systemctl reload unikerneld" inside systemctl reload unikerneld
check "the edit (limits) applies in place: MemoryMax=64M, CPUWeight=50 on the scope, same VM" \
    bash -c "for i in \$(seq 50); do m=\$(nsenter -t $leader -a systemctl show -P MemoryMax unikernel-web.scope); w=\$(nsenter -t $leader -a systemctl show -P CPUWeight unikernel-web.scope); [ \"\$m\" = 67108864 ] && [ \"\$w\" = 50 ] && exit 0; sleep 0.1; done; echo \"MemoryMax=\$m CPUWeight=\$w\"; exit 1"
check "same VMM after the edit" bash -c "[ \"$(vm_pid)\" = $pid ]"

echo "== systemctl restart unikerneld restarts no VM"
check "the guest's counter is at 2" bash -c "curl_out=\$(nsenter -t $leader -a curl -s http://127.0.0.1:8080/); grep -q 'web 2' <<<\"\$curl_out\" || { echo \"\$curl_out\"; exit 1; }"
daemon=$(main_pid)
check "systemctl restart unikerneld" inside systemctl restart unikerneld
check "a new daemon ($daemon -> $(main_pid))" bash -c "[ \"$(main_pid)\" != $daemon ]"
check "the same VMM ($pid)" bash -c "[ \"$(vm_pid)\" = $pid ]"
check "the same guest: the counter goes on at 3" wait_http 8080 "web 3"

echo "== systemctl stop unikerneld leaves the VMs running"
check "systemctl stop unikerneld" inside systemctl stop unikerneld
# The host ports are the daemon's (its proxy): they close with it; the guest's own
# address still answers.
check "the VMM ($pid) still runs and serves on its address $address (counter at 4)" \
    bash -c "nsenter -t $leader -a test -d /proc/$pid && curl_out=\$(nsenter -t $leader -a curl -s --max-time 5 http://$address/) && grep -q 'web 4' <<<\"\$curl_out\""
check "systemctl start unikerneld adopts it" inside systemctl start unikerneld
check "the same VMM ($pid)" bash -c "[ \"\$(nsenter -t $leader -a unikernelctl status web --json | grep -o '\"pid\": *[0-9]*' | grep -o '[0-9]*\$')\" = $pid ]"

echo "== upgrade (the same .deb again) restarts no VM"
daemon=$(main_pid)
check "apt install --reinstall" \
    inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "/root/unikerneld_${version}_amd64.deb"
check "a new daemon" bash -c "[ \"$(main_pid)\" != $daemon ] && [ \"\$(nsenter -t $leader -a systemctl is-active unikerneld)\" = active ]"
check "the same VMM ($pid)" bash -c "[ \"$(vm_pid)\" = $pid ]"
check "the same guest: the counter goes on at 5" wait_http 8080 "web 5"

echo "== standby under the unit's hardening: snapshot in /var/lib/unikerneld, wake on a request"
check "unikernelctl standby web" inside unikernelctl standby web
# The VM was adopted (restart, upgrade): its exit status is not the daemon's to read,
# yet it must be on standby, not taken for a crash and restarted.
check "web is on standby, with no process" \
    bash -c "for i in \$(seq 50); do s=\$(nsenter -t $leader -a unikernelctl status web); grep -q 'State: standby' <<<\"\$s\" && ! grep -q 'PID:' <<<\"\$s\" && exit 0; sleep 0.05; done; echo \"\$s\"; exit 1"
check "its snapshot is in /var/lib/unikerneld/snapshots/web" inside test -s /var/lib/unikerneld/snapshots/web/memory
check "a request wakes it: the counter goes on at 6" wait_http 8080 "web 6"
pid=$(vm_pid)

echo "== remove, purge"
check "apt remove" inside env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q unikerneld
check "/etc/unikernels/web.kdl is kept" inside test -f /etc/unikernels/web.kdl
check "the VM ended with the package" bash -c "for i in \$(seq 50); do nsenter -t $leader -a test -d /proc/$pid || exit 0; sleep 0.1; done; exit 1"
check "apt purge" inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q unikerneld
check "purge removed /var/lib/unikerneld and /run/unikerneld" \
    inside bash -c "! test -e /var/lib/unikerneld && ! test -e /run/unikerneld"
check "purge kept the operator's /etc/unikernels/web.kdl" inside test -f /etc/unikernels/web.kdl

echo "package test: $failures failed, $(($(date +%s) - started)) s"
[ "$failures" = 0 ]
