// The form's choices, filled from the server's description (GET /config): the limits in the hint, the stem to
// take out, the models, the file formats and the passes; then read back as the options of one separation
// and turned into the upload's form fields. The choices live in the form itself: no state here.
import { $ } from "./dom.js";
import { chosenJob } from "./jobs.js";
import { stemWords } from "./names.js";
import { formatDuration, formatLimitMB } from "./text.js";

export function fillOptions(config) {
  fillLimits(config);
  fillCredit(config);
  fillModels(config);
  fillTwoStems(chosenStems(config));
  fillFormats(config);
  fillShifts(config.limits);
}

function option(value, words, selected = false) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = words;
  if (selected) element.selected = true;
  return element;
}

function fillLimits(config) {
  const { limits } = config;
  for (const node of document.querySelectorAll('[data-limit="size"]')) node.textContent = formatLimitMB(limits.max_upload_mb);
  for (const node of document.querySelectorAll('[data-limit="duration"]')) node.textContent = formatDuration(limits.max_duration);
  if (config.resultTtl) $("ttl-words").textContent = `after ${formatDuration(config.resultTtl)}`;
}

/** The footer names the models this server runs (it says SCNet, with its paper, when only SCNets run). */
function fillCredit(config) {
  const served = config.models.filter((entry) => entry.available);
  if (served.length && !served.every((entry) => entry.name.startsWith("scnet"))) {
    $("credit").textContent = served.map((entry) => entry.title || entry.name).join(", ");
  }
}

/** The stems one can take out with the chosen model (a one-stem model: its stem; not the rest). */
function chosenStems(config) {
  const chosen = document.querySelector('input[name="model"]:checked');
  const model = chosen && config.models.find((entry) => entry.name === chosen.value);
  const stems = model && model.stems ? model.stems.filter((stem) => !stem.startsWith("no_")) : null;
  return stems && stems.length ? stems : config.sources;
}

function fillTwoStems(sources) {
  const before = $("two-stems").value;
  $("two-stems").replaceChildren(
    ...sources.map((source) => option(source, source === "vocals" ? "Vocals (karaoke)" : stemWords(source), source === "vocals")),
  );
  if (sources.includes(before)) $("two-stems").value = before;
}

/** Only the models this server runs: the rest of the catalog cannot be chosen here, so it is not shown. */
function fillModels(config) {
  const served = config.models.filter((model) => model.available);
  $("models").replaceChildren(...served.map((model) => modelChoice(model, model.name === config.model)));
}

/**
 * What a person weighs when choosing: the stems, the published SDR, the time relative to the fastest; what
 * is not known is said so (a model served from a file has no published SDR and no measured speed).
 */
export function modelFacts(model) {
  const parts = [];
  const job = (model.jobs || [])[0] || null; // a de-reverb model's "dry" is without reverb (names.js)
  if (model.stems) parts.push(model.stems.map((stem) => stemWords(stem, job)).join(", "));
  const sdr = model.sdr || {};
  const stems = Object.entries(sdr).filter(([stem, value]) => stem !== "avg" && Number.isFinite(value));
  if (Number.isFinite(sdr.avg)) parts.push(`SDR ${sdr.avg.toFixed(2)} dB`);
  else if (stems.length) parts.push(`SDR ${stems.map(([stem, value]) => `${stemWords(stem, job).toLowerCase()} ${value.toFixed(2)}`).join(", ")} dB`);
  else parts.push("SDR not measured");
  if (Number.isFinite(model.relativeCost)) {
    parts.push(model.relativeCost <= 1 ? "fastest" : `about ${model.relativeCost}× slower`);
  } else parts.push("speed not measured");
  return parts;
}

