// Separating on the visitor's device, the page's side: whether it can (the runtime on the server, the model
// exported, the browser's parts), the song decoded by the browser at the model's rate, the engine's worker
// (device/worker.js) started and followed, its finished blocks handed on as they come (put together into whole
// stems only when asked: tests). Nothing is uploaded: the only requests are for the manifest, the network
// (once; then Cache Storage) and the runtime.

import { chooseFile, isKept } from "./device/files.js";

export const SAMPLE_RATE = 44100;
const VENDOR = new URL("../vendor/onnxruntime-web/", import.meta.url);

/** The URL of the manifest of served model `name`'s export. */
export function manifestUrl(name) {
  return new URL(`../models/${encodeURIComponent(name)}/device/manifest.json`, import.meta.url).href;
}

/**
 * The smallest module that uses WebAssembly SIMD (a function returning i8x16.popcnt of a splat): the one
 * onnxruntime-web build the page ships needs SIMD, so a browser without it is told before any download.
 */
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

/**
 * Whether this page can separate on the device: resolves with "" or the reason it cannot, in words.
 * `deviceModels`: the served models with an export (GET /config's `device_models`).
 */
export async function deviceSupport(deviceModels) {
  if (typeof WebAssembly !== "object" || typeof Worker !== "function") return "this browser cannot run the model (no WebAssembly or Web Workers)";
  if (typeof OfflineAudioContext !== "function") return "this browser cannot decode songs for the model (no Web Audio)";
  if (!WebAssembly.validate(SIMD_PROBE)) return "this browser cannot run the model (no WebAssembly SIMD, which the runtime needs)";
  if (!Array.isArray(deviceModels) || !deviceModels.length) return "this server offers no model that runs in the browser";
  try {
    const response = await fetch(new URL("ort.wasm.min.mjs", VENDOR)); // a GET: the offline copy answers it too
    if (!response.ok) return "this server does not have the in-browser runtime installed";
  } catch (ignored) {
    return "the in-browser runtime could not be reached";
  }
  return "";
}

/**
 * What the page tells before a device run of served model `name`: {bytes, fp32Bytes, stems, kept} (the file
 * the worker would download, with "auto" precision; the fp32 network's size, for the speed estimate; the
 * stems; whether that file is already in this browser), or null when the manifest cannot be read.
 */
export async function modelFacts(name) {
  try {
    const url = manifestUrl(name);
    const response = await fetch(url, { cache: "no-cache" });
    if (!response.ok) return null;
    const manifest = await response.json();
    const entry = chooseFile(manifest, "auto");
    const fp32 = chooseFile(manifest, "fp32");
    const kept = await isKept(new URL(entry.file, url).href, entry);
    return { bytes: entry.bytes, fp32Bytes: fp32.bytes, stems: manifest.model.stems.length, kept };
  } catch (ignored) {
    return null; // offline with no copy, or not a manifest: the page says less
  }
}

/** The song decoded by the browser and resampled to 44.1 kHz: {channels: [Float32Array, ...], length}. */
export async function decodeSong(file) {
  const bytes = await file.arrayBuffer();
  const context = new OfflineAudioContext(2, 1, SAMPLE_RATE);
  let buffer;
  try {
    buffer = await context.decodeAudioData(bytes);
  } catch (error) {
    throw new Error("this browser cannot decode this file; choose another one, or separate it on our server");
  }
  if (buffer.numberOfChannels > 2) {
    // More than stereo: the browser's own down-mix to two channels (the speakers' rules).
    const mixdown = new OfflineAudioContext(2, buffer.length, SAMPLE_RATE);
    const source = mixdown.createBufferSource();
    source.buffer = buffer;
    source.connect(mixdown.destination);
    source.start();
    buffer = await mixdown.startRendering();
  }
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c += 1) channels.push(buffer.getChannelData(c).slice());
  return { channels, length: buffer.length };
}

/**
 * Separates `channels` (44.1 kHz) with served model `model` on this device; `twoStems`: null, or a stem
 * (then that stem and "no_<stem>", the mix minus it). `backend`: "auto" (WebGPU where a hardware adapter
 * runs the network faithfully, else WASM), "wasm" or "webgpu" (any adapter, a software one too; still only
 * if faithful). `on(message)` hears the worker's status, download and progress messages and each block as
 * it is finished; `signal` stops it. `channels` go to the worker (the caller's arrays are emptied: the page
 * holds no copy of the song) unless `keep`, which also puts the blocks together into whole stems (tests
 * compare them). Resolves with {stems: {name: [Float32Array per channel]} with `keep`, else null; names,
 * length, info} (info: the worker's "done" message: timings, whether the network came from Cache Storage,
 * the threads, the backend and why, the probe's dB).
 */
export function separateOnDevice({ model, channels, precision = "auto", overlap = null, twoStems = null, backend = "auto", keep = false, on = () => {}, signal }) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(new DOMException("cancelled", "AbortError"));
      return;
    }
    const worker = new Worker(new URL("./device/worker.js", import.meta.url), { type: "module", name: "freestems-device" });
    const length = channels[0].length;
    let outputs = null;
    const stop = () => {
      worker.terminate();
      reject(new DOMException("cancelled", "AbortError"));
    };
    if (signal) signal.addEventListener("abort", stop, { once: true });
    const finish = () => signal && signal.removeEventListener("abort", stop);
    worker.onerror = (event) => {
      finish();
      worker.terminate();
      reject(new Error(event.message || "the separation stopped in the browser"));
    };
    worker.onmessage = (event) => {
      const message = event.data;
      if (message.type === "block" && keep && !message.provisional) {
        // A provisional block (the short first chunk's) is only heard: the stems are made of whole chunks.
        if (!outputs) outputs = message.stems.map((stem) => stem.map(() => new Float32Array(length)));
        message.stems.forEach((stem, s) => stem.forEach((part, c) => outputs[s][c].set(part, message.from)));
      } else if (message.type === "done") {
        finish();
        worker.terminate();
        const stems = keep ? Object.fromEntries(message.stems.map((name, s) => [name, outputs ? outputs[s] : []])) : null;
        resolve({ stems, names: message.stems, length, info: message });
        return;
      } else if (message.type === "error") {
        finish();
        worker.terminate();
        reject(new Error(message.message));
        return;
      }
      on(message);
    };
    const sent = keep ? channels.map((channel) => channel.slice()) : channels;
    const transfer = [...new Set(sent.map((channel) => channel.buffer))];
    worker.postMessage({ type: "separate", manifestUrl: manifestUrl(model), channels: sent, precision, overlap, twoStems, backend }, transfer);
  });
}

/**
 * Registers the page's service worker (/sw.js: the page and separating on the device work offline) and
 * tells it what this page loaded before it was controlled. Resolves with true once it controls the page.
 */
export async function keepOffline() {
  if (!("serviceWorker" in navigator)) return false;
  const registration = await navigator.serviceWorker.register(new URL("../sw.js", import.meta.url));
  await navigator.serviceWorker.ready;
  const page = new URL("..", import.meta.url).href;
  const manifest = document.querySelector('link[rel="manifest"]'); // the installed app's (the browser fetched it)
  const urls = [page, ...(manifest ? [manifest.href] : []), ...performance.getEntriesByType("resource").map((entry) => entry.name)];
  (registration.active || navigator.serviceWorker.controller).postMessage({ type: "keep", urls });
  return true;
}
