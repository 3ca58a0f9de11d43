// The player of the result: every stem decoded into a Mixer (mixer.js), one row per stem (waveform, mute,
// solo, volume, download) and the shared transport (play/pause, seek, master volume, the space bar). A song
// too long for this device's memory gets rows with downloads only.
import { $, show, cssVar } from "./dom.js";
import { createLoop } from "./loop.js";
import { decodedBytes, drawWaveform, Mixer } from "./mixer.js";
import { stemRank, stemWords } from "./names.js";
import { formatBytes, formatClock } from "./text.js";

const DOWNLOAD_ICON =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 4v11m0 0-4.5-4.5M12 15l4.5-4.5M5 19h14" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg><span></span>';
const VOLUME_ICON =
  '<span class="visually-hidden"></span><svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9v6h4l5 4V5L8 9H4z" fill="currentColor"/><path d="M16 8.5a5 5 0 0 1 0 7" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/></svg>';

/** Seconds the seek slider moves per key (arrows 5 s, Page Up/Down 30 s, Home/End the ends). */
const SEEK_KEYS = {
  ArrowLeft: -5,
  ArrowDown: -5,
  ArrowRight: 5,
  ArrowUp: 5,
  PageDown: -30,
  PageUp: 30,
  Home: "start",
  End: "end",
};

/** An audio context at the stems' rate (no resampling), else the browser's default one. */
function makeAudioContext() {
  try {
    return new AudioContext({ sampleRate: 44100, latencyHint: "playback" });
  } catch (ignored) {
    return new AudioContext();
  }
}

/**
 * `budgetOverride()` is a memory budget in bytes set from outside (tests), else undefined; `setProgress`
 * reports the decoding.
 */
