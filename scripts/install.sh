#!/usr/bin/env bash
# Installs what kiln needs on a Debian 12 (bookworm) machine, as root, and
# builds kiln. Safe to re-run: every step checks before it changes anything.
#
# - gVisor's runsc comes from bookworm-backports (the 2022 runsc in plain
#   bookworm breaks coreutils' ls/stat with EINVAL, so it is never used);
# - runc for the `container` tier;
# - e2fsprogs/util-linux for per-job workspace quotas (loop-mounted ext4);
# - git and python3 for the example pipeline; curl, xxd, node/npm for the
#   tests that run real clients inside sandboxes;
# - mmdebstrap for `kiln image build` (job images made from Debian packages,
#   apt checking the archive's signatures); umoci, skopeo and Debian's
#   docker-registry for the tests that make OCI images, push them to a
#   registry on loopback, and import or pull them;
# - user-mode-linux (a Linux kernel run as a process) for the tests that
#   run kiln's cgroup v2 driver, runc and `kiln doctor` on a real cgroup v2
#   hierarchy when the host mounts cgroup v1;
# - PostgreSQL's server, for the control plane's tests on PostgreSQL;
# - Chromium and its WebDriver (chromium-driver), for the web UI's tests in
#   a real headless browser.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sandboxes need cgroups and mounts)" >&2
    exit 1
fi

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install.sh: adding Debian bookworm-backports to apt's sources"
    cat > /etc/apt/sources.list.d/kiln-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

runsc_ok=0
if command -v runsc >/dev/null 2>&1; then
    # Anything older than the backports build is the broken 2022 one.
    v=$(runsc --version 2>/dev/null | sed -n 's/^runsc version 0.0~\([0-9]*\).*/\1/p')
    if [ -n "$v" ] && [ "$v" -ge 20240101 ]; then runsc_ok=1; fi
fi
# binary -> the Debian package(s) that provide it
declare -A pkg=(
    [runc]=runc [mkfs.ext4]=e2fsprogs [losetup]=util-linux [git]=git [python3]=python3
    [bash]=bash [pgrep]=procps [curl]=curl [xxd]=xxd [npm]="nodejs npm" [openssl]=openssl
    [mmdebstrap]=mmdebstrap [umoci]=umoci [skopeo]=skopeo [docker-registry]=docker-registry
    [g++]=g++ [linux.uml]=user-mode-linux [chromium]=chromium [chromedriver]=chromium-driver
)
missing=()
for bin in "${!pkg[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=(${pkg[$bin]})
done
# PostgreSQL's server, for `kiln serve --database postgres://...`'s tests
# (each starts a throwaway cluster with initdb; Debian keeps the server's
# programs under /usr/lib/postgresql/N/bin).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# What builds use inside sandboxes, which see the host's /usr only: the
# Debian toolchains (not a user's rustup or pyenv), and ClamAV's daemon for
# the optional scan (its signature updates are not needed: tests bring their
# own signatures).
[ -x /usr/bin/cargo ] || missing+=(cargo)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
/usr/bin/python3 -c 'import setuptools, wheel' 2>/dev/null || missing+=(python3-setuptools python3-wheel)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
clamd_missing=0
[ -x /usr/sbin/clamd ] || clamd_missing=1

if [ "$runsc_ok" -eq 0 ] || [ "${#missing[@]}" -gt 0 ] || [ "$clamd_missing" -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Something must be installed: refresh the lists first (a new machine may
    # have none, or old ones without the backports suite).
    apt-get update -qq
    if [ "$runsc_ok" -eq 0 ]; then
        apt-get install -y -qq -t bookworm-backports runsc
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get install -y -qq "${missing[@]}"
    fi
fi
if [ "$clamd_missing" -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends clamav-daemon
    # kiln runs clamd itself when it is asked to; the distribution's
    # services would only try to download signatures.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
    fi
fi

echo "install.sh: $(runsc --version | head -1); $(runc --version | head -1)"

cd "$(dirname "$0")/.."
cargo build --release --locked -p kiln
echo "install.sh: built $(pwd)/target/release/kiln"

# The default image `ubuntu-*` jobs run on: Debian trixie with the
# toolchains workflows expect (rustc/cargo with clippy and rustfmt, Python
# with venv/pip, Node.js/npm, git, build-essential, ...), made with
# mmdebstrap from the Debian archive. Built once: the same recipe is found
# in the store by its digest on a re-run.
./target/release/kiln image build kiln/runner --state-dir .kiln
