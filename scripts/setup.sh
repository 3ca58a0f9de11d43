#!/usr/bin/env bash
# Installs everything freestems needs to run and to be tested, on a fresh machine.
# The CPU build of torch goes first: a plain `torch` requirement could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# A real headless Chromium for the web page tests (Debian's; Playwright drives it, it never downloads one).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: /usr/bin/chromium is missing; install chromium and chromium-driver (the web tests skip)" >&2
    else
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
    fi
fi
# Node's npm fetches the page's in-browser runtime (onnxruntime-web) from the npm registry; without it the
# page works, but cannot separate on the visitor's device (the tests of that skip).
if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: npm is missing; install nodejs and npm (separating in the browser stays off)" >&2
    else
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
    fi
fi
if command -v npm >/dev/null; then
    ./scripts/fetch_web_deps.sh
fi
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
