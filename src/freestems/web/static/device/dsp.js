// The signal processing of separating on the device, as the export's manifest describes it (manifest.json of
// `freestems export`) and as freestems.engine does it: the whole-track statistics, the chunk plan and its
// trapezoid window, and one chunk's STFT and inverse STFT. Plain arithmetic, no DOM: the worker imports it.
//
// The STFT runs two real channels through one complex FFT (x + iy), and the inverse two real outputs the
// same way; sums are in float64 (Float64Array), the tensors handed to the network float32.

/** An in-place radix-2 complex FFT of size `n` (a power of two), forward (e^-i) or inverse (unscaled). */
export class FFT {
  constructor(n) {
    if (!(n >= 2) || (n & (n - 1)) !== 0) throw new Error(`the FFT size must be a power of two, not ${n}`);
    this.n = n;
    this.cos = new Float64Array(n / 2);
    this.sin = new Float64Array(n / 2);
    for (let k = 0; k < n / 2; k += 1) {
      this.cos[k] = Math.cos((2 * Math.PI * k) / n);
      this.sin[k] = Math.sin((2 * Math.PI * k) / n);
    }
    this.reverse = new Uint32Array(n);
    const bits = Math.log2(n);
    for (let i = 0; i < n; i += 1) {
      let r = 0;
      for (let b = 0; b < bits; b += 1) r |= ((i >> b) & 1) << (bits - 1 - b);
      this.reverse[i] = r;
    }
  }

  /** Transforms (re, im) in place; `inverse`: e^+i, not divided by n. */
  run(re, im, inverse = false) {
    const { n, reverse } = this;
    for (let i = 0; i < n; i += 1) {
      const j = reverse[i];
      if (j > i) {
        let t = re[i];
        re[i] = re[j];
        re[j] = t;
        t = im[i];
        im[i] = im[j];
        im[j] = t;
      }
    }
    const sign = inverse ? 1 : -1;
    for (let size = 2; size <= n; size *= 2) {
      const half = size / 2;
      const step = n / size;
      for (let start = 0; start < n; start += size) {
        for (let k = 0; k < half; k += 1) {
          const wr = this.cos[k * step];
          const wi = sign * this.sin[k * step];
          const a = start + k;
          const b = a + half;
          const xr = re[b] * wr - im[b] * wi;
          const xi = re[b] * wi + im[b] * wr;
          re[b] = re[a] - xr;
          im[b] = im[a] - xi;
          re[a] += xr;
          im[a] += xi;
        }
      }
    }
  }
}

/** The window of the manifest's STFT: `win_length` ones in the middle of `n_fft`, zeros around. */
export function stftWindow(stft) {
  if (stft.window !== "rectangular") throw new Error(`unsupported STFT window ${stft.window}`);
  const window = new Float64Array(stft.n_fft);
  const start = Math.floor((stft.n_fft - stft.win_length) / 2);
  window.fill(1, start, start + stft.win_length);
  return window;
}

/** Checks that the manifest asks for what this file does; throws naming what it does not know. */
export function checkManifest(manifest) {
  if (manifest.format !== "freestems-onnx" || manifest.format_version !== 1) {
    throw new Error(`unknown export format ${manifest.format} ${manifest.format_version}`);
  }
  const { stft, chunking, tensors } = manifest;
  if (!stft.center || !stft.onesided || stft.pad_mode !== "reflect") throw new Error("unsupported STFT settings");
  if (chunking.chunk_tail !== "zeros") throw new Error(`unsupported chunk tail ${chunking.chunk_tail}`);
  if (chunking.window.kind !== "trapezoid") throw new Error(`unsupported overlap window ${chunking.window.kind}`);
  if (!tensors.plane_order.endsWith("at plane 2 * c + p")) throw new Error("unsupported plane order");
  // One dynamic axis is understood: the frame count (the last axis of both tensors), set per chunk.
  const known = tensors.dynamic_axes.every((axis) => axis === "frames");
  if (!known || tensors.input.shape.slice(0, 3).some((dim) => typeof dim !== "number")) {
    throw new Error(`networks with dynamic axes ${tensors.dynamic_axes.join(", ")} are not supported`);
  }
  stftWindow(stft);
}

/** The input tensor's shape for a chunk of `frames` frames (the manifest's, its frame axis set). */
export function inputShape(manifest, frames) {
  return manifest.tensors.input.shape.map((dim) => (dim === "frames" ? frames : dim));
}

