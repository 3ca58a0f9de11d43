// Separating on this device (device.js: nothing is uploaded, no session key), the page's side, once "Where
// to separate" (device-choice.js) says so: the song decoded by the browser, the engine's worker followed on
// the work card, each finished block played at once (stream.js's LiveMixer, as a server's progressive results
// are) and written into the stems' WAV files (stemfiles.js), which go to the result card at the end (the same
// player, downloads and mix export as a server's result). Of the song's length the page holds the live
// player's audio (which the result player takes over) and the WAV files: the decoded song goes to the
// worker, and each block's floats go only to those two.
//
// A run resolves like job.js's: {kind: "result"}, {kind: "cancelled"} or {kind: "problem", problem}.
import { decodeSong, SAMPLE_RATE, separateOnDevice } from "./device.js";
import { createDeviceChoice, DEVICE_ONLY } from "./device-choice.js";
import { $ } from "./dom.js";
import { StemFiles } from "./stemfiles.js";
import { LiveMixer } from "./stream.js";
import { formatBytes, formatClock, Problem } from "./text.js";

const EARLY_PHASES = ["check", "upload", "queue"]; // steps of a server run that a device run has not

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
  const choice = createDeviceChoice({ song, log });
  let run = null; // the AbortController of the run in progress
  let last = null; // the last device run, for tests: {names, info} (and stems, input: view.keep)
  let serverHint = null; // the work card's words about leaving the page, for a server's run

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
    if (choice.deviceOnly && choice.obstacle()) {
      // The server takes no uploads: say why nothing can be done here instead of trying.
      return { kind: "problem", problem: new Problem("device_only", `${DEVICE_ONLY} ${choice.obstacle()}`) };
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
        precision: view.precision,
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
      choice.ran(options.model, outcome.info, length / SAMPLE_RATE); // the next default goes by this speed
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
    choice.wire();
    screens.onShow((card) => {
      if (card === "work") $("delete").hidden = false; // a new run: a server's result can be deleted again
    });
  }

  /** For tests (window.freestems.device): the last run's facts (and floats, with `keep`); why it cannot run. */
  const view = {
    keep: false, // keep the last run's floats (the song's decoded samples and the stems)
    precision: "auto", // which network file a run takes (device/files.js chooseFile); benches try "int8"
    last: () => last,
    unavailable: choice.unavailable,
    advice: choice.advice,
  };

  return {
    wire,
    useConfig: choice.useConfig,
    /** The song chosen changed (its length: the memory it needs). */
    songChanged: choice.refresh,
    separate,
    cancel,
    /** The person chose to separate on this device (and can). */
    get chosen() {
      return choice.chosen();
    },
    get running() {
      return Boolean(run);
    },
    view,
  };
}
