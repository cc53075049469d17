#!/usr/bin/env bash
# Installs what kiln needs on a Debian 12 (bookworm) machine, as root, and
# builds kiln. Safe to re-run: every step checks before it changes anything.
#
# - gVisor's runsc comes from bookworm-backports (the 2022 runsc in plain
#   bookworm breaks coreutils' ls/stat with EINVAL, so it is never used);
# - runc for the `container` tier;
# - e2fsprogs/util-linux for per-job workspace quotas (loop-mounted ext4);
# - git and python3 for the example pipeline and the tests.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sandboxes need cgroups and mounts)" >&2
    exit 1
fi

need_update=0
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install.sh: adding Debian bookworm-backports to apt's sources"
    cat > /etc/apt/sources.list.d/kiln-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
fi

runsc_ok=0
if command -v runsc >/dev/null 2>&1; then
    # Anything older than the backports build is the broken 2022 one.
    v=$(runsc --version 2>/dev/null | sed -n 's/^runsc version 0.0~\([0-9]*\).*/\1/p')
    if [ -n "$v" ] && [ "$v" -ge 20240101 ]; then runsc_ok=1; fi
fi
missing=()
for bin in runc mkfs.ext4 losetup git python3 bash; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done

if [ "$runsc_ok" -eq 0 ] || [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if [ "$need_update" -eq 1 ] || [ ! -d /var/lib/apt/lists ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || [ "$runsc_ok" -eq 0 ]; then
        apt-get update -qq
    fi
    if [ "$runsc_ok" -eq 0 ]; then
        apt-get install -y -qq -t bookworm-backports runsc
    fi
    apt-get install -y -qq runc e2fsprogs util-linux git python3 bash procps
fi

echo "install.sh: $(runsc --version | head -1); $(runc --version | head -1)"

cd "$(dirname "$0")/.."
cargo build --release --locked -p kiln
echo "install.sh: built $(pwd)/target/release/kiln"
