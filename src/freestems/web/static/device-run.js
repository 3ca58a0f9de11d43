// "Where to separate": on our server (the upload, job.js) or on this device (device.js: nothing is uploaded,
// no session key). This module adds the choice to the form when the server has models exported for the
// browser (GET /config's device_models), says why it cannot be chosen when it cannot (no runtime on the
// server, an old browser, a model that runs only on the server), and runs a separation on the device: the
// song decoded by the browser, the engine's worker followed on the work card, each finished block played
// at once (stream.js's LiveMixer, as a server's progressive results are), and the stems handed to the
// result card as WAV files at the end (the same player, downloads and mix export as a server's result).
//
// A server that separates only on the device (GET /config's device_only) gets no "On our server" choice: the
// form says plainly that the song is separated in this browser, and nothing is ever uploaded.
//
// A run resolves like job.js's: {kind: "result"}, {kind: "cancelled"} or {kind: "problem", problem}.
import { decodeSong, deviceSupport, keepOffline, SAMPLE_RATE, separateOnDevice } from "./device.js";
import { $ } from "./dom.js";
import { wavBlob } from "./mixdown.js";
import { LiveMixer } from "./stream.js";
import { formatBytes, formatClock, Problem } from "./text.js";
import { crc32, writeZip } from "./zip.js";

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

/** The zip the result card takes (as a server's): one 16-bit WAV per stem, stored. */
async function wavArchive(stems) {
  const entries = [];
  for (const [name, buffer] of Object.entries(audioBuffers(stems))) {
    const data = new Uint8Array(await wavBlob(buffer).arrayBuffer());
    entries.push({ name: `${name}.wav`, method: 0, crc: crc32(data), packed: data, size: data.length });
  }
  return writeZip(entries).arrayBuffer();
}

/** The engine's two-stem mode: {stem, no_stem = mix - stem}; `from`: where the stem starts in the mix. */
function twoStems(stems, stem, mix, from = 0) {
  const rest = stems[stem].map((channel, c) => {
    const source = mix[Math.min(c, mix.length - 1)];
    const out = new Float32Array(channel.length);
    for (let i = 0; i < channel.length; i += 1) out[i] = source[from + i] - channel[i];
    return out;
  });
  return { [stem]: stems[stem], [`no_${stem}`]: rest };
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

  /** Shows the choice as it can be made now (the model chosen, the runtime there or not). */
  function refresh() {
    if (!fieldset || !config) return;
    const models = config.deviceModels || [];
    fieldset.hidden = models.length === 0 && !config.deviceOnly;
    const device = fieldset.querySelector('input[value="device"]');
    const why = obstacle();
    if (config.deviceOnly) {
      // The one way here: no choice to make, only what it means (or why this browser cannot).
      $("where-choices").hidden = true;
      device.checked = true;
      $("where-hint").textContent = why ? `${DEVICE_ONLY} ${why}` : `${DEVICE_ONLY} The stems are made in this browser, as WAV files, in one pass; the first run downloads the model once.`;
    } else {
      device.disabled = Boolean(why);
      device.closest("label").classList.toggle("is-disabled", device.disabled);
      if (device.disabled && device.checked) fieldset.querySelector('input[value="server"]').checked = true;
      $("where-hint").textContent = why || (chosen() ? "The stems are made in this browser, as WAV files, in one pass; the first run downloads the model once." : "");
    }
    // Nothing is uploaded: the upload's size limit does not apply (the length limit does: memory). The
    // stems come as WAV files from one pass: the format and the passes are the server's choices.
    const onDevice = chosen();
    $("format").disabled = onDevice;
    $("shifts").disabled = onDevice;
    $("size-limit").hidden = onDevice; // the hint names the length limit only
    if (onDevice !== relaxed) {
      relaxed = onDevice;
      song.useConfig(onDevice ? { ...config, limits: { ...config.limits, max_upload_mb: Infinity } } : config);
    }
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
      keepOffline()
        .then((registered) => log("offline", { registered }))
        .catch((error) => log("offline", { registered: false, message: error && error.message }));
    }
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
      let firstBlock = null;
      let live = null; // the LiveMixer playing the finished blocks
      const play = (message) => {
        const named = Object.fromEntries(message.names.map((name, s) => [name, message.stems[s]]));
        const block = options.twoStems ? twoStems(named, options.twoStems, channels, message.from) : named;
        if (!live) {
          live = new LiveMixer(player.audioContext(), { stems: Object.keys(block), sampleRate: SAMPLE_RATE, totalSamples: length });
          player.goLive(live);
        }
        live.addSegment({ start: message.from, end: message.to }, audioBuffers(block));
      };
      const outcome = await separateOnDevice({
        model: options.model,
        channels,
        signal: mine.signal,
        on: (message) => {
          if (message.type === "status") messages.setProgress(message.words, null);
          else if (message.type === "download") {
            messages.setProgress(`Downloading the model (once): ${formatBytes(message.received)} of ${formatBytes(message.total)}`, message.received / message.total);
          } else if (message.type === "progress") {
            const words = message.done === 0 ? "Separating on this device…" : `Separating on this device: ${formatClock(Math.min(length, (message.done / message.total) * length) / SAMPLE_RATE)} of ${formatClock(length / SAMPLE_RATE)}`;
            messages.setProgress(words, message.done / message.total);
          } else if (message.type === "block") {
            if (firstBlock === null) firstBlock = (performance.now() - began) / 1000;
            play(message);
          }
        },
      });
      if (live) live.finish();
      const stems = options.twoStems ? twoStems(outcome.stems, options.twoStems, channels) : outcome.stems;
      const info = { ...outcome.info, first_block_page_s: firstBlock };
      last = view.keep ? { names: Object.keys(stems), stems, input: channels, info } : { names: Object.keys(stems), info };
      const { backend, backend_why: why, probe } = outcome.info;
      log("device_done", { ...outcome.info.timings, cached: outcome.info.cached, threads: outcome.info.threads, backend, why, probe_db: probe ? probe.db : null });
      messages.setPhase("fetch", "Preparing the player…", null);
      const archive = await wavArchive(stems);
      await present(archive, file, { ...options, format: "wav", bitrate: null });
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
      if (event.target && (event.target.name === "model" || event.target.name === "where")) refresh();
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
  };

  return {
    wire,
    useConfig,
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
