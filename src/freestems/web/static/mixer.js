// The stem mixer: every stem through its own GainNode into a master gain (Web Audio), one shared transport,
// and waveforms drawn on canvases.
//
//   AudioBufferSourceNode (stem) -> GainNode (stem: volume x mute/solo) -> GainNode (master) -> speakers
//
// A stem is heard when it is not muted and, if any stem is soloed, it is soloed too. All sources of one
// playback start at the same context time with the same offset, so the stems stay sample-aligned.
// A stem may have an alternate (the same stem by another model, compare.js): it plays in sync through its
// own gain, and `choose(name, "a" | "b")` glides between the two without stopping playback.

const RAMP = 0.012; // seconds: gain changes glide this fast (no clicks)
const PEAK_BUCKETS = 2048;

/** Bytes `stems` decoded stems of `samples` samples take (4 bytes a sample, two channels). */
export function decodedBytes(samples, stems) {
  return samples * 2 * 4 * stems;
}

export class Mixer {
  constructor(context = new AudioContext()) {
    this.context = context;
    this.master = context.createGain();
    this.master.connect(context.destination);
    this.stems = [];
    this.playing = false;
    this.offset = 0; // seconds into the song where playback (re)starts
    this.startedAt = 0; // context time that corresponds to `offset`
    this.sources = [];
    this.listeners = new Set();
    this.loop = null; // {start, end} in seconds: playback repeats that region
  }

  /** Decode one stem's file (ArrayBuffer of an MP3/WAV/FLAC) and add it. */
  async addStem(name, encoded) {
    let buffer;
    try {
      buffer = await this.context.decodeAudioData(encoded);
    } catch (error) {
      throw new Error(`${name} could not be decoded by this browser`);
    }
    return this.addBuffer(name, buffer);
  }

  /** Adds stem `name` as it is already decoded (an AudioBuffer). */
  addBuffer(name, buffer) {
    const gain = this.context.createGain();
    gain.connect(this.master);
    const stem = { name, buffer, gain, volume: 1, muted: false, soloed: false, peaks: peaks(buffer) };
    this.stems.push(stem);
    this._applyGains(true);
    return stem;
  }

  /** Decode another version of stem `name` (ArrayBuffer) to play in sync with it; the original is heard. */
  async addAlternate(name, encoded) {
    const stem = this.stem(name);
    let buffer;
    try {
      buffer = await this.context.decodeAudioData(encoded);
    } catch (error) {
      throw new Error(`${name} could not be decoded by this browser`);
    }
    this.dropAlternate(name);
    const gain = this.context.createGain();
    gain.connect(this.master);
    stem.alternate = { buffer, gain, peaks: peaks(buffer) };
    stem.choice = "a";
    this._applyGains(true);
    await this._restart(); // a playing song picks the new source up where it is
    return stem.alternate;
  }

  dropAlternate(name) {
    const stem = this.stem(name);
    if (!stem.alternate) return;
    stem.alternate.gain.disconnect();
    stem.alternate = null;
    stem.choice = "a";
  }

  /** Which version of stem `name` is heard: "a" (its own) or "b" (its alternate). */
  choose(name, choice) {
    const stem = this.stem(name);
    stem.choice = stem.alternate && choice === "b" ? "b" : "a";
    this._applyGains();
  }

  /** The gains of stems that have an alternate: {name: {a, b}} (what the audio graph does now). */
  alternateGains() {
    return Object.fromEntries(
      this.stems.filter((stem) => stem.alternate).map((stem) => [stem.name, { a: stem.gain.gain.value, b: stem.alternate.gain.gain.value }]),
    );
  }

  async _restart() {
    if (!this.playing) return;
    const at = this.position();
    this._stopSources();
    this.playing = false;
    this.offset = at;
    await this.play();
  }

  get duration() {
    return this.stems.reduce((longest, stem) => Math.max(longest, stem.buffer.duration), 0);
  }

  stem(name) {
    const found = this.stems.find((stem) => stem.name === name);
    if (!found) throw new Error(`no stem ${name}`);
    return found;
  }

  /** The gain a stem should have now: its volume if it is heard, else 0. */
  target(stem) {
    const soloing = this.stems.some((other) => other.soloed);
    const heard = !stem.muted && (!soloing || stem.soloed);
    return heard ? stem.volume : 0;
  }

