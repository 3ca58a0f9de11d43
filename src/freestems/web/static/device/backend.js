// The runtimes of the device worker (worker.js): the two vendored builds of onnxruntime-web, loaded once
// each, and the choice of a backend: WebGPU only where the browser offers a (hardware) adapter and the
// network, on it, gives the export's probe its fingerprint (probe.js) within PROBE_MIN_SNR_DB; else WASM.
import { FP16_AUTO_MIN_SNR_DB } from "./files.js";
import { compareProbe, probeInput, readProbe } from "./probe.js";

const VENDOR = new URL("../../vendor/onnxruntime-web/", import.meta.url);
// Two builds of onnxruntime-web (scripts/fetch_web_deps.sh): a browser downloads the one it uses.
const BUILDS = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };
const runtimes = {};

/**
 * The WASM threads a device run gets: every core, at most 8 (onnxruntime-web splits a chunk evenly between
 * its threads at no extra CPU; its own default is half the cores); threads need SharedArrayBuffer, so one
 * where the page is not cross-origin isolated. The page's speed estimate counts the same.
 */
export function threadCount() {
  return self.crossOriginIsolated ? Math.max(1, Math.min(8, navigator.hardwareConcurrency || 1)) : 1;
}

/** The vendored build `build` ("wasm" or "webgpu") of onnxruntime-web, set up for this worker. */
export async function loadRuntime(build = "wasm") {
  if (runtimes[build]) return runtimes[build];
  let runtime;
  try {
    runtime = await import(new URL(BUILDS[build], VENDOR).href);
  } catch (error) {
    const what = `the in-browser runtime (onnxruntime-web${build === "wasm" ? "" : `, ${build}`})`;
    if (self.navigator.onLine === false) {
      // the page's service worker keeps what a visit used: offline, a build never used here is not there
      throw new Error(`${what} cannot be downloaded while this browser is offline (it was not kept from an earlier visit)`);
    }
    throw new Error(`${what} is not installed on this server (scripts/fetch_web_deps.sh)`);
  }
  runtime.env.wasm.wasmPaths = VENDOR.href;
  runtime.env.wasm.numThreads = threadCount();
  runtime.env.logLevel = "error";
  runtimes[build] = runtime;
  return runtime;
}

// WebGPU is used only if the network's output for the export's probe is this close to native ONNX Runtime's
// fp32 output (dB, every stem): the rule that admits the fp16 file on WASM, for the same reason (the page
// must stay 60 dB from the Python engine over a song; the probe measures the file and the backend together).
export const PROBE_MIN_SNR_DB = FP16_AUTO_MIN_SNR_DB;

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
export async function webgpuPlan(backend, manifest) {
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
 * the session released. `say(words)`: what it is doing, for the page.
 */
export async function tryWebGPU(buffer, manifest, say) {
  const probe = readProbe(manifest);
  say("Checking that the model runs faithfully on the GPU (WebGPU)…");
  let created = null;
  let runtime = null;
  try {
    runtime = await loadRuntime("webgpu");
    created = await runtime.InferenceSession.create(new Uint8Array(buffer), {
      executionProviders: ["webgpu"],
      graphOptimizationLevel: "all",
      // errors only: the frame axis's shape arithmetic runs on the CPU, which onnxruntime warns of at load
      logSeverityLevel: 3,
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