/**
 * The short first chunk the export offers ({segment, rightPadding, frames}), or null: a file with a fixed
 * frame count (an earlier export) runs only whole chunks.
 */
export function firstChunk(manifest) {
  const first = manifest.chunking.first_chunk;
  if (!first || !manifest.tensors.dynamic_axes.includes("frames")) return null;
  return { segment: first.segment, rightPadding: first.right_padding, frames: first.frames };
}

/**
 * The STFT of one chunk and its inverse, for the manifest's settings: `forward(channels)` takes the chunk's
 * channels (Float32Array of `segment` samples each) and gives the network's input planes (Float32Array of
 * 2C x bins x frames); `inverse(planes, offset)` reads one stem's 2C planes from `planes` at `offset` and
 * gives its channels (Float64Array of `segment` samples each). `sizes` ({segment, rightPadding, frames}):
 * a chunk of another length than the manifest's segment (the short first chunk).
 */
export class ChunkSTFT {
  constructor(manifest, sizes = null) {
    const { stft, chunking } = manifest;
    this.nfft = stft.n_fft;
    this.hop = stft.hop_length;
    this.bins = stft.bins;
    this.frames = sizes ? sizes.frames : stft.frames;
    this.rightPadding = sizes ? sizes.rightPadding : stft.right_padding;
    this.segment = sizes ? sizes.segment : chunking.segment;
    this.channels = manifest.model.audio_channels;
    this.scale = stft.normalized ? 1 / Math.sqrt(this.nfft) : 1;
    this.window = stftWindow(stft);
    this.fft = new FFT(this.nfft);
    this.re = new Float64Array(this.nfft);
    this.im = new Float64Array(this.nfft);
    const padded = this.segment + this.rightPadding + this.nfft;
    if ((this.frames - 1) * this.hop + this.nfft !== padded) {
      throw new Error(`the manifest's frame count (${this.frames}) is not its STFT's`);
    }
    if (this.bins !== this.nfft / 2 + 1) throw new Error("the manifest's bin count is not n_fft / 2 + 1");
    // The inverse's overlap-add of the squared window, over the samples kept.
    const envelope = new Float64Array(this.nfft + this.hop * (this.frames - 1));
    for (let t = 0; t < this.frames; t += 1) {
      for (let i = 0; i < this.nfft; i += 1) envelope[t * this.hop + i] += this.window[i] * this.window[i];
    }
    this.inverseEnvelope = new Float64Array(this.segment);
    for (let i = 0; i < this.segment; i += 1) this.inverseEnvelope[i] = 1 / envelope[this.nfft / 2 + i];
  }

  /** The chunk padded as the STFT pads it: right_padding zeros, then n_fft / 2 mirrored at both ends. */
  pad(samples) {
    const half = this.nfft / 2;
    const inner = this.segment + this.rightPadding;
    const out = new Float64Array(inner + this.nfft);
    for (let i = 0; i < this.segment; i += 1) out[half + i] = samples[i];
    for (let i = 1; i <= half; i += 1) {
      out[half - i] = out[half + i]; // reflect: the edge sample is not repeated
      out[half + inner - 1 + i] = out[half + inner - 1 - i];
    }
    return out;
  }

  forward(channels) {
    const { nfft, hop, bins, frames, re, im, window, scale } = this;
    const planes = new Float32Array(2 * this.channels * bins * frames);
    const padded = channels.map((samples) => this.pad(samples));
    for (let c = 0; c < this.channels; c += 2) {
      const x = padded[c];
      const y = c + 1 < this.channels ? padded[c + 1] : null;
      const planeX = 2 * c;
      const planeY = 2 * (c + 1);
      for (let t = 0; t < frames; t += 1) {
        const at = t * hop;
        for (let i = 0; i < nfft; i += 1) {
          re[i] = x[at + i] * window[i];
          im[i] = y ? y[at + i] * window[i] : 0;
        }
        this.fft.run(re, im);
        for (let k = 0; k < bins; k += 1) {
          const m = k === 0 ? 0 : nfft - k;
          // X = (Z[k] + conj Z[n-k]) / 2, Y = (Z[k] - conj Z[n-k]) / 2i
          const xr = 0.5 * (re[k] + re[m]);
          const xi = 0.5 * (im[k] - im[m]);
          planes[(planeX * bins + k) * frames + t] = xr * scale;
          planes[((planeX + 1) * bins + k) * frames + t] = xi * scale;
          if (y) {
            const yr = 0.5 * (im[k] + im[m]);
            const yi = -0.5 * (re[k] - re[m]);
            planes[(planeY * bins + k) * frames + t] = yr * scale;
            planes[((planeY + 1) * bins + k) * frames + t] = yi * scale;
          }
        }
      }
    }
    return planes;
  }

