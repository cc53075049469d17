#!/usr/bin/env bash
# Installs the servers the test suite runs on loopback (besides what
# install.sh installs), from the package registries, under /opt/kiln-test:
#
# - moto's S3-compatible server (PyPI `moto[server]`) and Azure's Python SDK
#   (PyPI `azure-storage-blob`, to create the test container), in a venv;
# - Microsoft's Azurite blob server (npm `azurite`).
#
# Tests find them there (or at $KILN_TEST_DEPS) and fail, naming this
# script, when they are missing. Safe to re-run: each step checks first.
set -euo pipefail

dir=${KILN_TEST_DEPS:-/opt/kiln-test}
mkdir -p "$dir"

if ! "$dir/py/bin/python" -c 'import moto.server, azure.storage.blob' 2>/dev/null; then
    echo "test-deps.sh: installing moto's S3 server and azure-storage-blob into $dir/py"
    python3 -m venv "$dir/py"
    "$dir/py/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' 'azure-storage-blob==12.*'
fi

if [ ! -x "$dir/azurite/node_modules/.bin/azurite-blob" ]; then
    echo "test-deps.sh: installing Azurite into $dir/azurite"
    mkdir -p "$dir/azurite"
    (cd "$dir/azurite" && npm install --no-audit --no-fund --silent 'azurite@3')
fi
echo "test-deps.sh: $("$dir/py/bin/pip" show moto | sed -n 's/^Version: /moto /p'), azurite $("$dir/azurite/node_modules/.bin/azurite-blob" --version 2>/dev/null || echo '?')"
