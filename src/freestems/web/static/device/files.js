// The exported network's file, fetched once per browser: kept in Cache Storage under its stable URL and
// sha256 (from the manifest), checked against both the size and the sha256 the manifest gives, whether it
// came from the server or from the cache. It is downloaded from its hash-named URL (the manifest's `url`:
// cached for good by the server's answer), and a new export's file replaces the old one in the cache.

export const CACHE_NAME = "freestems-device-models";

// "auto" takes the fp16-weights file (half the download) only where the export measured it this close to
// the fp32 one. onnxruntime-web's WASM kernels differ from the native runtime's by 78 dB (the tests' small
// model) to 93 dB (the release scnet) on one chunk, about 64 dB over a whole song with the small model; with
// fp16 weights 66 dB from fp32 the page stays 60 dB from the Python engine even then (the noises add).
export const FP16_AUTO_MIN_SNR_DB = 66;

/**
 * The file of `manifest` a page runs for `precision` ("auto", "fp16", "fp32" or "int8"): its entry. "auto"
 * never takes the int8 file (its LSTMs in 8 bits: faster, and further from the Python engine than the
 * page's 60 dB); asked for where the export has none, it is an error.
 */
export function chooseFile(manifest, precision) {
  const files = manifest.onnx.files;
  if (precision === "int8") {
    const int8 = files.find((entry) => entry.precision.startsWith("int8"));
    if (!int8) throw new Error("this model's export has no int8 file (freestems export --int8)");
    return int8;
  }
  const fp16 = files.find((entry) => entry.precision.startsWith("fp16"));
  const fp32 = files.find((entry) => entry.precision === "fp32");
  if (precision === "fp16" && fp16) return fp16;
  if (precision === "fp32" || !fp16) return fp32;
  return fp16.snr_db_vs_fp32 >= FP16_AUTO_MIN_SNR_DB ? fp16 : fp32;
}

/** Lowercase hex sha256 of an ArrayBuffer. */
export async function sha256(buffer) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function cacheKey(url, entry) {
  const key = new URL(url);
  key.searchParams.set("sha256", entry.sha256);
  return key.href;
}

async function openCache() {
  try {
    return typeof caches === "undefined" ? null : await caches.open(CACHE_NAME);
  } catch (ignored) {
    return null; // no Cache Storage here (an insecure origin, a private mode that refuses it): fetch each time
  }
}

async function verified(buffer, entry) {
  return buffer.byteLength === entry.bytes && (await sha256(buffer)) === entry.sha256;
}

/**
 * The bytes of `entry` ({file, bytes, sha256}, a manifest's file) at `url`, kept in Cache Storage as
 * `cacheAs` (the file's stable URL, so that one copy per file is kept whatever URL it came from);
 * `onProgress(received, total)` while it downloads. Resolves with {buffer, cached}: cached tells whether it
 * came from Cache Storage.
 */
export async function fetchModelFile(url, entry, { cacheAs = url, onProgress = null, signal = undefined } = {}) {
  const cache = await openCache();
  const key = cacheKey(cacheAs, entry);
  if (cache) {
    const hit = await cache.match(key);
    if (hit) {
      const buffer = await hit.arrayBuffer();
      if (await verified(buffer, entry)) return { buffer, cached: true };
      await cache.delete(key); // damaged: fetch it again
    }
  }
  // With Cache Storage the HTTP cache would hold a second copy; without it, the HTTP cache is the one kept.
  const response = await fetch(url, { signal, cache: cache ? "no-store" : "default" });
  if (!response.ok) throw new Error(`the model file ${entry.file} could not be downloaded (HTTP ${response.status})`);
  const buffer = await readAll(response, entry.bytes, onProgress);
  if (!(await verified(buffer, entry))) {
    throw new Error(`the model file ${entry.file} is not the one the manifest describes (size or sha256 differ)`);
  }
  if (cache) {
    for (const old of await cache.keys()) {
      const address = new URL(old.url);
      address.search = "";
      if (address.href === new URL(cacheAs).href && old.url !== key) await cache.delete(old);
    }
    try {
      await cache.put(key, new Response(buffer, { headers: { "Content-Type": "application/octet-stream" } }));
    } catch (ignored) {
      // over the storage quota: this run goes on, the next one downloads it again
    }
  }
  return { buffer, cached: false };
}

async function readAll(response, total, onProgress) {
  if (!response.body || !onProgress) return response.arrayBuffer();
  const reader = response.body.getReader();
  const parts = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes.buffer;
}

/** Whether `entry` (a manifest's file) is already kept in Cache Storage under `cacheAs` (not re-checked). */
export async function isKept(cacheAs, entry) {
  const cache = await openCache();
  return Boolean(cache && (await cache.match(cacheKey(cacheAs, entry))));
}
