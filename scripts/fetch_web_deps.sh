#!/usr/bin/env bash
# Fetches the page's third-party runtime for separating on the device: onnxruntime-web, from the npm
# registry, into src/freestems/web/vendor/onnxruntime-web/ (gitignored, never committed; the service serves
# it under /vendor/). Only the files the page loads are kept, and the licence: two builds, each an ESM
# module with its WASM runtime (glue and binary), of which a browser downloads one:
#   - ort.wasm.min.mjs: the WASM backend alone (ort-wasm-simd-threaded.*), where WebGPU is not used;
#   - ort.webgpu.min.mjs: the WebGPU backend (the asyncify build, ort-wasm-simd-threaded.asyncify.*), where
#     the browser offers WebGPU; it runs the WASM backend too, when the network is not faithful on the GPU.
# Without them the page still works; separating on the device is then offered as unavailable.
#
#   scripts/fetch_web_deps.sh            # once, and again after changing ORT_WEB_VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_WEB_VERSION="1.31.1"
target="src/freestems/web/vendor/onnxruntime-web"
files=(
    ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
    ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm
)

present=1
for file in "${files[@]}"; do
    [ -f "$target/$file" ] || present=0
done
if [ "$present" = 1 ] && [ -f "$target/VERSION" ] && [ "$(cat "$target/VERSION")" = "$ORT_WEB_VERSION" ]; then
    exit 0  # already there
fi
if ! command -v npm >/dev/null; then
    echo "fetch_web_deps: npm is missing (apt-get install nodejs npm); separating on the device stays off" >&2
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm install --no-save --no-package-lock --ignore-scripts --no-audit --no-fund --silent \
    "onnxruntime-web@$ORT_WEB_VERSION" >/dev/null)
package="$work/node_modules/onnxruntime-web"
rm -rf "$target.tmp"
mkdir -p "$target.tmp"
for file in "${files[@]}"; do
    cp "$package/dist/$file" "$target.tmp/$file"
done
cp "$package/README.md" "$target.tmp/README.md"
license="$(node -e 'process.stdout.write(require(process.argv[1]).license)' "$package/package.json")"
if [ "$license" != "MIT" ]; then
    echo "fetch_web_deps: onnxruntime-web $ORT_WEB_VERSION says its licence is $license, not MIT: check it" >&2
    exit 1
fi
# The npm package names its licence (MIT) in package.json but ships no LICENSE file: this is ONNX Runtime's.
cat >"$target.tmp/LICENSE" <<'LICENSE'
onnxruntime-web (npm package, https://github.com/microsoft/onnxruntime), licence: MIT

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LICENSE
echo "$ORT_WEB_VERSION" >"$target.tmp/VERSION"
rm -rf "$target"
mv "$target.tmp" "$target"
echo "fetch_web_deps: onnxruntime-web $ORT_WEB_VERSION in $target"
