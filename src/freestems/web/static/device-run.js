// "Where to separate": on our server (the upload, job.js) or on this device (device.js: nothing is uploaded,
// no session key). This module adds the choice to the form when the server has models exported for the
// browser (GET /config's device_models), says why it cannot be chosen when it cannot (no runtime on the
// server, an old browser, a model that runs only on the server), and runs a separation on the device: the
// song decoded by the browser, the engine's worker followed on the work card, each finished block played
// at once (stream.js's LiveMixer, as a server's progressive results are) and written into the stems' WAV
// files (stemfiles.js), which go to the result card at the end (the same player, downloads and mix export
// as a server's result). Of the song's length the page holds the live player's audio (which the result
// player takes over) and the WAV files: the decoded song goes to the worker, and each block's floats go
// only to those two.
//
// A server that separates only on the device (GET /config's device_only) gets no "On our server" choice: the
// form says plainly that the song is separated in this browser, and nothing is ever uploaded.
//
// A run resolves like job.js's: {kind: "result"}, {kind: "cancelled"} or {kind: "problem", problem}.
import { decodeSong, deviceSupport, keepOffline, modelFacts, SAMPLE_RATE, separateOnDevice } from "./device.js";
import { memoryAvailable, memoryNeeded, probeMs, remember, speedOf } from "./device-speed.js";
import { $ } from "./dom.js";
import { StemFiles } from "./stemfiles.js";
import { LiveMixer } from "./stream.js";
import { formatBytes, formatClock, Problem } from "./text.js";

const EARLY_PHASES = ["check", "upload", "queue"]; // steps of a server run that a device run has not
const DEVICE_ONLY = "This server separates on your own device: nothing is uploaded.";
const DEVICE_ONLY_FOOTER = "Your song never leaves this browser: the stems are made on your device, and nothing is sent to the server.";

function choiceLabel(value, title, words) {
  const label = document.createElement("label");
  label.className = "choice";
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "where";
  input.value = value;
  input.checked = value === "server";
  const text = document.createElement("span");
  const strong = document.createElement("strong");
  strong.textContent = title;
  const small = document.createElement("small");
  small.textContent = words;
  text.append(strong, small);
  label.append(input, text);
  return label;
}

/** The fieldset of the choice, put after the model's. */
function buildChoice() {
  const fieldset = document.createElement("fieldset");
  fieldset.className = "field";
  fieldset.id = "where";
  fieldset.hidden = true;
  const legend = document.createElement("legend");
  legend.textContent = "Where to separate";
  const choices = document.createElement("div");
  choices.className = "choices";
  choices.id = "where-choices";
  choices.append(
    choiceLabel("server", "On our server", "Faster; the song is uploaded, and deleted after the separation"),
    choiceLabel("device", "On this device (nothing is uploaded)", "Your song stays in this browser; slower, WAV files"),
  );
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.id = "where-hint";
  hint.setAttribute("aria-live", "polite");
  fieldset.append(legend, choices, hint);
  fieldset.setAttribute("aria-describedby", "where-hint");
  const models = $("models").closest("fieldset");
  models.after(fieldset);
  return fieldset;
}

function warnBeforeLeaving(event) {
  event.preventDefault();
  event.returnValue = "";
}

/** {stem: AudioBuffer} of `stems` ({stem: [Float32Array per channel]}), for the live player. */
function audioBuffers(stems) {
  const buffers = {};
  for (const [name, channels] of Object.entries(stems)) {
    const buffer = new AudioBuffer({ numberOfChannels: channels.length, length: channels[0].length, sampleRate: SAMPLE_RATE });
    channels.forEach((channel, c) => buffer.copyToChannel(channel, c));
    buffers[name] = buffer;
  }
  return buffers;
}

/**
 * `present(archive, file, options)` shows a result (the result card); `prepareAudio()` runs during the
 * click (an audio context made then may play later).
 */