/** A radio button for one model of the catalog: its title, SDR and cost; disabled when it is not served. */
function modelChoice(model, checked) {
  const label = document.createElement("label");
  label.className = "choice choice-model";
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "model";
  input.value = model.name;
  input.disabled = !model.available;
  input.checked = checked;
  input.dataset.jobs = (model.jobs || []).join(" "); // its first job names its stems (names.js)
  const text = document.createElement("span");
  const title = document.createElement("strong");
  title.textContent = model.title;
  const facts = document.createElement("small");
  const parts = modelFacts(model);
  if (!model.available) parts.push("not on this server");
  if (model.sdrSet) facts.title = `SDR as published, measured on ${model.sdrSet}${model.license ? `; weights' licence: ${model.license}` : ""}`;
  facts.textContent = parts.join(" · ");
  text.append(title, facts);
  label.append(input, text);
  if (!model.available) label.classList.add("is-disabled");
  return label;
}

function fillFormats(config) {
  const choices = [];
  if (config.formats.includes("mp3")) {
    for (const rate of [...config.mp3Bitrates].sort((a, b) => b - a)) {
      choices.push([`mp3:${rate}`, `MP3, ${rate} kbps${rate === config.mp3Bitrate ? " (default)" : ""}`]);
    }
  }
  if (config.formats.includes("wav")) choices.push(["wav", "WAV, 16-bit (lossless, large)"]);
  if (config.formats.includes("flac")) choices.push(["flac", "FLAC (lossless, smaller than WAV)"]);
  const chosen = `mp3:${config.mp3Bitrate}`;
  $("format").replaceChildren(...choices.map(([value, words]) => option(value, words, value === chosen)));
}

function fillShifts(limits) {
  const most = Math.max(1, Math.min(10, limits.max_shifts | 0 || 1));
  $("shifts").replaceChildren(
    ...Array.from({ length: most }, (_, index) =>
      option(String(index + 1), index === 0 ? "1 (fastest)" : `${index + 1} (${index + 1}× slower)`),
    ),
  );
}

function twoStemsChosen() {
  return document.querySelector('input[name="stems"]:checked').value === "two";
}

/** The stem to take out can be chosen only with "One stem and the rest". */
export function updateStemsChoice() {
  const two = twoStemsChosen();
  $("two-stems").disabled = !two;
  $("two-stems-field").classList.toggle("is-disabled", !two);
}

export function wireOptions(config) {
  for (const radio of document.querySelectorAll('input[name="stems"]')) radio.addEventListener("change", updateStemsChoice);
  // Each model has its own stems: the stem to take out is one of the chosen model's.
  $("models").addEventListener("change", () => config() && fillTwoStems(chosenStems(config())));
}

/**
 * The chosen options: {job, naming, twoStems, model, format, bitrate, shifts}; `defaultModel` when no model is
 * chosen. `job`: the job picked (null: "Choose the model yourself"); `naming`: the job whose words and order
 * the stems get (names.js): the one picked, else the chosen model's first.
 */
export function readOptions(defaultModel) {
  const model = document.querySelector('input[name="model"]:checked');
  const format = $("format").value || "mp3:192";
  const job = chosenJob();
  return {
    job,
    naming: job || (model && model.dataset.jobs ? model.dataset.jobs.split(" ")[0] : null),
    twoStems: twoStemsChosen() ? $("two-stems").value : null,
    model: model ? model.value : defaultModel,
    format: format.startsWith("mp3") ? "mp3" : format,
    bitrate: format.startsWith("mp3:") ? Number(format.slice(4)) : null,
    shifts: Number($("shifts").value || 1),
  };
}

/** The upload's form (POST jobs): the options as the service's fields, then the file. */
export function formData(file, options) {
  const form = new FormData();
  if (options.twoStems) form.append("two_stems", options.twoStems);
  if (options.model) form.append("model", options.model);
  form.append("mp3", options.format === "mp3" ? "true" : "false");
  if (options.format === "mp3") form.append("mp3_bitrate", String(options.bitrate));
  if (options.format === "flac") form.append("format", "flac");
  if (options.shifts > 1) form.append("shifts", String(options.shifts));
  form.append("audio_file", file, file.name);
  return form;
}
