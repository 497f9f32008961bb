# apt_ensure WHO PACKAGE...: installs those of the Debian packages that are missing (one
# apt-get call), saying so as WHO. Sourced by setup.sh and tests/package/run.sh.
apt_ensure() {
    local who=$1
    shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "$who: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
