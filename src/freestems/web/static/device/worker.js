// The engine of separating on the device, in a Web Worker: the network of `freestems export` run by
// onnxruntime-web (WebGPU where the browser offers it and the network runs faithfully there, else WASM on
// several threads when the page is crossOriginIsolated), and around it what freestems.engine does, as the
// export's manifest says: whole-track normalisation, chunks of the model's segment stepping by the engine's
// stride, the STFT and its inverse, the trapezoid overlap-add.
//
// Messages in:  {type: "separate", manifestUrl, channels: [Float32Array, ...] (44.1 kHz), precision, overlap,
//               backend: "auto" | "wasm" | "webgpu"}
// Messages out: {type: "status", stage, words}, {type: "download", received, total},
//               {type: "progress", done, total}, {type: "block", from, to, names, stems: [[Float32Array per
//               channel] per stem]} (the finished samples [from, to) of every stem, `names` their names),
//               {type: "done", stems, length, timings, cached, threads, file, url, backend, backend_why,
//               adapter, probe}, {type: "error", message}.
// The page ends a separation by terminating the worker.
import { checkManifest, chunkStarts, ChunkSTFT, mixStats, overlapWindow, stride } from "./dsp.js";
import { fetchModelFile } from "./files.js";
import { compareProbe, probeInput, readProbe } from "./probe.js";

const VENDOR = new URL("../../vendor/onnxruntime-web/", import.meta.url);
// Two builds of onnxruntime-web (scripts/fetch_web_deps.sh): a browser downloads the one it uses.
const BUILDS = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };
const runtimes = {};
let ort = null; // the build of the session in use (a tensor must come from its session's build)
let session = null; // {key, session, runtime, facts}: kept for the next separation of this worker

async function loadRuntime(build = "wasm") {
  if (runtimes[build]) return runtimes[build];
  let runtime;
  try {
    runtime = await import(new URL(BUILDS[build], VENDOR).href);
  } catch (error) {
    throw new Error(
      `the in-browser runtime (onnxruntime-web${build === "wasm" ? "" : `, ${build}`}) is not installed on this server (scripts/fetch_web_deps.sh)`,
    );
  }
  runtime.env.wasm.wasmPaths = VENDOR.href;
  // Every core: onnxruntime-web splits a chunk evenly between its threads at no extra CPU (its own default
  // is half the cores); threads need SharedArrayBuffer, so one where the page is not isolated.
  runtime.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(8, navigator.hardwareConcurrency || 1)) : 1;
  runtime.env.logLevel = "error";
  runtimes[build] = runtime;
  return runtime;
}

// "auto" takes the fp16-weights file (half the download) only where the export measured it this close to
// the fp32 one. onnxruntime-web's WASM kernels differ from the native runtime's by 78 dB (the tests' small
// model) to 93 dB (the release scnet) on one chunk, about 64 dB over a whole song with the small model; with
// fp16 weights 66 dB from fp32 the page stays 60 dB from the Python engine even then (the noises add).
const FP16_AUTO_MIN_SNR_DB = 66;

function chooseFile(manifest, precision) {
  const files = manifest.onnx.files;
  const fp16 = files.find((entry) => entry.precision.startsWith("fp16"));
  const fp32 = files.find((entry) => entry.precision === "fp32");
  if (precision === "fp16" && fp16) return fp16;
  if (precision === "fp32" || !fp16) return fp32;
  return fp16.snr_db_vs_fp32 >= FP16_AUTO_MIN_SNR_DB ? fp16 : fp32;
}

// WebGPU is used only if the network's output for the export's probe is this close to native ONNX Runtime's
// fp32 output (dB, every stem): the rule that admits the fp16 file on WASM, for the same reason (the page
// must stay 60 dB from the Python engine over a song; the probe measures the file and the backend together).
const PROBE_MIN_SNR_DB = FP16_AUTO_MIN_SNR_DB;

/** "vendor architecture (description)" of a WebGPU adapter's info, for the log. */
function describeAdapter(info) {
  const words = [info.vendor, info.architecture].filter(Boolean).join(" ") || "unknown";
  return info.description ? `${words} (${info.description})` : words;
}

/**
 * Whether to try WebGPU for `backend` ("auto", "wasm" or "webgpu"): {adapter} (its words) or {why} not.
 * "auto" tries it where navigator.gpu gives an adapter that is not a fallback (software) one, which would be
 * slower than WASM; "webgpu" takes any adapter. Either needs the export's probe.
 */
