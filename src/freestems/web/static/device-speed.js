// Whether this device can keep up with the music when it separates on its own, for the default of "Where to
// separate" (device-run.js): the device where it keeps up, else our server. Measured where it can be: every
// device run remembers its speed in this browser (localStorage), per model. Before the first one, a short probe
// (the page's own FFT, about a tenth of a second) is compared with the same probe on the development machine,
// where separating took what NETWORK_REF_S and AROUND_REF_S say: an estimate, said as one.
// Memory: a song of this length must fit (navigator.deviceMemory, where the browser tells it).
import { threadCount } from "./device/backend.js";
import { FFT } from "./device/dsp.js";

const KEY = "freestems.device.speed";
const PROBE_SIZE = 4096;
const PROBE_ROUNDS = 200; // FFTs per timing (about 30 ms on the development machine)
const PROBE_REF_MS = 22; // the probe's time on the development machine (its best, Chromium 156, x86_64)
// There, per second of music: the network of the release scnet (one chunk, 19.3 s on one WASM thread, adds
// 8.25 s at the default overlap; other exports scaled by their fp32 file's size), and the page's own work
// around it (the STFT and its inverses in JavaScript, the overlap-add: 0.24 s, fitted to the tests' small
// model, whose network is a hundredth of that size, at 2.1 s of music per second).
const NETWORK_REF_S = 19.3 / 8.25;
const BYTES_REF = 42.5e6;
const AROUND_REF_S = 0.24;
const THREAD_GAIN = 0.75; // what each thread after the first adds to the network (it splits chunks evenly)
// Memory, fitted to bench/bench_device_memory.py's 10-minute peaks (2678 MB with four stems, 1691 with two):
// the page and the runtime, the song's floats, and per stem its floats (21 MB a minute), its WAV file (11)
// and what the end's joining and the runtime's buffers add.
const MB_BASE = 700;
const MB_PER_MINUTE = 21;
const MB_PER_MINUTE_STEM = 45;

/** The probe: milliseconds of PROBE_ROUNDS FFTs of PROBE_SIZE points, the best of `tries`. */
export function probeMs(tries = 3) {
  const fft = new FFT(PROBE_SIZE);
  const re = new Float64Array(PROBE_SIZE);
  const im = new Float64Array(PROBE_SIZE);
  let best = Infinity;
  for (let t = 0; t < tries; t += 1) {
    for (let i = 0; i < PROBE_SIZE; i += 1) re[i] = Math.sin(i * 0.37) + (i % 7) * 0.01;
    im.fill(0);
    const started = performance.now();
    for (let r = 0; r < PROBE_ROUNDS; r += 1) fft.run(re, im, r % 2 === 1);
    best = Math.min(best, performance.now() - started);
  }
  return best;
}

function remembered() {
  try {
    return JSON.parse(localStorage.getItem(KEY) || "{}") || {};
  } catch (ignored) {
    return {}; // no storage, or not ours
  }
}

/**
 * Remembers how fast a device run of `model` went: `info` is the worker's "done" message; `seconds` the
 * song's. The audio made per second of work, from the first block to the end (the download and the
 * runtime's start are once per page, not per minute of music).
 */
export function remember(model, info, seconds) {
  const work = info.timings.whole_s - info.timings.load_s;
  if (!(work > 0 && seconds > 0)) return;
  const speeds = remembered();
  speeds[model] = { realtime: seconds / work, threads: info.threads, at: Date.now() };
  try {
    localStorage.setItem(KEY, JSON.stringify(speeds));
  } catch (ignored) {
    // no storage: estimated again next time
  }
}

/**
 * Whether a device run of `model` would keep up with the music: {realtime, measured} (realtime: seconds of
 * song made per second, above 1 keeps up; measured: from an earlier run in this browser, else estimated from
 * the probe, `probe` its milliseconds, and `bytes`, the size of the model's fp32 network).
 */
export function speedOf(model, { probe, bytes }) {
  const known = remembered()[model];
  if (known && known.realtime > 0) return { realtime: known.realtime, measured: true };
  const network = (NETWORK_REF_S * (bytes / BYTES_REF)) / (1 + THREAD_GAIN * (threadCount() - 1));
  const perSecond = (network + AROUND_REF_S) * (probe / PROBE_REF_MS); // seconds of work a second of music
  return { realtime: 1 / perSecond, measured: false };
}

/** Megabytes a device run of a song of `seconds` with `stems` stems holds at its peak (about). */
export function memoryNeeded(seconds, stems) {
  return MB_BASE + (seconds / 60) * (MB_PER_MINUTE + stems * MB_PER_MINUTE_STEM);
}

/** Megabytes this device may give the page (half its memory), or null where the browser does not say. */
export function memoryAvailable() {
  return navigator.deviceMemory ? (navigator.deviceMemory * 1024) / 2 : null;
}
