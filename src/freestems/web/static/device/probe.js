// The faithfulness probe of an export (the manifest's `probe`, written by `freestems export`): an input made
// bit for bit from a seed (mulberry32), and a fingerprint of what native ONNX Runtime gives for it with the
// fp32 network (per stem: values at fixed strided places, and the energy of all its values). The worker runs
// the input through a session on a backend it does not trust yet (WebGPU) and uses that backend only if the
// output matches the fingerprint. Plain arithmetic, no DOM: the worker imports it, and so can Node.js.

/** `count` outputs of mulberry32 seeded with `seed`, each as u = output / 2^32 in [0, 1), to `onValue`. */
function mulberry32(seed, count, onValue) {
  let a = seed | 0;
  for (let i = 0; i < count; i += 1) {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t = (t + Math.imul(t ^ (t >>> 7), t | 61)) ^ t;
    onValue(i, ((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
}

/** The probe's input as the manifest describes it: float32((u - 0.5) * scale) for each value, row-major. */
export function probeInput(probe) {
  const { seed, scale, shape } = probe.input;
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  mulberry32(seed, data.length, (i, u) => {
    data[i] = (u - 0.5) * scale;
  });
  return data;
}

const isCount = (value, least) => Number.isInteger(value) && value >= least;
const finite = (value) => typeof value === "number" && Number.isFinite(value);

/**
 * The manifest's probe if it is one this file can run, else null (then no backend is probed, and the worker
 * uses WASM). The server's reader (freestems.service.device.read_probe) applies the same rules.
 */
export function readProbe(manifest) {
  const probe = manifest && manifest.probe;
  if (!probe || typeof probe !== "object") return null;
  const { input, output } = probe;
  const stems = manifest.model && Array.isArray(manifest.model.stems) ? manifest.model.stems.length : 0;
  if (!input || !output || input.generator !== "mulberry32" || input.dtype !== "float32") return null;
  if (!isCount(input.seed, 0) || input.seed > 0xffffffff || !finite(input.scale)) return null;
  if (!Array.isArray(input.shape) || !input.shape.length || !input.shape.every((n) => isCount(n, 1))) return null;
  if (!isCount(output.count, 1) || !isCount(output.step, 1) || !isCount(output.offset, 0)) return null;
  const values = output.values;
  if (!Array.isArray(values) || values.length !== stems || !stems) return null;
  if (!values.every((row) => Array.isArray(row) && row.length === output.count && row.every(finite))) return null;
  if (!Array.isArray(output.energy) || output.energy.length !== stems || !output.energy.every(finite)) return null;
  return probe;
}

/**
 * How close `data` (a backend's output for the probe's input, a Float32Array) is to the fingerprint, per
 * stem: `values_db`, the SNR over the fingerprint's values; `energy_db`, the most SNR that the difference of
 * the stem's energy leaves possible over all its values (|E' - E| <= |n| (2 |x| + |n|) for an output x + n,
 * so |n| >= sqrt(E + |E' - E|) - sqrt(E)); `db`, the lesser. Returns {stems: [...], db: the least}; NaN
 * where the output is not finite or not of the probe's size (it then fails every threshold).
 */
export function compareProbe(probe, data) {
  const { values, energy, count, step, offset } = probe.output;
  const perStem = data.length / values.length;
  if (!Number.isInteger(perStem) || offset + (count - 1) * step >= perStem) {
    return { stems: values.map(() => ({ values_db: NaN, energy_db: NaN, db: NaN })), db: NaN };
  }
  const stems = values.map((expected, s) => {
    let signal = 0;
    let noise = 0;
    for (let k = 0; k < count; k += 1) {
      const got = data[s * perStem + offset + k * step];
      signal += expected[k] * expected[k];
      noise += (got - expected[k]) * (got - expected[k]);
    }
    let sum = 0;
    for (let i = s * perStem; i < (s + 1) * perStem; i += 1) sum += data[i] * data[i];
    const gap = Math.abs(sum - energy[s]);
    const least = Math.sqrt(energy[s] + gap) - Math.sqrt(energy[s]);
    const valuesDb = snrDb(signal, noise);
    const energyDb = snrDb(energy[s], least * least);
    return { values_db: round(valuesDb), energy_db: round(energyDb), db: round(Math.min(valuesDb, energyDb)) };
  });
  return { stems, db: stems.reduce((least, stem) => Math.min(least, stem.db), Infinity) }; // NaN wins
}

function snrDb(signal, noise) {
  if (!Number.isFinite(signal) || !Number.isFinite(noise)) return NaN;
  return noise === 0 ? Infinity : 10 * Math.log10(Math.max(signal, 1e-30) / noise);
}

function round(value) {
  return Number.isFinite(value) ? Math.round(value * 10) / 10 : value;
}