async function webgpuPlan(backend, manifest) {
  if (backend === "wasm") return { why: "WASM was asked for" };
  if (!self.navigator.gpu) return { why: "this browser offers no WebGPU" };
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (ignored) {
    // as no adapter
  }
  if (!adapter) return { why: "this browser offers no WebGPU adapter" };
  const info = adapter.info || {};
  const words = describeAdapter(info);
  if ((info.isFallbackAdapter ?? adapter.isFallbackAdapter) && backend !== "webgpu") {
    return { why: `the only WebGPU adapter is a software one (${words}), slower than WASM` };
  }
  if (!readProbe(manifest)) return { why: "the export has no faithfulness probe (export the model again)" };
  return { adapter: words };
}

/**
 * A WebGPU session of the network in `buffer`, if its output for the probe passes: {session, runtime,
 * probe}; else {why, probe, runtime} (probe: the measured dB, or null where it could not run; runtime: the
 * WebGPU build where it loaded, whose WASM backend is as fast as the WASM build's and already downloaded),
 * the session released.
 */
async function tryWebGPU(buffer, manifest) {
  const probe = readProbe(manifest);
  post({ type: "status", stage: "backend", words: "Checking that the model runs faithfully on the GPU (WebGPU)…" });
  let created = null;
  let runtime = null;
  try {
    runtime = await loadRuntime("webgpu");
    created = await runtime.InferenceSession.create(new Uint8Array(buffer), {
      executionProviders: ["webgpu"],
      graphOptimizationLevel: "all",
    });
    const { input, output } = manifest.tensors;
    const feeds = { [input.name]: new runtime.Tensor("float32", probeInput(probe), probe.input.shape) };
    const result = (await created.run(feeds))[output.name];
    const measured = compareProbe(probe, result.data);
    if (typeof result.dispose === "function") result.dispose();
    const passed = measured.db >= PROBE_MIN_SNR_DB;
    const facts = { ...measured, min_db: PROBE_MIN_SNR_DB, passed };
    if (passed) return { session: created, runtime, probe: facts };
    await created.release();
    return { why: `its output for the probe is ${measured.db} dB from the export's, under ${PROBE_MIN_SNR_DB} dB`, probe: facts, runtime };
  } catch (error) {
    if (created) await created.release().catch(() => {});
    return { why: `it failed: ${error && error.message ? error.message : error}`, probe: null, runtime };
  }
}