  /** Current values of the stem GainNodes (what the audio graph does now). */
  gains() {
    return Object.fromEntries(this.stems.map((stem) => [stem.name, stem.gain.gain.value]));
  }

  /** The values the stem gains are moving to. */
  targets() {
    return Object.fromEntries(this.stems.map((stem) => [stem.name, this.target(stem)]));
  }

  setVolume(name, volume) {
    this.stem(name).volume = Math.min(1.5, Math.max(0, Number(volume) || 0));
    this._applyGains();
  }

  setMuted(name, muted) {
    this.stem(name).muted = Boolean(muted);
    this._applyGains();
  }

  setSoloed(name, soloed) {
    this.stem(name).soloed = Boolean(soloed);
    this._applyGains();
  }

  setMasterVolume(volume) {
    this._glide(this.master.gain, Math.max(0, Number(volume) || 0));
  }

  /** The mix as it is set: {stems: {name: {volume, muted, soloed}}, master}. */
  mix() {
    const stems = this.stems.map(({ name, volume, muted, soloed }) => [name, { volume, muted, soloed }]);
    return { stems: Object.fromEntries(stems), master: this.master.gain.value };
  }

  /** Sets the mix (`mix()` of another player of the same song) at once. */
  setMix(mix) {
    for (const stem of this.stems) Object.assign(stem, mix.stems[stem.name] || {});
    this._applyGains(true);
    this.master.gain.value = mix.master;
  }

  /** Seconds into the song. */
  position() {
    if (!this.playing) return this.offset;
    // Before a scheduled start (`startedAt` is a few ms ahead) the position is where it starts, not before.
    const at = Math.max(this.offset, this.context.currentTime - this.startedAt + this.offset);
    if (!this.loop || at < this.loop.end) return Math.min(this.duration, at);
    const length = this.loop.end - this.loop.start;
    return this.loop.start + ((at - this.loop.start) % length);
  }

  /**
   * Repeats `start`..`end` (seconds; null clears it). The sources loop the region themselves (sample
   * exact, every stem alike); playback outside the region jumps to its start.
   */
  async setLoop(start, end = null) {
    if (start === null || !(end > start)) {
      this.loop = null;
    } else {
      const from = Math.max(0, Math.min(start, this.duration));
      const to = Math.max(0, Math.min(end, this.duration));
      this.loop = to - from >= 0.05 ? { start: from, end: to } : null;
    }
    const now = this.position();
    const inside = this.loop && now >= this.loop.start && now < this.loop.end;
    await this.seek(this.loop && !inside ? this.loop.start : now);
    this._emit("loop");
  }

  /** Plays from `offset`, starting at context time `at` (default: in 30 ms). */
  async play(at = null) {
    if (this.playing || !this.stems.length) return;
    if (this.context.state !== "running") await this.context.resume();
    if (this.offset >= this.duration - 0.01) this.offset = 0;
    const when = at ?? this.context.currentTime + 0.03;
    if (this.loop && (this.offset < this.loop.start || this.offset >= this.loop.end)) this.offset = this.loop.start;
    const versions = this.stems.flatMap((stem) => [stem, ...(stem.alternate ? [stem.alternate] : [])]);
    const sources = versions.map((version) => {
      const source = this.context.createBufferSource();
      source.buffer = version.buffer;
      if (this.loop) Object.assign(source, { loop: true, loopStart: this.loop.start, loopEnd: this.loop.end });
      source.connect(version.gain);
      source.start(when, Math.min(this.offset, version.buffer.duration));
      return source;
    });
    this.sources = sources;
    this.startedAt = when;
    this.playing = true;
    const longest = sources.reduce((a, b) => (b.buffer.duration > a.buffer.duration ? b : a));
    longest.onended = () => {
      if (this.sources !== sources) return; // stopped by pause or seek, not by the end of the song
      this._stopSources();
      this.playing = false;
      this.offset = 0;
      this._emit("ended");
    };
    this._emit("play");
  }

  pause() {
    if (!this.playing) return;
    this.offset = this.position();
    this._stopSources();
    this.playing = false;
    this._emit("pause");
  }

  toggle() {
    return this.playing ? this.pause() : this.play();
  }

  async seek(seconds) {
    const target = Math.min(Math.max(0, Number(seconds) || 0), this.duration);
    if (this.playing) {
      this._stopSources();
      this.playing = false;
      this.offset = target;
      await this.play();
    } else {
      this.offset = target;
      this._emit("seek");
    }
  }