export function createDevice({ screens, messages, song, player, log, present, prepareAudio }) {
  let fieldset = null;
  let config = null;
  let unavailable = "checking"; // "" when this page can separate on the device, else why not
  let run = null; // the AbortController of the run in progress
  let last = null; // the last device run, for tests: {names, info} (and stems, input: view.keep)
  let relaxed = false; // the song is checked without the upload's size limit
  let serverHint = null; // the work card's words about leaving the page, for a server's run
  let touched = false; // the person chose where: the page no longer chooses for them
  let advising = false; // the page is setting the choice itself
  let probe = null; // device-speed.js's probe, milliseconds (null: not run)
  const facts = {}; // model -> modelFacts (null: none), as they come
  let serverWords = null; // the format's and the passes' hints, for a server's run

  function chosenModel() {
    const chosen = document.querySelector('input[name="model"]:checked');
    return chosen ? chosen.value : config && config.model;
  }

  /** Why the device cannot be chosen now ("" when it can): the browser, the runtime, the model chosen. */
  function obstacle() {
    if (unavailable === "checking") return "Checking whether this browser can separate on this device…";
    if (unavailable) return `Separating on this device is unavailable: ${unavailable}.`;
    if (!(config.deviceModels || []).includes(chosenModel())) return "The chosen model runs only on our server.";
    return "";
  }

  /**
   * Where the page would separate, and why ({device, words}), while the person has not chosen: the device
   * where it keeps up with the music and has the memory for the song, else our server. Null until the
   * probe and the model's facts are in.
   */
  function advice() {
    const model = chosenModel();
    const known = facts[model];
    if (probe === null || !known) return null;
    const seconds = song.duration;
    const needed = seconds ? memoryNeeded(seconds, known.stems) : 0;
    const available = memoryAvailable();
    if (available !== null && needed > available) {
      const size = formatBytes(needed * 1024 * 1024);
      return { device: false, words: `Our server is chosen for you: a song this long needs about ${size} of memory in this browser, more than this device should give it.` };
    }
    const { realtime, measured } = speedOf(model, { probe, bytes: known.fp32Bytes });
    const pace = `${realtime.toFixed(1)} s of music per second`;
    const how = measured ? `it separated ${pace} last time` : `it should separate about ${pace} (estimated)`;
    if (realtime >= 1) return { device: true, words: `On this device is chosen for you: ${how}, faster than the music plays.` };
    return { device: false, words: `Our server is chosen for you: on this device ${how}, slower than the music plays.` };
  }

  /** What a device run of the chosen model downloads first, in words. */
  function downloadWords() {
    const known = facts[chosenModel()];
    if (known && known.kept) return "the model is already in this browser.";
    return known ? `the first run downloads the model once (${formatBytes(known.bytes)}).` : "the first run downloads the model once.";
  }

  /** Shows the choice as it can be made now (the model chosen, the runtime there or not, the advice). */
  function refresh() {
    if (!fieldset || !config) return;
    const models = config.deviceModels || [];
    fieldset.hidden = models.length === 0 && !config.deviceOnly;
    const device = fieldset.querySelector('input[value="device"]');
    const why = obstacle();
    const made = `The stems are made in this browser, as WAV files, in one pass; ${downloadWords()}`;
    if (config.deviceOnly) {
      // The one way here: no choice to make, only what it means (or why this browser cannot).
      $("where-choices").hidden = true;
      device.checked = true;
      $("where-hint").textContent = why ? `${DEVICE_ONLY} ${why}` : `${DEVICE_ONLY} ${made}`;
    } else {
      device.disabled = Boolean(why);
      device.closest("label").classList.toggle("is-disabled", device.disabled);
      const server = fieldset.querySelector('input[value="server"]');
      if (device.disabled && device.checked) server.checked = true;
      const suggested = why || touched ? null : advice();
      const pick = suggested && (suggested.device ? device : server);
      if (pick && !pick.checked) {
        pick.checked = true;
        advising = true; // the form's other listeners (the cost) hear of it; this one does not count it as chosen
        pick.dispatchEvent(new Event("change", { bubbles: true }));
        advising = false;
      }
      const words = [suggested ? suggested.words : "", chosen() ? made : ""].filter(Boolean).join(" ");
      $("where-hint").textContent = why || words;
    }
    // Nothing is uploaded: the upload's size limit does not apply (the length limit does: memory). The
    // stems come as WAV files from one pass: the format and the passes are the server's choices.
    const onDevice = chosen();
    showServerOptions(onDevice);
    $("size-limit").hidden = onDevice; // the hint names the length limit only
    if (onDevice !== relaxed) {
      relaxed = onDevice;
      song.useConfig(onDevice ? { ...config, limits: { ...config.limits, max_upload_mb: Infinity } } : config);
    }
  }

  /**
   * The file format and the passes: a device-only server has neither (the hint above says WAV files, one
   * pass); on a server that has both, they are disabled while the device is chosen, and their hints say why.
   */
  function showServerOptions(onDevice) {
    const hints = [$("format-hint"), $("shifts-hint")];
    if (!serverWords) serverWords = hints.map((hint) => hint.textContent);
    $("format").closest(".field-row").hidden = Boolean(config.deviceOnly);
    $("format").disabled = onDevice;
    $("shifts").disabled = onDevice;
    const deviceWords = [
      "On this device the stems are WAV files (lossless): the other formats are made on our server.",
      "On this device the stems come from one pass: more passes run on our server.",
    ];
    hints.forEach((hint, i) => {
      hint.textContent = onDevice ? deviceWords[i] : serverWords[i];
    });
  }

  function chosen() {
    if (config && config.deviceOnly) return true;
    const picked = document.querySelector('input[name="where"]:checked');
    return Boolean(picked && picked.value === "device");
  }

  async function useConfig(loaded) {
    config = loaded;
    if (!fieldset) fieldset = buildChoice();
    if (config.deviceOnly) {
      fieldset.querySelector("legend").textContent = "Where it is separated";
      $("where-hint").classList.add("notice", "notice-device");
      $("privacy-words").textContent = DEVICE_ONLY_FOOTER;
    }
    refresh();
    if (!(config.deviceModels || []).length) return;
    unavailable = await deviceSupport(config.deviceModels);
    log("device_support", { available: !unavailable, reason: unavailable });
    refresh();
    if (!unavailable) {
      probe = probeMs();
      await learn(chosenModel());
      log("device_advice", { probe_ms: probe, ...(advice() || {}) });
    }
    if (!unavailable) {
      keepOffline()
        .then((registered) => log("offline", { registered }))
        .catch((error) => log("offline", { registered: false, message: error && error.message }));
    }
  }

  /** Reads what a device run of `model` would download (once per model and page), then shows it. */
  async function learn(model) {
    if (!model || model in facts || !(config.deviceModels || []).includes(model)) return;
    facts[model] = null;
    facts[model] = await modelFacts(model);
    refresh();
  }

  /** The work card for a device run (`device`) or a server's: its steps, and what leaving the page does. */
  function showPhases(device) {
    for (const item of document.querySelectorAll("#phases li")) {
      if (EARLY_PHASES.includes(item.dataset.phase)) item.hidden = device;
    }
    const hint = $("cancel").parentElement.querySelector(".hint");
    if (device) {
      serverHint = hint.textContent;
      hint.textContent = "Nothing is uploaded. If you close this page the separation stops: keep it open until the end.";
      window.addEventListener("beforeunload", warnBeforeLeaving);
    } else {
      if (serverHint !== null) hint.textContent = serverHint;
      window.removeEventListener("beforeunload", warnBeforeLeaving);
    }
  }

  /** The work card's words for the worker's status, download and progress messages. */
  function showProgress(message, length) {
    if (message.type === "status") messages.setProgress(message.words, null);
    else if (message.type === "download") {
      messages.setProgress(`Downloading the model (once): ${formatBytes(message.received)} of ${formatBytes(message.total)}`, message.received / message.total);
    } else if (message.type === "progress") {
      const words = message.done === 0 ? "Separating on this device…" : `Separating on this device: ${formatClock(Math.min(length, (message.done / message.total) * length) / SAMPLE_RATE)} of ${formatClock(length / SAMPLE_RATE)}`;
      messages.setProgress(words, message.done / message.total);
    }
  }

  /**
   * Where the worker's blocks of a song of `length` samples go: each into the stems' WAV files and then to
   * the live player (made with the first block), which plays it at once. `finish()` gives the files.
   */
  function blockTaker(length) {
    let files = null;
    let live = null;
    return {
      firstBlock: null,
      take(message, began) {
        if (this.firstBlock === null) this.firstBlock = (performance.now() - began) / 1000;
        if (message.provisional) {
          // The short first chunk's: heard until the first whole block replaces it, never in the files.
          log("device_first_sound", { seconds: this.firstBlock, samples: message.to });
          messages.setProgress(`Separating on this device: the first ${formatClock(message.to / SAMPLE_RATE)} play while the rest is separated…`, 0);
        } else {
          files = files || new StemFiles(message.names, message.stems[0].length, length, SAMPLE_RATE);
          files.write(message.from, message.stems);
        }
        if (!live) {
          live = new LiveMixer(player.audioContext(), { stems: message.names, sampleRate: SAMPLE_RATE, totalSamples: length });
          player.goLive(live);
        }
        const named = Object.fromEntries(message.names.map((name, s) => [name, message.stems[s]]));
        live.addSegment({ start: message.from, end: message.to }, audioBuffers(named), { provisional: Boolean(message.provisional) });
      },
      finish() {
        if (!files) throw new Error("the song has no samples to separate");
        live.finish();
        return files;
      },
    };
  }

  /** Separates `file` with `options` (the form's) on this device. */
  async function separate(file, options) {
    if (config && config.deviceOnly && obstacle()) {
      // The server takes no uploads: say why nothing can be done here instead of trying.
      return { kind: "problem", problem: new Problem("device_only", `${DEVICE_ONLY} ${obstacle()}`) };
    }
    const mine = new AbortController();
    run = mine;
    messages.showWork(file.name);
    showPhases(true);
    $("work-title").focus();
    prepareAudio();
    log("separate", { options, where: "device" });
    const began = performance.now();
    try {
      messages.setPhase("separate", "Decoding the song in this browser…", null);
      const { channels, length } = await decodeSong(file);
      if (mine.signal.aborted) throw new DOMException("cancelled", "AbortError");
      log("device_decoded", { channels: channels.length, length });
      const input = view.keep ? channels : null; // tests compare the floats; else the worker takes the song
      const blocks = blockTaker(length);
      const outcome = await separateOnDevice({
        model: options.model,
        channels,
        twoStems: options.twoStems || null,
        keep: view.keep,
        signal: mine.signal,
        on: (message) => {
          if (message.type === "block") blocks.take(message, began);
          else showProgress(message, length);
        },
      });
      const files = blocks.finish();
      const info = { ...outcome.info, first_block_page_s: blocks.firstBlock };
      last = view.keep ? { names: outcome.names, stems: outcome.stems, input, info } : { names: outcome.names, info };
      const { backend, backend_why: why, probe: checked } = outcome.info;
      log("device_done", { ...outcome.info.timings, cached: outcome.info.cached, threads: outcome.info.threads, backend, why, probe_db: checked ? checked.db : null });
      remember(options.model, outcome.info, length / SAMPLE_RATE); // the next default goes by this speed
      if (facts[options.model]) facts[options.model].kept = true;
      messages.setPhase("fetch", "Preparing the player…", null);
      await present(files.archive(), file, { ...options, format: "wav", bitrate: null });
      $("delete").hidden = true; // nothing of it is on the server
      $("result-note").textContent += " Separated on this device: nothing was uploaded.";
      return { kind: "result" };
    } catch (error) {
      if (mine.signal.aborted || (error && error.name === "AbortError")) {
        log("cancelled");
        return { kind: "cancelled" };
      }
      log("device_failed", { message: error && error.message });
      return { kind: "problem", problem: new Problem("device", `The separation on this device failed: ${error && error.message ? error.message : error}`) };
    } finally {
      if (run === mine) run = null;
      showPhases(false);
    }
  }

  function cancel() {
    if (!run) return;
    messages.cancelling();
    run.abort();
  }

  function wire() {
    $("setup").addEventListener("change", (event) => {
      const name = event.target && event.target.name;
      if (advising) return;
      if (name === "where") touched = true; // chosen: kept, whatever the advice
      if (name === "model" || name === "where") refresh();
      if (name === "model" && unavailable === "") learn(chosenModel());
    });
    screens.onShow((card) => {
      if (card === "work") $("delete").hidden = false; // a new run: a server's result can be deleted again
    });
  }

  /** For tests (window.freestems.device): the last run's facts (and floats, with `keep`); why it cannot run. */
  const view = {
    keep: false, // keep the last run's floats (the song's decoded samples and the stems)
    last: () => last,
    unavailable: () => unavailable,
    advice: () => ({ probe, touched, ...(advice() || {}) }),
  };

  return {
    wire,
    useConfig,
    /** The song chosen changed (its length: the memory it needs). */
    songChanged: refresh,
    separate,
    cancel,
    /** The person chose to separate on this device (and can). */
    get chosen() {
      return chosen();
    },
    get running() {
      return Boolean(run);
    },
    view,
  };
}