  inverse(planes, offset) {
    const { nfft, hop, bins, frames, re, im, window, segment } = this;
    const half = nfft / 2;
    const unscale = (1 / this.scale) / nfft; // the inverse FFT is not divided by n
    const out = [];
    for (let c = 0; c < this.channels; c += 1) out.push(new Float64Array(segment));
    const plane = (p, k, t) => planes[offset + (p * bins + k) * frames + t];
    for (let c = 0; c < this.channels; c += 2) {
      const pair = c + 1 < this.channels;
      const x = out[c];
      const y = pair ? out[c + 1] : null;
      for (let t = 0; t < frames; t += 1) {
        // Z = X + iY over the whole circle (X, Y Hermitian): its inverse is x + iy.
        for (let k = 0; k < bins; k += 1) {
          const edge = k === 0 || k === half; // their imaginary parts are ignored, as irfft does
          const xr = plane(2 * c, k, t);
          const xi = edge ? 0 : plane(2 * c + 1, k, t);
          const yr = pair ? plane(2 * c + 2, k, t) : 0;
          const yi = pair && !edge ? plane(2 * c + 3, k, t) : 0;
          re[k] = xr - yi;
          im[k] = xi + yr;
          if (!edge) {
            re[nfft - k] = xr + yi; // conj X[k] + i conj Y[k]
            im[nfft - k] = -xi + yr;
          }
        }
        this.fft.run(re, im, true);
        // Frame t covers padded samples [t hop, t hop + n_fft); the kept ones are [half, half + segment).
        const from = Math.max(0, half - t * hop);
        const to = Math.min(nfft, half + segment - t * hop);
        for (let i = from; i < to; i += 1) {
          const at = t * hop + i - half;
          x[at] += re[i] * unscale * window[i];
          if (y) y[at] += im[i] * unscale * window[i];
        }
      }
    }
    for (const channel of out) {
      for (let i = 0; i < segment; i += 1) channel[i] *= this.inverseEnvelope[i];
    }
    return out;
  }
}

/** The engine's stride for `segment` and `overlap`: max(1, round(segment (1 - overlap))), halves to even. */
export function stride(segment, overlap) {
  return Math.max(1, roundHalfEven(segment * (1 - overlap)));
}

function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The trapezoid: w[i] = min((i + 1) / (ramp + 1), (segment - i) / (ramp + 1), 1), float32 as the engine's. */
export function overlapWindow(segment, overlap) {
  const ramp = segment - stride(segment, overlap);
  const weights = new Float32Array(segment);
  const r = Math.fround(ramp + 1);
  for (let i = 0; i < segment; i += 1) {
    const up = Math.fround(Math.fround(i + 1) / r);
    const down = Math.fround(Math.fround(segment - i) / r);
    weights[i] = Math.min(up, down, 1);
  }
  return weights;
}

/** Chunk starts: 0, stride, ... while the last chunk ends before `length` (chunk_tail "zeros"). */
export function chunkStarts(length, segment, overlap) {
  const step = stride(segment, overlap);
  const starts = [0];
  while (starts[starts.length - 1] + segment < length) starts.push(starts[starts.length - 1] + step);
  return starts;
}

/**
 * The whole-track statistics (freestems.contract.MixStats): mean and deviation (n - 1) of the mono mix
 * (the channels' mean, float32 as the engine makes it), summed in float64; a deviation <= 1e-8 counts as 1.
 */
export function mixStats(channels) {
  const length = channels[0].length;
  if (length < 2) return { mean: 0, std: 1 };
  const mono = new Float64Array(length);
  for (let i = 0; i < length; i += 1) {
    let sum = 0;
    for (const channel of channels) sum += channel[i];
    mono[i] = sum / channels.length;
  }
  let total = 0;
  for (let i = 0; i < length; i += 1) total += mono[i];
  const mean = total / length;
  let squares = 0;
  for (let i = 0; i < length; i += 1) squares += (mono[i] - mean) * (mono[i] - mean);
  const std = Math.sqrt(squares / (length - 1));
  return { mean, std: std > 1e-8 ? std : 1 };
}