  on(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close() {
    this._stopSources();
    this.playing = false;
    this.listeners.clear();
    if (this.context.state !== "closed") await this.context.close();
  }

  _stopSources() {
    const sources = this.sources;
    this.sources = [];
    for (const source of sources) {
      source.onended = null;
      try {
        source.stop();
      } catch (ignored) {
        // never started
      }
      source.disconnect();
    }
  }

  _applyGains(immediately = false) {
    for (const stem of this.stems) {
      const target = this.target(stem);
      const b = Boolean(stem.alternate) && stem.choice === "b";
      this._glide(stem.gain.gain, b ? 0 : target, immediately);
      if (stem.alternate) this._glide(stem.alternate.gain.gain, b ? target : 0, immediately);
    }
    this._emit("mix");
  }

  _glide(param, value, immediately = false) {
    const now = this.context.currentTime;
    param.cancelScheduledValues(now);
    if (immediately || this.context.state !== "running") {
      param.value = value; // a suspended context does not advance automation
    } else {
      param.setValueAtTime(param.value, now);
      param.setTargetAtTime(value, now, RAMP / 3);
    }
  }

  _emit(kind) {
    for (const listener of this.listeners) listener(kind, this);
  }
}

/** Min/max of the louder channel sum in PEAK_BUCKETS slices: [min0, max0, min1, max1, ...]. */
export function peaks(buffer, buckets = PEAK_BUCKETS) {
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c += 1) channels.push(buffer.getChannelData(c));
  const length = buffer.length;
  const count = Math.max(1, Math.min(buckets, length));
  const result = new Float32Array(count * 2);
  const scale = 1 / channels.length;
  for (let b = 0; b < count; b += 1) {
    const start = Math.floor((b * length) / count);
    const end = Math.max(start + 1, Math.floor(((b + 1) * length) / count));
    let low = 0;
    let high = 0;
    for (let i = start; i < end; i += 1) {
      let value = 0;
      for (const data of channels) value += data[i];
      value *= scale;
      if (value < low) low = value;
      if (value > high) high = value;
    }
    result[b * 2] = low;
    result[b * 2 + 1] = high;
  }
  return result;
}

/**
 * Draw `stemPeaks` on `canvas` (sized to its CSS box and the screen's pixel ratio) in `color`; once playback
 * has moved (0 < progress), the part not played yet is faded and a `line` marks the position; a looped
 * `region` ({from, to} fractions) is a band behind it.
 */
export function drawWaveform(canvas, stemPeaks, progress, { color, line, region = null }) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  if (region) {
    // The looped region: a band behind the waveform.
    context.globalAlpha = 0.16;
    context.fillStyle = color;
    context.fillRect(Math.round(region.from * width), 0, Math.max(1, Math.round((region.to - region.from) * width)), height);
    context.globalAlpha = 1;
  }
  const buckets = stemPeaks.length / 2;
  let loudest = 0;
  for (let i = 0; i < stemPeaks.length; i += 1) loudest = Math.max(loudest, Math.abs(stemPeaks[i]));
  const gain = loudest > 0 ? 0.95 / Math.max(loudest, 0.05) : 1;
  const middle = height / 2;
  const bar = Math.max(1, Math.round(2 * ratio));
  const step = bar + Math.max(1, Math.round(ratio));
  const playedUntil = progress * width;
  for (let x = 0; x < width; x += step) {
    const from = Math.floor((x / width) * buckets);
    const to = Math.max(from + 1, Math.floor(((x + step) / width) * buckets));
    let low = 0;
    let high = 0;
    for (let b = from; b < to && b < buckets; b += 1) {
      low = Math.min(low, stemPeaks[b * 2]);
      high = Math.max(high, stemPeaks[b * 2 + 1]);
    }
    const top = middle - high * gain * middle;
    const bottom = middle - low * gain * middle;
    context.globalAlpha = progress > 0 && x >= playedUntil ? 0.4 : 1;
    context.fillStyle = color;
    context.fillRect(x, top, bar, Math.max(ratio, bottom - top));
  }
  context.globalAlpha = 1;
  if (progress > 0 && progress < 1) {
    context.fillStyle = line;
    context.fillRect(Math.round(playedUntil), 0, Math.max(1, Math.round(ratio)), height);
  }
}