export function createPlayer({ log, setProgress, budgetOverride }) {
  let mixer = null;
  let warm = null; // an audio context made during a click may play later without another click
  let frame = 0;
  let dragging = false;
  let startAt = 0; // seconds where the next player starts (a reload resumes where it was)
  let naming = null; // the job whose words and order the stems get (names.js)
  const loop = createLoop({ mixer: () => mixer, render: () => render(), log });

  function prepare() {
    if (warm && warm.state !== "closed") return;
    try {
      warm = makeAudioContext();
    } catch (ignored) {
      warm = null;
    }
  }

  /** The audio context made during the click (or a new one), for a player made elsewhere (stream.js). */
  function audioContext() {
    const context = warm && warm.state !== "closed" ? warm : makeAudioContext();
    warm = null;
    return context;
  }

  /**
   * Plays `live` (a LiveMixer: the stems while they are separated) in the result card, shown under the
   * work card; rows without downloads until the files exist.
   */
  function goLive(live) {
    cancelAnimationFrame(frame);
    mixer = live;
    const controls = mixerControls();
    const names = live.stems.map((stem) => stem.name).sort((a, b) => stemRank(a, naming) - stemRank(b, naming)); // as the result lists them
    $("stems").replaceChildren(...names.map((name) => stemRow(name, stemWords(name, naming), null, null, 0, controls)));
    show("transport", true);
    $("result").classList.add("is-live");
    $("result-heading").textContent = "Listen while it separates";
    $("result").hidden = false;
    $("seek").value = "0";
    if (startAt) live.offset = startAt; // it plays from there once the separation has reached it
    startAt = 0;
    live.on(() => render());
    render();
  }

  /** Decoded stems take 4 bytes per sample and channel: past this many bytes the page offers downloads only. */
  function memoryBudget() {
    const override = budgetOverride();
    if (Number.isFinite(override)) return override;
    const gigabytes = navigator.deviceMemory || 4;
    return Math.min(1.5e9, (gigabytes * 1e9) / 4);
  }

  /**
   * The player of the result's `stems` ({name, data}); resolves with "" or why they cannot be played here.
   * After a live player (stream.js) that has every segment, it is that player's own audio, joined into
   * whole stems; else `stems` decoded into a new mixer. Either takes over from the live player without a
   * gap and lets go of the live player's audio; only when both copies would not fit the memory budget does
   * the live player stop first, and the result go on from where it was.
   */
  async function load(stems) {
    let live = mixer && mixer.live ? mixer : null; // playing while it separated: take over from it
    if (live) {
      const whole = await live.wholeStems(stems.map((stem) => stem.name));
      if (whole) {
        await handOver(live, whole, "live");
        return "";
      }
    }
    let resume = null; // {position, playing, mix} of a live player let go before the decoding
    const context = live ? live.context : audioContext();
    if (live && decodedBytes(live.total || 0, stems.length) * 2 > memoryBudget()) {
      resume = { position: live.position(), playing: live.playing || live.waiting, mix: live.mix() };
      await live.close(true);
      log("live_released", { position: resume.position, playing: resume.playing });
      live = null;
    }
    let decoding = null;
    let noPlayer = "";
    try {
      decoding = new Mixer(context);
      for (const [index, stem] of stems.entries()) {
        setProgress(`Decoding the stems: ${index + 1} of ${stems.length}…`, index / stems.length);
        const added = await decoding.addStem(stem.name, stem.data.slice().buffer);
        const needed = added.buffer.length * added.buffer.numberOfChannels * 4 * stems.length;
        if (index === 0 && needed > memoryBudget()) {
          noPlayer =
            `This song is too long to play in the page on this device (the player would need about ${formatBytes(needed)} ` +
            "of memory). Download the stems to listen to them.";
          throw new Error("over the memory budget");
        }
      }
    } catch (error) {
      noPlayer = noPlayer || `The stems cannot be played in this browser (${error.message}). Download them to listen.`;
      if (decoding) await decoding.close();
      decoding = null;
    }
    if (live && decoding) await handOver(live, decoding, "files");
    else if (live) await live.close(false);
    mixer = decoding;
    if (decoding && !live && startAt) decoding.offset = Math.min(startAt, decoding.duration);
    startAt = 0;
    if (decoding && resume) {
      decoding.setMix(resume.mix);
      decoding.offset = Math.min(resume.position, decoding.duration);
      if (resume.playing) await decoding.play();
    }
    return noPlayer;
  }

  /**
   * `next` (a Mixer of the live player's own audio, `from` "live", or of the result's files, "files") takes
   * over from `live` at the same place, with the same mix; `live` lets go of its audio.
   */
  async function handOver(live, next, from) {
    const { at, ...handover } = await live.handOver(next);
    live.release();
    mixer = next;
    log("handover", { ...handover, from, contextAt: at }); // the log's own `at` is the page clock
  }

  /** One row per stem ({name, fileName, address, data}); the transport when they can be played. */
  function showStems(stems) {
    const controls = mixerControls();
    $("stems").replaceChildren(
      ...stems.map((stem) =>
        stemRow(stem.name, stemWords(stem.name, naming), stem.fileName, stem.address, stem.data.length, mixer ? controls : null),
      ),
    );
    show("transport", Boolean(mixer));
    $("result").classList.remove("is-live");
    if (!mixer) return;
    for (const row of $("stems").children) showMix(row, mixer.stem(row.dataset.stem)); // as it was while live
    $("seek").max = String(mixer.duration);
    $("seek").value = String(mixer.position());
    $("time-total").textContent = formatClock(mixer.duration);
    mixer.on(() => render());
    loop.reset();
  }

  /** What a row's buttons do to the mixer. */
  function mixerControls() {
    return {
      setMuted(name, pressed) {
        mixer.setMuted(name, pressed);
        log("mute", { stem: name, pressed });
      },
      setSoloed(name, pressed) {
        mixer.setSoloed(name, pressed);
        log("solo", { stem: name, pressed });
      },
      setVolume: (name, volume) => mixer.setVolume(name, volume),
      /** A waveform: a click jumps there, a drag loops the region (loop.js). */
      dragOn: (canvas) =>
        loop.dragOn(
          canvas,
          () => mixer.duration,
          (fraction) => mixer.seek(fraction * mixer.duration).then(render),
        ),
    };
  }

  /** The transport and the rows as the mixer is now; again every frame while it plays. */
  function render() {
    if (!mixer) return;
    const position = mixer.position();
    const play = $("play");
    const playing = mixer.playing || Boolean(mixer.waiting); // waiting for the separation counts as playing
    play.dataset.playing = String(playing);
    play.setAttribute("aria-label", playing ? "Pause" : "Play");
    play.title = playing ? "Pause (space)" : "Play (space)";
    if (mixer.live) renderLive();
    if (!dragging) $("seek").value = String(position);
    $("time-now").textContent = formatClock(dragging ? Number($("seek").value) : position);
    const separated = mixer.live && !mixer.complete ? ` (${formatClock(mixer.ready)} separated so far)` : "";
    $("seek").setAttribute("aria-valuetext", `${formatClock(position)} of ${formatClock(mixer.duration)}${separated}`);
    const targets = mixer.targets();
    for (const row of $("stems").children) row.classList.toggle("is-silent", targets[row.dataset.stem] === 0);
    draw();
    cancelAnimationFrame(frame);
    if (mixer.playing) frame = requestAnimationFrame(render);
  }

  /**
   * The seek bar spans the whole song and shows how much is played and how far the stems exist; the line
   * under it says when playback waits for them.
   */
  function renderLive() {
    const seek = $("seek");
    const duration = mixer.duration || 0;
    const percent = (seconds) => `${duration ? Math.min(100, (100 * seconds) / duration) : 0}%`;
    seek.max = String(duration || 1);
    seek.style.setProperty("--ready", percent(mixer.ready));
    seek.style.setProperty("--played", percent(dragging ? Number(seek.value) : mixer.position()));
    $("time-total").textContent = formatClock(duration);
    let words = "";
    if (!mixer.segments.length) words = "The first seconds of the stems are on their way…";
    else if (mixer.starting) words = "The first seconds are ready: press Play to listen.";
    else if (mixer.waiting) words = `Waiting for the separation: ${formatClock(mixer.ready)} is ready so far. Playback goes on by itself.`;
    else if (!mixer.complete) words = `Playing what is separated so far (${formatClock(mixer.ready)}); the rest follows.`;
    else words = "Everything is separated; the files are on their way.";
    if ($("live-status").textContent !== words) $("live-status").textContent = words;
  }

  function draw() {
    if (!mixer || $("result").hidden) return;
    const progress = mixer.duration ? mixer.position() / mixer.duration : 0;
    const line = cssVar("--text");
    for (const row of $("stems").children) {
      const stem = mixer.stem(row.dataset.stem);
      const canvas = row.querySelector("canvas");
      if (!canvas) continue;
      const region = mixer.loop && mixer.duration ? { from: mixer.loop.start / mixer.duration, to: mixer.loop.end / mixer.duration } : null;
      const heard = stem.alternate && stem.choice === "b" ? stem.alternate : stem; // A or B (compare.js)
      drawWaveform(canvas, heard.peaks, progress, { line, color: row.style.getPropertyValue("--stem") || cssVar("--stem-other"), region });
    }
  }

  /** Lets go of the player; `keepLive`: a live player stays for `load` to take over from it. */
  async function dispose({ keepLive = false } = {}) {
    cancelAnimationFrame(frame);
    $("result").classList.remove("is-live");
    if (mixer && mixer.live && keepLive) return;
    if (mixer) {
      const closing = mixer;
      mixer = null;
      await closing.close();
    }
    $("stems").replaceChildren();
  }

  function wire() {
    loop.wire();
    $("play").addEventListener("click", () => mixer && mixer.toggle());
    const seek = $("seek");
    seek.addEventListener("input", () => {
      dragging = true;
      render();
    });
    seek.addEventListener("change", async () => {
      dragging = false;
      if (mixer) await mixer.seek(Number(seek.value));
      render();
    });
    seek.addEventListener("keydown", (event) => {
      const step = SEEK_KEYS[event.key];
      if (step === undefined || !mixer || event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault(); // the slider's own step (0.1 s) is too small to move through a song
      const to = step === "start" ? 0 : step === "end" ? mixer.duration : mixer.position() + step;
      mixer.seek(Math.min(mixer.duration, Math.max(0, to)));
      render();
    });
    $("master").addEventListener("input", () => mixer && mixer.setMasterVolume(Number($("master").value)));
    document.addEventListener("keydown", (event) => {
      if (event.key !== " " || event.repeat || !mixer || $("result").hidden) return;
      if (event.altKey || event.ctrlKey || event.metaKey) return;
      // Space plays and pauses anywhere, sliders included; only where Space has its own meaning (a button
      // presses, a text field types, a list opens) is it left alone.
      const target = event.target;
      const own = target && (target.closest("button, select, textarea, summary, input:not([type=range])") || target.isContentEditable);
      if (own) return;
      event.preventDefault();
      mixer.toggle();
    });
    new ResizeObserver(() => draw()).observe($("stems"));
  }

  /** The live player goes (its song outgrew the memory budget): its sound stops and its card hides. */
  async function dropLive() {
    if (!mixer || !mixer.live) return;
    const live = mixer;
    mixer = null;
    cancelAnimationFrame(frame);
    await live.close(true);
    if (!warm || warm.state === "closed") warm = live.context; // a context the click let play, for the result
    $("stems").replaceChildren();
    $("result").classList.remove("is-live");
    $("result").hidden = true;
  }

  /** Plays the result from where it is (a result from the server's cache plays as a fresh one does). */
  async function play() {
    if (mixer && !mixer.live && !mixer.playing) await mixer.play();
    render();
  }

  return {
    prepare,
    audioContext,
    memoryBudget,
    play,
    /** The next player (live or not) starts at `seconds` rather than at 0:00. */
    startAt(seconds) {
      startAt = Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
    },
    /** The stems from now on are named and ordered for `job` (null: by their names alone). */
    useNaming(job) {
      naming = job || null;
    },
    goLive,
    dropLive,
    load,
    showStems,
    render,
    draw,
    dispose,
    wire,
    /** The mixer now (null without a player): for the export of the mix. */
    current: () => mixer,
    /** Seconds of the song (0 without a player). */
    get duration() {
      return mixer ? mixer.duration : 0;
    },
    get playable() {
      return Boolean(mixer);
    },
    /** The result's Mixer (null without a player): compare.js adds the second model's stems to it. */
    get mixer() {
      return mixer;
    },
    /** What the audio graph does now, for tests (window.freestems.mixer). */
    view: {
      gains: () => (mixer ? mixer.gains() : null),
      targets: () => (mixer ? mixer.targets() : null),
      playing: () => Boolean(mixer && mixer.playing),
      position: () => (mixer ? mixer.position() : 0),
      duration: () => (mixer ? mixer.duration : 0),
      contextState: () => (mixer ? mixer.context.state : null),
      /** The region that loops ({start, end} seconds), or null; and whether every source loops it. */
      loop: () => (mixer && mixer.loop ? { ...mixer.loop } : null),
      sourcesLoop: () =>
        Boolean(mixer && mixer.sources.length && mixer.sources.every((source) => source.loop && source.loopStart === mixer.loop.start && source.loopEnd === mixer.loop.end)),
      /** The live player's state ({ready, waiting, complete}), null when the stems are whole. */
      live: () =>
        mixer && mixer.live
          ? {
              ready: mixer.ready,
              waiting: mixer.waiting,
              complete: mixer.complete,
              segments: mixer.segments.map((entry) => [entry.start, entry.end, entry.provisional]),
            }
          : null,
      /** A stem's GainNode and the context (tests tap what each stem plays). */
      stemNode: (name) => (mixer ? mixer.stem(name).gain : null),
      context: () => (mixer ? mixer.context : null),
    },
  };
}

/** A row's buttons and slider as the mixer's stem is (muted, soloed, volume). */
function showMix(row, stem) {
  const mute = row.querySelector(".toggle-mute");
  const solo = row.querySelector(".toggle-solo");
  const volume = row.querySelector(".volume");
  if (mute) mute.setAttribute("aria-pressed", String(stem.muted));
  if (solo) solo.setAttribute("aria-pressed", String(stem.soloed));
  if (volume) {
    volume.value = String(stem.volume);
    volume.setAttribute("aria-valuetext", `${Math.round(stem.volume * 100)}%`);
  }
}

/**
 * A stem's row, titled `words`; `controls` (null: downloads only) is what its mute, solo, volume and
 * waveform do.
 */
function stemRow(name, words, downloadName, blobUrl, size, controls) {
  const row = document.createElement("li");
  row.className = controls ? "stem" : "stem stem-download-only";
  row.dataset.stem = name;
  row.style.setProperty("--stem", cssVar(`--stem-${name.startsWith("no_") ? "rest" : name}`) || cssVar("--stem-other"));

  const head = document.createElement("div");
  head.className = "stem-head";
  const title = document.createElement("h3");
  title.className = "stem-name";
  title.id = `stem-${name}-title`;
  title.textContent = words;
  head.append(title);

  const tail = document.createElement("div");
  tail.className = "stem-tail";
  if (blobUrl) tail.append(downloadLink(words, downloadName, blobUrl, size)); // none while it separates
  if (!controls) {
    row.append(head, tail);
    return row;
  }
  const buttons = document.createElement("div");
  buttons.className = "stem-buttons";
  buttons.append(
    toggleButton("Mute", words, "mute", (pressed) => controls.setMuted(name, pressed)),
    toggleButton("Solo", words, "solo", (pressed) => controls.setSoloed(name, pressed)),
  );
  head.append(buttons);
  tail.prepend(...volumeControl(name, words, controls));
  row.append(head, waveCanvas(words, controls), tail);
  return row;
}

function downloadLink(words, downloadName, blobUrl, size) {
  const download = document.createElement("a");
  download.className = "button button-small";
  download.href = blobUrl;
  download.download = downloadName;
  download.innerHTML = DOWNLOAD_ICON;
  download.lastChild.textContent = "Download";
  download.setAttribute("aria-label", `Download ${words} (${formatBytes(size)})`);
  return download;
}

/** A pressed/not pressed button ("Mute Vocals" to a screen reader); `onToggle(pressed)` after each press. */
function toggleButton(verb, words, kind, onToggle) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `toggle toggle-${kind}`;
  button.setAttribute("aria-pressed", "false");
  button.textContent = verb;
  const hidden = document.createElement("span");
  hidden.className = "visually-hidden";
  hidden.textContent = ` ${words}`;
  button.append(hidden);
  button.addEventListener("click", () => {
    const pressed = button.getAttribute("aria-pressed") !== "true";
    button.setAttribute("aria-pressed", String(pressed));
    onToggle(pressed);
  });
  return button;
}

/** The waveform; a click jumps there. */
function waveCanvas(words, controls) {
  const canvas = document.createElement("canvas");
  canvas.className = "wave";
  canvas.setAttribute("aria-hidden", "true");
  canvas.title = `${words}: click to jump there, drag to loop a part`;
  controls.dragOn(canvas);
  return canvas;
}

/** The stem's volume slider and its label. */
function volumeControl(name, words, controls) {
  const volumeId = `volume-${name}`;
  const label = document.createElement("label");
  label.htmlFor = volumeId;
  label.className = "volume-label";
  label.innerHTML = VOLUME_ICON;
  label.firstChild.textContent = `${words} volume`;
  const volume = document.createElement("input");
  volume.type = "range";
  volume.id = volumeId;
  volume.min = "0";
  volume.max = "1";
  volume.step = "0.01";
  volume.value = "1";
  volume.className = "volume";
  volume.setAttribute("aria-valuetext", "100%");
  volume.addEventListener("input", () => {
    controls.setVolume(name, Number(volume.value));
    volume.setAttribute("aria-valuetext", `${Math.round(Number(volume.value) * 100)}%`);
  });
  return [label, volume];
}
