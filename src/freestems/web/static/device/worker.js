// The engine of separating on the device, in a Web Worker: the network of `freestems export` run by
// onnxruntime-web (WebGPU where the browser offers it and the network runs faithfully there, else WASM on
// several threads when the page is crossOriginIsolated), and around it what freestems.engine does, as the
// export's manifest says: whole-track normalisation, chunks of the model's segment stepping by the engine's
// stride, the STFT and its inverse, the trapezoid overlap-add, two-stem mode. The song is held once (the page
// transfers it): each chunk is normalised as it is cut, and the blocks posted are transferred, not kept.
//
// For a first sound sooner, where the export allows it (its frame axis is dynamic), the network first runs
// on the song's first few seconds alone (the manifest's `chunking.first_chunk`): that block is provisional,
// to be heard while the first whole chunk is separated and then replaced by it; it is never in the stems.
//
// Messages in:  {type: "separate", manifestUrl, channels: [Float32Array, ...] (44.1 kHz), precision, overlap,
//               twoStems, firstChunk, backend} (twoStems: null, or a stem: then only it and "no_<stem>", the
//               mix minus it; firstChunk, default true: the short first chunk where the export offers one;
//               backend: "auto" | "wasm" | "webgpu")
// Messages out: {type: "status", stage, words}, {type: "download", received, total},
//               {type: "progress", done, total}, {type: "block", from, to, names, stems: [[Float32Array per
//               channel] per stem], provisional} (the finished samples [from, to) of every stem, `names`
//               their names; `provisional`: the short first chunk's, replaced by the next block),
//               {type: "done", stems, length, timings, cached, threads, file, url, backend, backend_why,
//               adapter, probe} (stems: the names), {type: "error", message}.
// The page ends a separation by terminating the worker.
import { checkManifest, chunkStarts, ChunkSTFT, firstChunk, inputShape, mixStats, overlapWindow, stride } from "./dsp.js";
import { loadRuntime, tryWebGPU, webgpuPlan } from "./backend.js";
import { chooseFile, fetchModelFile } from "./files.js";

let ort = null; // the build of the session in use (a tensor must come from its session's build)
let session = null; // {key, session, runtime, facts}: kept for the next separation of this worker

async function openSession(manifest, manifestUrl, precision, backend = "auto") {
  const entry = chooseFile(manifest, precision);
  const key = `${manifestUrl}#${entry.sha256}#${backend}`;
  if (session && session.key === key) {
    ort = session.runtime;
    return { ...session.facts, session: session.session, cached: true, entry };
  }
  // The int8 file's quantised LSTMs are kernels of onnxruntime's CPU backend only.
  const int8 = entry.precision.startsWith("int8");
  const plan = int8 ? { why: "the int8 file runs on WASM only" } : await webgpuPlan(backend, manifest);
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
    const tried = await tryWebGPU(buffer, manifest, (words) => post({ type: "status", stage: "backend", words }));
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

async function separate({ manifestUrl, channels, precision = "auto", overlap = null, twoStems = null, firstChunk: early = true, backend = "auto" }) {
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
  if (twoStems !== null && !stems.includes(twoStems)) throw new Error(`this model has no stem "${twoStems}" (it has ${stems.join(", ")})`);
  const kept = twoStems === null ? stems.map((name, s) => s) : [stems.indexOf(twoStems)]; // the stems computed
  const names = twoStems === null ? stems : [twoStems, `no_${twoStems}`];
  const segment = chunking.segment;
  const useOverlap = overlap ?? chunking.overlap;
  const step = stride(segment, useOverlap);
  const length = channels[0].length;
  const input = channels.length === audioChannels ? channels : fit(channels, audioChannels);
  const stats = manifest.normalization.whole_track.enabled ? mixStats(input) : { mean: 0, std: 1 };
  const weights = overlapWindow(segment, useOverlap);
  const starts = chunkStarts(length, segment, useOverlap);
  const stft = new ChunkSTFT(manifest);
  /** The song's samples [start, start + size) normalised, zeros past its end, channel by channel. */
  const cut = (start, size) =>
    input.map((channel) => {
      const part = new Float32Array(size);
      const end = Math.min(start + size, length);
      for (let i = start; i < end; i += 1) part[i - start] = (channel[i] - stats.mean) / stats.std;
      return part;
    });
  /** The network's output for the chunk at `start` (`chunkStft`: its length's STFT). */
  const run = async (chunkStft, start) => {
    const planes = chunkStft.forward(cut(start, chunkStft.segment));
    const shape = inputShape(manifest, chunkStft.frames);
    const results = await network.run({ [tensors.input.name]: new ort.Tensor("float32", planes, shape) });
    return results[tensors.output.name];
  };
  // Weighted sums of the chunks' outputs and of their weights from `emitted` on (a chunk's length).
  const sums = kept.map(() => input.map(() => new Float64Array(segment)));
  const total = new Float64Array(segment);
  let emitted = 0;
  let firstBlock = null;
  let firstSound = null;
  post({ type: "progress", done: 0, total: starts.length });
  const short = early ? firstChunk(manifest) : null;
  if (short) {
    await provisional(new ChunkSTFT(manifest, short));
    firstSound = performance.now();
  }
  for (const [index, start] of starts.entries()) {
    const output = await run(stft, start);
    const data = output.data;
    const perStem = data.length / stems.length;
    const at = start - emitted;
    for (const [k, s] of kept.entries()) {
      const waves = stft.inverse(data, s * perStem);
      for (let c = 0; c < audioChannels; c += 1) {
        const sum = sums[k][c];
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

  /** The short first chunk's output, posted as a provisional block: heard until the first block comes. */
  async function provisional(chunkStft) {
    const output = await run(chunkStft, 0);
    // Within the first block (which replaces it), however high the overlap.
    const count = Math.min(chunkStft.segment, length, starts.length > 1 ? starts[1] : length);
    const perStem = output.data.length / stems.length;
    const block = kept.map((s) =>
      chunkStft.inverse(output.data, s * perStem).map((wave) => {
        const out = new Float32Array(count);
        for (let i = 0; i < count; i += 1) out[i] = wave[i] * stats.std + stats.mean;
        return out;
      }),
    );
    if (typeof output.dispose === "function") output.dispose();
    if (twoStems !== null) block.push(block[0].map((stem, c) => rest(input[c], stem, 0)));
    post({ type: "block", from: 0, to: count, names, stems: block, provisional: true }, block.flat().map((part) => part.buffer));
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
    if (twoStems !== null) block.push(block[0].map((stem, c) => rest(input[c], stem, emitted))); // the engine's
    post({ type: "block", from: emitted, to: emitted + count, names, stems: block }, block.flat().map((part) => part.buffer));
    emitted += count;
  }

  const finished = performance.now();
  post({
    type: "done",
    stems: names,
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
      first_sound_s: ((firstSound ?? firstBlock ?? finished) - started) / 1000,
      first_block_s: ((firstBlock ?? finished) - started) / 1000,
      whole_s: (finished - started) / 1000,
    },
  });
}

/** The mix minus `stem` (a block of it from `from`): two-stem mode's second stem, as the engine's. */
function rest(mix, stem, from) {
  const out = new Float32Array(stem.length);
  for (let i = 0; i < stem.length; i += 1) out[i] = mix[from + i] - stem[i];
  return out;
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
