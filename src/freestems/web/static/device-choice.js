// "Where to separate": on our server (the upload, job.js) or on this device (device-run.js: nothing is
// uploaded, no session key). This module adds the choice to the form when the server has models exported
// for the browser (GET /config's device_models), says why it cannot be chosen when it cannot (no runtime on
// the server, an old browser, a model that runs only on the server), and, until the person chooses, chooses
// for them: the device where it keeps up with the music and has the memory for the song (device-speed.js),
// else our server, saying why and what the model's download weighs.
//
// A server that separates only on the device (GET /config's device_only) gets no "On our server" choice: the
// form says plainly that the song is separated in this browser, and nothing is ever uploaded.
import { deviceSupport, keepOffline, modelFacts } from "./device.js";
import { memoryAvailable, memoryNeeded, probeMs, remember, speedOf } from "./device-speed.js";
import { $ } from "./dom.js";
import { formatBytes } from "./text.js";

export const DEVICE_ONLY = "This server separates on your own device: nothing is uploaded.";
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

/** The choice in the form; `song` (song.js) gives the chosen song's length and takes the limits to check. */
export function createDeviceChoice({ song, log }) {
  let fieldset = null;
  let config = null;
  let unavailable = "checking"; // "" when this page can separate on the device, else why not
  let relaxed = false; // the song is checked without the upload's size limit
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

  /** A device run of `model` ended: its speed is remembered, its file is in this browser now. */
  function ran(model, info, seconds) {
    remember(model, info, seconds);
    if (facts[model]) facts[model].kept = true;
  }

  function wire() {
    $("setup").addEventListener("change", (event) => {
      const name = event.target && event.target.name;
      if (advising) return;
      if (name === "where") touched = true; // chosen: kept, whatever the advice
      if (name === "model" || name === "where") refresh();
      if (name === "model" && unavailable === "") learn(chosenModel());
    });
  }

  return {
    wire,
    useConfig,
    refresh,
    chosen,
    obstacle,
    ran,
    get deviceOnly() {
      return Boolean(config && config.deviceOnly);
    },
    /** For tests: why the device cannot run ("" when it can); the advice and what it rests on. */
    unavailable: () => unavailable,
    advice: () => ({ probe, touched, ...(advice() || {}) }),
  };
}
