// A/B of onnxruntime-web's session options and of the export's files, in Node.js, on the vendored runtime
// the page's worker uses (WASM). Comparing two runs of the page on a shared machine says little; here every
// (file, options) pair has its own session in one process, and the rounds alternate between them, so a
// change in the machine's load falls on all of them alike. It times one chunk's network (the worker's
// `session.run`), wall and CPU seconds (the process's, every WASM thread included), and checks that every
// pair gives the first pair's output.
//
// usage: node bench/ort_options.mjs THREADS ROUNDS CASES.json
//   CASES.json: [{"name": "...", "file": "path/network.fp32.onnx", "options": {session options},
//                 "frames": N (optional: a file with a dynamic frame axis run on N frames, e.g. the
//                 manifest's first_chunk.frames; default the manifest's stft.frames),
//                 "build": "ort.webgpu.min.mjs" (optional: which vendored build runs it, by default the
//                 worker's WASM one, ort.wasm.min.mjs; each build is loaded once, with its own settings)}, ...]
// Outputs are compared between the cases of the same frame count.
// The files come from `freestems export` (bench/bench_browser.py exports the release scnet with seeded
// weights). THREADS is `ort.env.wasm.numThreads`, fixed for the process: compare thread counts by running
// this once per count, alternately.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const VENDOR = path.join(here, "..", "src", "freestems", "web", "vendor", "onnxruntime-web") + path.sep;
const [threads, rounds, casesFile] = process.argv.slice(2);
const builds = new Map();

/** The vendored onnxruntime-web build `name`, loaded once and set up as the worker sets it up. */
async function build(name = "ort.wasm.min.mjs") {
  if (!builds.has(name)) {
    const runtime = await import(path.join(VENDOR, name));
    runtime.env.wasm.numThreads = Number(threads);
    runtime.env.wasm.wasmPaths = VENDOR;
    runtime.env.logLevel = "error";
    builds.set(name, runtime);
  }
  return builds.get(name);
}
const cases = JSON.parse(fs.readFileSync(casesFile, "utf8"));

/** A seeded standard-normal spectrogram of the manifest's input shape (the time does not depend on it). */
function probe(shape) {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  let state = 12345;
  const uniform = () => ((state = (state * 1103515245 + 12345) >>> 0) + 1) / 4294967297;
  for (let i = 0; i < data.length; i += 1) {
    data[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  }
  return data;
}

const manifest = JSON.parse(fs.readFileSync(path.join(path.dirname(cases[0].file), "manifest.json"), "utf8"));
const { input, output } = manifest.tensors;
const probes = new Map(); // frame count -> the input of that many frames
for (const entry of cases) {
  const frames = entry.frames ?? manifest.stft.frames;
  entry.shape = input.shape.map((dim) => (dim === "frames" ? frames : dim));
  if (!probes.has(frames)) probes.set(frames, probe(entry.shape));
  entry.data = probes.get(frames);
  entry.ort = await build(entry.build);
  const started = performance.now();
  entry.session = await entry.ort.InferenceSession.create(fs.readFileSync(entry.file), {
    executionProviders: ["wasm"],
    ...entry.options,
  });
  entry.load_s = (performance.now() - started) / 1000;
  entry.runs = [];
}
const references = new Map(); // input -> the first case's output for it
for (let round = 0; round < Number(rounds); round += 1) {
  for (const entry of cases) {
    const cpu = process.cpuUsage();
    const started = performance.now();
    const feeds = { [input.name]: new entry.ort.Tensor("float32", entry.data, entry.shape) };
    const results = await entry.session.run(feeds);
    const wall = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    const out = results[output.name].data;
    if (!references.has(entry.data)) references.set(entry.data, out.slice());
    const reference = references.get(entry.data);
    let diff = 0;
    for (let i = 0; i < out.length; i += 1) diff = Math.max(diff, Math.abs(out[i] - reference[i]));
    entry.runs.push({ wall_s: +wall.toFixed(2), cpu_s: +((used.user + used.system) / 1e6).toFixed(2), diff });
    console.error(`round ${round} ${entry.name}: ${wall.toFixed(2)} s wall, ${entry.runs.at(-1).cpu_s} s CPU`);
  }
}
const median = (values) => values.toSorted((a, b) => a - b)[Math.floor(values.length / 2)];
const summary = cases.map(({ name, shape, build: used = "ort.wasm.min.mjs", load_s, runs }) => ({
  name,
  frames: shape.at(-1),
  build: used,
  threads: Number(threads),
  load_s: +load_s.toFixed(2),
  median_wall_s: median(runs.map((run) => run.wall_s)),
  median_cpu_s: median(runs.map((run) => run.cpu_s)),
  max_abs_diff: Math.max(...runs.map((run) => run.diff)),
  runs: runs.map((run) => `${run.wall_s}w/${run.cpu_s}c`),
}));
console.log(JSON.stringify(summary));
process.exit(0);