async function openSession(manifest, manifestUrl, precision, backend = "auto") {
  const entry = chooseFile(manifest, precision);
  const key = `${manifestUrl}#${entry.sha256}#${backend}`;
  if (session && session.key === key) {
    ort = session.runtime;
    return { ...session.facts, session: session.session, cached: true, entry };
  }
  const plan = await webgpuPlan(backend, manifest);
  post({ type: "status", stage: "model", words: "Loading the model…" });
  // The hash-named URL where the server gives one (cached for good), else the file beside the manifest.
  const stable = new URL(entry.file, manifestUrl).href;
  const { buffer, cached } = await fetchModelFile(new URL(entry.url || entry.file, manifestUrl).href, entry, {
    cacheAs: stable,
    onProgress: (received, total) => post({ type: "download", received, total }),
  });
  post({ type: "status", stage: "runtime", words: "Starting the model…" });
  let facts = { backend: "wasm", backend_why: plan.why || "", adapter: plan.adapter || null, probe: null };
  let created = null;
  let runtime = null;
  if (plan.adapter) {
    const tried = await tryWebGPU(buffer, manifest);
    facts = { ...facts, probe: tried.probe };
    if (tried.session) {
      ({ session: created, runtime } = tried);
      facts.backend = "webgpu";
      post({ type: "status", stage: "backend", words: `Separating with WebGPU (${plan.adapter}): the probe was ${tried.probe.db} dB from the export's.` });
    } else {
      runtime = tried.runtime; // its WASM backend: no second download
      facts.backend_why = `WebGPU (${plan.adapter}) is not used: ${tried.why}`;
      post({ type: "status", stage: "backend", words: `${facts.backend_why}; separating with WASM…` });
    }
  }
  if (!created) {
    runtime = runtime || (await loadRuntime("wasm"));
    // bench/ort_options.mjs measured the other options (arena, memory pattern, parallel execution) and the
    // fp16 file's time: none is faster than these (docs/browser.md, "Speed").
    created = await runtime.InferenceSession.create(new Uint8Array(buffer), {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
  }
  ort = runtime;
  session = { key, session: created, runtime, facts };
  return { ...facts, session: created, cached, entry };
}

function post(message, transfer = []) {
  self.postMessage(message, transfer);
}

async function separate({ manifestUrl, channels, precision = "auto", overlap = null, backend = "auto" }) {
  const started = performance.now();
  if (!["auto", "wasm", "webgpu"].includes(backend)) throw new Error(`unknown backend ${backend} (auto, wasm or webgpu)`);
  const response = await fetch(manifestUrl, { cache: "no-cache" });
  if (!response.ok) throw new Error(`this model cannot be run in the browser here (HTTP ${response.status})`);
  const manifest = await response.json();
  checkManifest(manifest);
  await loadRuntime(); // before the download: a server without the runtime says so at once
  const opened = await openSession(manifest, manifestUrl, precision, backend);
  const { session: network, cached, entry } = opened;
  const loaded = performance.now();

  const { chunking, tensors } = manifest;
  const audioChannels = manifest.model.audio_channels;
  const stems = manifest.model.stems;
  const segment = chunking.segment;
  const useOverlap = overlap ?? chunking.overlap;
  const step = stride(segment, useOverlap);
  const length = channels[0].length;
  const input = channels.length === audioChannels ? channels : fit(channels, audioChannels);
  const stats = manifest.normalization.whole_track.enabled ? mixStats(input) : { mean: 0, std: 1 };
  const normalised = input.map((channel) => {
    const out = new Float32Array(channel.length);
    for (let i = 0; i < channel.length; i += 1) out[i] = (channel[i] - stats.mean) / stats.std;
    return out;
  });
  const weights = overlapWindow(segment, useOverlap);
  const starts = chunkStarts(length, segment, useOverlap);
  const stft = new ChunkSTFT(manifest);
  const shape = tensors.input.shape;
  // Weighted sums of the chunks' outputs and of their weights from `emitted` on (a chunk's length).
  const sums = stems.map(() => input.map(() => new Float64Array(segment)));
  const total = new Float64Array(segment);
  let emitted = 0;
  let firstBlock = null;
  post({ type: "progress", done: 0, total: starts.length });
  for (const [index, start] of starts.entries()) {
    const chunk = normalised.map((channel) => {
      const part = new Float32Array(segment); // zeros past the end
      part.set(channel.subarray(start, Math.min(start + segment, length)));
      return part;
    });
    const planes = stft.forward(chunk);
    const feeds = { [tensors.input.name]: new ort.Tensor("float32", planes, shape) };
    const results = await network.run(feeds);
    const output = results[tensors.output.name];
    const data = output.data;
    const perStem = data.length / stems.length;
    const at = start - emitted;
    for (let s = 0; s < stems.length; s += 1) {
      const waves = stft.inverse(data, s * perStem);
      for (let c = 0; c < audioChannels; c += 1) {
        const sum = sums[s][c];
        const wave = waves[c];
        for (let i = 0; i < segment - at; i += 1) sum[at + i] += wave[i] * weights[i];
      }
    }
    for (let i = 0; i < segment - at; i += 1) total[at + i] += weights[i];
    if (typeof output.dispose === "function") output.dispose();
    // Everything before the next chunk's start is final.
    const last = index === starts.length - 1;
    const upto = last ? length : Math.min(starts[index + 1], length);
    emit(upto - emitted);
    post({ type: "progress", done: index + 1, total: starts.length });
    if (firstBlock === null) firstBlock = performance.now();
  }

  function emit(count) {
    if (count <= 0) return;
    const block = sums.map((channelsOfStem) =>
      channelsOfStem.map((sum) => {
        const out = new Float32Array(count);
        for (let i = 0; i < count; i += 1) out[i] = (sum[i] / total[i]) * stats.std + stats.mean;
        sum.copyWithin(0, count);
        sum.fill(0, segment - count);
        return out;
      }),
    );
    total.copyWithin(0, count);
    total.fill(0, segment - count);
    post({ type: "block", from: emitted, to: emitted + count, names: stems, stems: block }, block.flat().map((part) => part.buffer));
    emitted += count;
  }

  const finished = performance.now();
  post({
    type: "done",
    stems,
    length,
    cached,
    file: entry.file,
    url: new URL(entry.url || entry.file, manifestUrl).href,
    threads: ort.env.wasm.numThreads,
    backend: opened.backend,
    backend_why: opened.backend_why,
    adapter: opened.adapter,
    probe: opened.probe,
    stride: step,
    chunks: starts.length,
    timings: {
      load_s: (loaded - started) / 1000,
      first_block_s: ((firstBlock ?? finished) - started) / 1000,
      whole_s: (finished - started) / 1000,
    },
  });
}

/** `channels` made `count` channels: mono duplicated (as the engine does), else the first `count`. */
function fit(channels, count) {
  if (channels.length === 1) return Array.from({ length: count }, () => channels[0]);
  return channels.slice(0, count);
}

self.onmessage = async (event) => {
  const message = event.data;
  if (!message || message.type !== "separate") return;
  try {
    await separate(message);
  } catch (error) {
    post({ type: "error", message: error && error.message ? error.message : String(error) });
  }
};
