// Listening while the song is being separated. A server with progressive results (its job messages carry
// `ready_seconds`) offers every stem's finished audio in order as segments:
//
//   GET jobs/{id}/partial                -> {stems, sample_rate, segments: [{index, start, end}], ready_samples,
//                                            total_samples, complete}
//
// The song's whole length is known from the start (the server's `total_samples`, else the job's `duration`):
// the clock and the seek bar show all of it, the bar's band how much exists so far.
//   GET jobs/{id}/partial/{stem}/{index} -> FLAC, exactly end - start samples of that stem
//
// The page downloads the segments in order, one index for all stems at a time, decodes them and schedules
// them on one AudioContext timeline through the stems' GainNodes (so mute, solo and volume work as in the
// result player). All stems start together once segment 0 of every stem is in; the seek bar shows how far
// the stems exist; playback waits (and says so) when it catches up with the separation. When the job is
// done, the result player takes over at the same place on the same timeline (player.js `load`), with the
// live player's own audio: each stem's segments are joined into one buffer, stem after stem, and let go as
// soon as that stem plays from it, so the page holds one copy of the stems (not the segments and the
// result's files decoded again). A song whose decoded stems would not fit this device's memory budget (the
// result player's) is not played while it separates.
import { url } from "./api.js";
import { decodedBytes, Mixer } from "./mixer.js";
import { Problem } from "./text.js";

const POLL_MS = 500;
const LEAD = 0.06; // seconds between deciding to play and the first sample: time to schedule every source
const CATCH_UP = 0.02; // playback this close to the end of what exists waits for more
const FADE = 0.03; // seconds of crossfade where a segment replaces a provisional one mid-play
const PEAK_BUCKETS = 2048;
const MAX_FAILURES = 5; // partial requests that fail in a row before the page stops listening early
const FINISH_MS = 15000; // how long the result waits for the last segments before it decodes its own files

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

