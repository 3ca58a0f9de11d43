#!/usr/bin/env bash
# Installs everything freestems needs to run and to be tested, on a fresh machine.
# The CPU build of torch goes first: a plain `torch` requirement could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