async function partialRequest(job, suffix, signal) {
  const response = await fetch(url(`jobs/${encodeURIComponent(job.id)}/partial${suffix}`), {
    headers: { "X-Job-Token": job.token },
    cache: "no-store",
    signal,
  });
  if (!response.ok) {
    let code = `http_${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.code) code = body.error.code;
    } catch (ignored) {
      // not JSON
    }
    throw new Problem(code, `the partial result answered ${response.status}`, { status: response.status });
  }
  return response;
}

/**
 * A mixer whose stems grow while they are separated: each stem is a list of decoded segments on one
 * timeline. Same controls and views as Mixer (mute, solo, volume, master, position, play, pause, seek).
 */
export class LiveMixer extends Mixer {
  constructor(context, { stems, sampleRate, totalSamples }) {
    super(context);
    this.live = true;
    this.rate = sampleRate || 44100;
    this.total = Number.isFinite(totalSamples) && totalSamples > 0 ? totalSamples : null;
    this.ready = 0; // seconds of every stem from the start
    this.complete = false;
    this.waiting = false; // playback caught up with the separation and waits for more
    this.wantsPlay = true; // starts by itself when the first segments are in; pause stops wanting
    this.segments = []; // [{start, end} in seconds, buffers: {stem: AudioBuffer}]
    this.starting = false; // waiting for the browser to let the context run
    this.timer = null;
    this.owners = new WeakMap(); // source -> the name of the stem it plays
    this.segmentOf = new WeakMap(); // source -> the segment it plays
    this.fades = new WeakMap(); // source -> its own gain (a provisional segment's, or one replacing it)
    for (const name of stems) {
      const gain = context.createGain();
      gain.connect(this.master);
      this.stems.push({ name, buffer: null, gain, volume: 1, muted: false, soloed: false, peaks: new Float32Array(PEAK_BUCKETS * 2) });
    }
    this._applyGains(true);
  }

  /** The song's length when the server knows it, else what exists so far. */
  get duration() {
    return this.total ? this.total / this.rate : this.ready;
  }

  setTotal(totalSamples) {
    if (Number.isFinite(totalSamples) && totalSamples > 0) this.total = totalSamples;
  }

  /**
   * Segment `segment` ({start, end} in samples) of every stem ({stem: AudioBuffer}) is in. A `provisional`
   * one (a device run's short first chunk) is heard until a segment covering it comes, which replaces it
   * where playback is, crossfading over FADE.
   */
  addSegment(segment, buffers, { provisional = false } = {}) {
    const entry = { start: segment.start / this.rate, end: segment.end / this.rate, buffers, provisional };
    const at = provisional ? null : this._replaceProvisional(entry);
    this.segments.push(entry);
    this.ready = Math.max(this.ready, entry.end);
    for (const stem of this.stems) {
      if (at !== null) clearPeaks(stem.peaks, segment.start, segment.end, this.total || segment.end);
      addPeaks(stem.peaks, buffers[stem.name], segment.start, this.total || segment.end);
    }
    if (this.playing) this._schedule(entry, at);
    else if (this.wantsPlay) this.play();
    this._emit("segment");
  }

  /**
   * Drops the provisional segments within `entry`'s time; their playing sources fade out from `at` (a
   * moment from now, returned; null when none was there), where `entry`'s then fade in.
   */
  _replaceProvisional(entry) {
    const gone = this.segments.filter((old) => old.provisional && old.start >= entry.start && old.end <= entry.end);
    if (!gone.length) return null;
    this.segments = this.segments.filter((old) => !gone.includes(old));
    const at = this.context.currentTime + LEAD;
    for (const source of this.sources.filter((playing) => gone.includes(this.segmentOf.get(playing)))) {
      const fade = this.fades.get(source);
      fade.gain.setValueAtTime(1, at);
      fade.gain.linearRampToValueAtTime(0, at + FADE);
      source.stop(at + FADE);
    }
    return at;
  }

  finish() {
    this.complete = true;
    if (!this.total) this.total = Math.round(this.ready * this.rate);
    this._emit("segment");
  }

  position() {
    if (!this.playing) return this.offset;
    return Math.min(this.ready, Math.max(this.offset, this.context.currentTime - this.startedAt + this.offset));
  }

  /** Plays from `offset`, starting at context time `at` (default: as soon as every source is scheduled). */
  async play(at = null) {
    this.wantsPlay = true;
    if (this.playing || !this.segments.length) return;
    if (this.complete && this.offset >= this.duration - 0.01) this.offset = 0;
    if (!this.complete && this.offset >= this.ready - CATCH_UP) {
      this._wait();
      return;
    }
    if (this.context.state !== "running") {
      // Without a click (a reload re-attached the job) the browser may hold the context until one: the
      // first press of Play then finishes this start; further calls meanwhile do nothing.
      if (this.starting) {
        this.context.resume(); // within a click: the browser lets it run now, and the waiting start goes on
        return;
      }
      this.starting = true;
      this._emit("blocked");
      try {
        await this.context.resume();
      } finally {
        this.starting = false;
      }
      if (this.playing || !this.wantsPlay) return;
    }
    this.waiting = false;
    this.startedAt = at ?? this.context.currentTime + LEAD;
    this.playing = true;
    this.sources = [];
    for (const entry of this.segments) this._schedule(entry);
    for (const stem of this.stems) if (stem.buffer) this._startWhole(stem, this.startedAt);
    clearInterval(this.timer);
    this.timer = setInterval(() => this._watch(), 50);
    this._emit("play");
  }

  pause() {
    this.wantsPlay = false;
    this.waiting = false;
    if (!this.playing) {
      this._emit("pause");
      return;
    }
    this.offset = this.position();
    this._halt();
    this._emit("pause");
  }

  toggle() {
    return this.playing || this.waiting ? this.pause() : this.play();
  }

  /** Jumps to `seconds`, within what exists so far. */
  async seek(seconds) {
    const target = Math.min(Math.max(0, Number(seconds) || 0), this.ready);
    const resume = this.playing || this.waiting;
    this._halt();
    this.waiting = false;
    this.offset = target;
    if (resume) await this.play();
    else this._emit("seek");
  }

  /**
   * Hands playback to `next` (a Mixer of the whole stems on the same context) without a jump: the live
   * sources stop and `next` starts at the same context time, from the same place, with the same mix.
   * Returns {at, position, playing}.
   */
  async handOver(next) {
    const playing = this.playing;
    const at = this.context.currentTime + LEAD;
    const position = playing ? at - this.startedAt + this.offset : this.offset;
    next.setMix(this.mix());
    next.offset = Math.min(position, next.duration);
    for (const source of this.sources) source.stop(at);
    clearInterval(this.timer);
    this.timer = null;
    this.playing = false;
    if (playing) await next.play(at);
    else next._emit("seek");
    const leaving = this.stems.map((stem) => stem.gain).concat(this.master);
    const sources = this.sources;
    this.sources = [];
    setTimeout(() => {
      for (const node of sources.concat(leaving)) node.disconnect();
    }, (LEAD + 0.2) * 1000);
    this.listeners.clear();
    return { at, position, playing };
  }

  /**
   * The stems whole, as a Mixer for the result player (the stems `names`, all of them, all their segments
   * in); null when the segments do not make those stems. Each stem's segments are copied into one buffer,
   * stem after stem; the stem then plays on from it (at the same place, without a gap) and its segments go,
   * so that at most one stem is held twice.
   */
  async wholeStems(names) {
    const mine = this.stems.map((stem) => stem.name);
    if (!this.complete || !this.segments.length || !sameNames(mine, names)) return null;
    let end = 0;
    for (const entry of this.segments) {
      if (Math.abs(entry.start - end) > 1e-6 || mine.some((name) => !entry.buffers[name])) return null;
      end = entry.end;
    }
    for (const stem of this.stems) {
      const first = this.segments[0].buffers[stem.name];
      const rate = first.sampleRate; // the context's: decoding resamples to it
      const whole = this.context.createBuffer(first.numberOfChannels, Math.round(end * rate), rate);
      for (const entry of this.segments) {
        const part = entry.buffers[stem.name];
        for (let c = 0; c < whole.numberOfChannels; c += 1) {
          whole.copyToChannel(part.getChannelData(Math.min(c, part.numberOfChannels - 1)), c, Math.round(entry.start * rate));
        }
        delete entry.buffers[stem.name];
      }
      stem.buffer = whole;
      const leaving = this.sources.filter((source) => this.owners.get(source) === stem.name);
      this.sources = this.sources.filter((source) => this.owners.get(source) !== stem.name);
      if (this.playing) {
        const at = this.context.currentTime + LEAD;
        for (const source of leaving) source.stop(at);
        this._startWhole(stem, at);
        await new Promise((resolve) => setTimeout(resolve, (LEAD + 0.05) * 1000));
      }
      for (const source of leaving) source.disconnect(); // stopped: nothing holds its segments any more
    }
    const next = new Mixer(this.context);
    for (const stem of this.stems) next.addBuffer(stem.name, stem.buffer);
    return next;
  }

  /** After the hand-over: lets go of every segment and buffer (the result player has its own references). */
  release() {
    this.segments = [];
    for (const stem of this.stems) stem.buffer = null;
  }

  /** Stops and lets go of its nodes and its audio, and of the context unless `keepContext`. */
  async close(keepContext = false) {
    this._halt();
    this.listeners.clear();
    for (const stem of this.stems) stem.gain.disconnect();
    this.master.disconnect();
    this.release();
    if (!keepContext && this.context.state !== "closed") await this.context.close();
  }

  /** Plays stem `stem` from its whole buffer from context time `at`, where playback is then. */
  _startWhole(stem, at) {
    const source = this.context.createBufferSource();
    source.buffer = stem.buffer;
    source.connect(stem.gain);
    source.start(at, Math.max(0, at - this.startedAt + this.offset));
    this.owners.set(source, stem.name);
    this.sources.push(source);
  }

  /**
   * Schedules `entry`'s sources where playback will be; `crossfade` (a context time): it replaces a
   * provisional segment fading out then, and fades in over the same FADE. A provisional segment's sources
   * play through a gain of their own, to fade out when replaced.
   */
  _schedule(entry, crossfade = null) {
    const earliest = crossfade ?? this.context.currentTime + 0.005;
    const startAt = this.startedAt + (entry.start - this.offset); // context time of the segment's first sample
    const from = Math.max(startAt, this.startedAt, earliest);
    const into = from - startAt;
    if (into >= entry.end - entry.start) return; // already played
    for (const stem of this.stems) {
      const buffer = entry.buffers[stem.name];
      if (!buffer) continue;
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      if (entry.provisional || (crossfade !== null && into > 0)) {
        const fade = this.context.createGain();
        if (!entry.provisional) {
          fade.gain.setValueAtTime(0, from);
          fade.gain.linearRampToValueAtTime(1, from + FADE);
        }
        fade.connect(stem.gain);
        source.connect(fade);
        source.onended = () => fade.disconnect();
        this.fades.set(source, fade);
      } else {
        source.connect(stem.gain);
      }
      source.start(from, into);
      this.owners.set(source, stem.name);
      this.segmentOf.set(source, entry);
      this.sources.push(source);
    }
  }

  /** Every 50 ms while playing: the end of the song, or the end of what exists so far. */
  _watch() {
    if (!this.playing) return;
    const at = this.context.currentTime - this.startedAt + this.offset;
    if (this.complete && at >= this.duration) {
      this._halt();
      this.offset = 0;
      this.wantsPlay = false;
      this._emit("ended");
    } else if (!this.complete && at >= this.ready - CATCH_UP) {
      this.offset = this.ready;
      this._halt();
      this._wait();
    }
  }

  _wait() {
    this.waiting = true;
    this._emit("wait");
  }

  _halt() {
    clearInterval(this.timer);
    this.timer = null;
    this._stopSources();
    this.playing = false;
  }
}

/** True when `a` and `b` name the same stems. */
function sameNames(a, b) {
  return a.length === b.length && a.every((name) => b.includes(name));
}

/** Empties the buckets (over `total` samples) of samples [start, end), for a segment drawn anew. */
function clearPeaks(target, start, end, total) {
  const buckets = target.length / 2;
  const perBucket = total / buckets;
  const last = Math.min(buckets - 1, Math.floor((end - 1) / perBucket));
  for (let b = Math.floor(start / perBucket); b <= last; b += 1) {
    target[b * 2] = 0;
    target[b * 2 + 1] = 0;
  }
}

/** Min/max of the stem's channel mean into the buckets (over `total` samples) that `buffer` covers. */
function addPeaks(target, buffer, startSample, total) {
  if (!buffer || !total) return;
  const buckets = target.length / 2;
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c += 1) channels.push(buffer.getChannelData(c));
  const scale = 1 / channels.length;
  const perBucket = total / buckets;
  for (let i = 0; i < buffer.length; i += 1) {
    const b = Math.min(buckets - 1, Math.floor((startSample + i) / perBucket));
    let value = 0;
    for (const data of channels) value += data[i];
    value *= scale;
    if (value < target[b * 2]) target[b * 2] = value;
    if (value > target[b * 2 + 1]) target[b * 2 + 1] = value;
  }
}

/**
 * Listening during a job. `offer(job, message)` hears each state of the job: the first running message
 * with `ready_seconds` (a server with progressive results) starts it. `player` shows the live mixer
 * (player.goLive) and gives the audio context made during the click (player.audioContext).
 */
export function createListen({ player, log }) {
  let run = null; // {job, controller}

  function offer(job, message) {
    if (run || !job || !message) return;
    if (message.id && message.id !== job.id) return;
    const progressive = message.ready_seconds !== undefined && message.ready_seconds !== null;
    if (message.state !== "running" || !progressive) return;
    run = { job, controller: new AbortController(), duration: Number(message.duration) || null };
    run.done = follow(run).catch((error) => log("live_stopped", { code: error && error.code, message: error && error.message }));
  }

  /** True (and said in the log) when `samples` of every stem would not fit the device's memory budget. */
  function tooBig(samples, stems) {
    const needed = decodedBytes(samples, stems.length);
    if (needed <= player.memoryBudget()) return false;
    log("live_skipped", { needed });
    return true;
  }

  async function follow(mine) {
    const { job, controller, duration } = mine;
    const signal = controller.signal;
    let mixer = null;
    let next = 0;
    let failures = 0;
    log("live_start", { id: job.id });
    while (!signal.aborted) {
      let info;
      try {
        info = await (await partialRequest(job, "", signal)).json();
        failures = 0;
      } catch (error) {
        if (signal.aborted) return;
        if (error && ["not_found", "http_404"].includes(error.code)) throw error; // no partial results here
        failures += 1;
        if (failures >= MAX_FAILURES) throw error;
        await sleep(POLL_MS, signal);
        continue;
      }
      if (!mixer && !(Array.isArray(info.stems) && info.stems.length)) {
        await sleep(POLL_MS, signal); // the server does not know the stems yet
        continue;
      }
      if (!mixer) {
        const total = info.total_samples ?? Math.round((duration || 0) * (info.sample_rate || 44100));
        if (tooBig(total, info.stems)) return; // the result player will not play it either
        mixer = new LiveMixer(player.audioContext(), { stems: info.stems, sampleRate: info.sample_rate, totalSamples: total });
        if (signal.aborted) return;
        player.goLive(mixer);
        log("live_mixer", { stems: info.stems });
      }
      mixer.setTotal(info.total_samples);
      const segments = Array.isArray(info.segments) ? info.segments : [];
      while (next < segments.length && !signal.aborted) {
        const segment = segments[next];
        const buffers = await fetchSegment(job, info.stems, segment.index ?? next, mixer.context, signal);
        if (signal.aborted) return;
        if (tooBig(segment.end, info.stems)) {
          await player.dropLive(); // a song of unknown length outgrew the budget
          return;
        }
        mixer.addSegment(segment, buffers);
        log("live_segment", { index: next, end: segment.end, contextTime: mixer.context.currentTime });
        next += 1;
      }
      if (info.complete && next >= segments.length) {
        mixer.finish();
        log("live_complete", { seconds: mixer.ready });
        return;
      }
      await sleep(POLL_MS, signal);
    }
  }

  /** Segment `index` of every stem, decoded: {stem: AudioBuffer}. */
  async function fetchSegment(job, stems, index, context, signal) {
    const decoded = await Promise.all(
      stems.map(async (stem) => {
        const response = await partialRequest(job, `/${encodeURIComponent(stem)}/${index}`, signal);
        const data = await response.arrayBuffer();
        return [stem, await context.decodeAudioData(data)];
      }),
    );
    return Object.fromEntries(decoded);
  }

  return {
    offer,
    /**
     * The job is done: resolves once the live player has every segment (the result player then takes its
     * audio) or has stopped listening; after FINISH_MS at most (the result then decodes its own files).
     */
    async finish() {
      if (!run) return;
      let timer = null;
      await Promise.race([run.done, new Promise((resolve) => (timer = setTimeout(resolve, FINISH_MS)))]);
      clearTimeout(timer);
    },
    /** The job ended (or the page let it go): stop downloading; the player decides about the sound. */
    stop() {
      if (run) run.controller.abort();
      run = null;
    },
    get active() {
      return Boolean(run);
    },
  };
}
