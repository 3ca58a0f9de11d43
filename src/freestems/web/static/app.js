// The page: choose a song and options, earn a session key (proof of work in Web Workers), upload, follow
// the job on the WebSocket, then unzip the stems in the browser and mix them live.
//
// A job outlives a dropped connection for a grace period on the server: the page keeps {id, token, name,
// created} of its job in sessionStorage, so a reload (or a phone that dropped the page) follows it again, and
// when the socket drops mid-job it reconnects and follows the job by id and token (the server kept it, or
// resumed it after a restart). A short list of recent separations lives in localStorage.
import { deleteJob, downloadResult, Follower, getJob, loadConfig, Session, uploadJob, url } from "./api.js";
import { drawWaveform, Mixer } from "./mixer.js";
import { solveChallenge } from "./pow.js";
import { capitalize, describe, formatBytes, formatClock, formatDuration, formatLimitMB, Problem } from "./text.js";
import { readZip } from "./zip.js";

const $ = (id) => document.getElementById(id);
const STEM_ORDER = ["vocals", "drums", "bass", "other", "guitar", "piano"];
const STEM_WORDS = { vocals: "Vocals", drums: "Drums", bass: "Bass", other: "Other", guitar: "Guitar", piano: "Piano" };
const KEEPS_KEY = new Set([413, 415, 422, 429]); // refused uploads do not use the session key up
const PHASES = ["check", "upload", "queue", "separate", "fetch"];
const CURRENT_KEY = "freestems.current";
const RECENT_KEY = "freestems.recent";
const RECENT_MAX = 8;
const RECONNECT_GIVE_UP_MS = 10 * 60 * 1000;

const state = {
  config: null,
  file: null,
  fileToken: 0,
  fileOk: false,
  session: null,
  job: null,
  follow: null,
  run: null,
  phase: "setup",
  mixer: null,
  urls: [],
  events: [],
  retryTimer: null,
  lastAnnounced: 0,
  lost: false, // the socket dropped while the job was unfinished: follow it by id and token
  reconnecting: false,
  follower: null,
  maxProgress: 0,
  startedAt: null,
  restartNote: "",
};

// ------------------------------------------------------------------------------------------- storage

function readStorage(storage, key, fallback) {
  try {
    const value = JSON.parse(storage.getItem(key));
    return value === null ? fallback : value;
  } catch (ignored) {
    return fallback; // storage off (private mode) or garbage
  }
}

function writeStorage(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify(value));
  } catch (ignored) {
    // storage off or full: the page still works, it just cannot re-attach after a reload
  }
}

function validEntry(entry) {
  return Boolean(entry && typeof entry.id === "string" && /^[0-9a-f]{16}$/.test(entry.id) && typeof entry.token === "string");
}

/** The job this tab follows ({id, token, name, created, options}), kept across reloads of the tab. */
function saveCurrent(entry) {
  writeStorage(sessionStorage, CURRENT_KEY, entry);
}

function loadCurrent() {
  const entry = readStorage(sessionStorage, CURRENT_KEY, null);
  return validEntry(entry) ? entry : null;
}

function recentEntries() {
  const list = readStorage(localStorage, RECENT_KEY, []);
  return Array.isArray(list) ? list.filter(validEntry).slice(0, RECENT_MAX) : [];
}

function remember(entry) {
  const list = [entry, ...recentEntries().filter((item) => item.id !== entry.id)].slice(0, RECENT_MAX);
  writeStorage(localStorage, RECENT_KEY, list);
}

function forget(id) {
  writeStorage(localStorage, RECENT_KEY, recentEntries().filter((item) => item.id !== id));
}

/** "Recent separations in this browser": links while their results live on the server (404: dropped). */
async function renderRecent() {
  const entries = recentEntries();
  const items = [];
  for (const entry of entries) {
    let view;
    try {
      view = await getJob(entry);
    } catch (error) {
      if (error && error.code === "not_found") forget(entry.id);
      continue;
    }
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "recent-name";
    name.textContent = entry.name || "a song";
    item.append(name, " ");
    if (view.state === "done" && view.result) {
      const link = document.createElement("a");
      link.href = url(view.result.replace(/^\//, ""));
      link.download = `${baseName(entry.name || "song")} - stems.zip`;
      link.textContent = "Download the stems (zip)";
      item.append(link);
    } else {
      const words = { queued: "waiting", running: "separating", failed: "failed", cancelled: "cancelled" }[view.state] || view.state;
      const status = document.createElement("span");
      status.className = "muted";
      status.textContent = `(${words})`;
      item.append(status);
    }
    item.dataset.job = entry.id;
    items.push(item);
  }
  $("recent-list").replaceChildren(...items);
  show("recent", items.length > 0);
  log("recent", { shown: items.length });
}

// ------------------------------------------------------------------------------------------- helpers

function show(id, visible) {
  $(id).hidden = !visible;
}

function log(kind, detail = {}) {
  state.events.push({ kind, ...detail, at: Math.round(performance.now()) });
  if (state.events.length > 500) state.events.shift();
}

function stemWords(name) {
  if (name.startsWith("no_")) {
    const rest = name.slice(3);
    return rest === "vocals" ? "Instrumental (no vocals)" : `Everything but ${rest}`;
  }
  return STEM_WORDS[name] || capitalize(name.replace(/_/g, " "));
}

function stemRank(name) {
  const base = name.startsWith("no_") ? name.slice(3) : name;
  const rank = STEM_ORDER.indexOf(base);
  return (rank < 0 ? STEM_ORDER.length : rank) * 2 + (name.startsWith("no_") ? 1 : 0);
}

function baseName(fileName) {
  const dot = fileName.lastIndexOf(".");
  return (dot > 0 ? fileName.slice(0, dot) : fileName).trim() || "song";
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// ------------------------------------------------------------------------------------------- setup

function fillOptions(config) {
  const { limits } = config;
  for (const node of document.querySelectorAll('[data-limit="size"]')) node.textContent = formatLimitMB(limits.max_upload_mb);
  for (const node of document.querySelectorAll('[data-limit="duration"]')) node.textContent = formatDuration(limits.max_duration);
  if (config.resultTtl) $("ttl-words").textContent = `after ${formatDuration(config.resultTtl)}`;

  const twoStems = $("two-stems");
  twoStems.replaceChildren(
    ...config.sources.map((source) => {
      const option = document.createElement("option");
      option.value = source;
      option.textContent = source === "vocals" ? "Vocals (karaoke)" : stemWords(source);
      option.selected = source === "vocals";
      return option;
    }),
  );

  const models = $("models");
  models.replaceChildren(
    ...config.models.map((model) => {
      const label = document.createElement("label");
      label.className = "choice choice-model";
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "model";
      input.value = model.name;
      input.disabled = !model.available;
      input.checked = model.name === config.model;
      const text = document.createElement("span");
      const title = document.createElement("strong");
      title.textContent = model.title;
      const facts = document.createElement("small");
      const parts = [];
      if (model.sdr && Number.isFinite(model.sdr.avg)) parts.push(`SDR ${model.sdr.avg.toFixed(2)} dB`);
      if (Number.isFinite(model.relativeCost)) {
        parts.push(model.relativeCost <= 1 ? "fastest" : `about ${model.relativeCost}× slower`);
      }
      if (!model.available) parts.push("not on this server");
      facts.textContent = parts.join(" · ") || "the model this server runs";
      text.append(title, facts);
      label.append(input, text);
      if (!model.available) label.classList.add("is-disabled");
      return label;
    }),
  );

  const format = $("format");
  const options = [];
  if (config.formats.includes("mp3")) {
    for (const rate of [...config.mp3Bitrates].sort((a, b) => b - a)) {
      options.push([`mp3:${rate}`, `MP3, ${rate} kbps${rate === config.mp3Bitrate ? " (default)" : ""}`]);
    }
  }
  if (config.formats.includes("wav")) options.push(["wav", "WAV, 16-bit (lossless, large)"]);
  if (config.formats.includes("flac")) options.push(["flac", "FLAC (lossless, smaller than WAV)"]);
  format.replaceChildren(
    ...options.map(([value, words]) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = words;
      option.selected = value === `mp3:${config.mp3Bitrate}`;
      return option;
    }),
  );

  const shifts = $("shifts");
  const most = Math.max(1, Math.min(10, config.limits.max_shifts | 0 || 1));
  shifts.replaceChildren(
    ...Array.from({ length: most }, (_, index) => {
      const option = document.createElement("option");
      option.value = String(index + 1);
      option.textContent = index === 0 ? "1 (fastest)" : `${index + 1} (${index + 1}× slower)`;
      return option;
    }),
  );
}

function updateStemsChoice() {
  const two = document.querySelector('input[name="stems"]:checked').value === "two";
  $("two-stems").disabled = !two;
  $("two-stems-field").classList.toggle("is-disabled", !two);
}

function updateSeparateButton() {
  const ready = Boolean(state.file) && state.fileOk && Boolean(state.config) && state.phase === "setup";
  $("separate").disabled = !ready;
  let hint = "";
  if (!state.config) hint = "Loading the server's settings…";
  else if (!state.file) hint = "Choose a song first.";
  else if (!state.fileOk && !$("file-error").hidden) hint = "Choose another file.";
  else if (!state.fileOk) hint = "Reading the file…";
  $("setup-hint").textContent = hint;
}

/** The audio's length in seconds as the browser reads it from the file's header, or null. */
function probeDuration(file, timeout = 10000) {
  return new Promise((resolve) => {
    const audio = document.createElement("audio");
    const address = URL.createObjectURL(file);
    let finished = false;
    const finish = (value) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      audio.removeAttribute("src");
      audio.load();
      URL.revokeObjectURL(address);
      resolve(Number.isFinite(value) && value > 0 ? value : null);
    };
    const timer = setTimeout(() => finish(null), timeout);
    audio.preload = "metadata";
    audio.onloadedmetadata = () => finish(audio.duration);
    audio.onerror = () => finish(null);
    audio.src = address;
  });
}

function fileError(message) {
  $("file-error").textContent = message;
  show("file-error", Boolean(message));
}

async function chooseFile(file) {
  if (!file || state.phase !== "setup") return;
  const token = (state.fileToken += 1);
  state.file = file;
  state.fileOk = false;
  fileError("");
  $("file-name").textContent = file.name;
  $("file-size").textContent = formatBytes(file.size);
  $("file-duration").textContent = "reading…";
  show("file-info", true);
  $("drop").dataset.state = "chosen";
  $("file-label").textContent = "Choose another file";
  updateSeparateButton();
  log("file", { name: file.name, size: file.size });

  const { limits } = state.config || { limits: { max_upload_mb: Infinity, max_duration: Infinity } };
  if (file.size === 0) {
    $("file-duration").textContent = "none";
    fileError("This file is empty. Choose another file.");
    log("rejected", { reason: "empty" });
    updateSeparateButton();
    return;
  }
  if (file.size > limits.max_upload_mb * 1e6) {
    $("file-duration").textContent = "not read";
    fileError(
      `This file is too big: it is ${formatBytes(file.size)} and the limit is ${formatLimitMB(limits.max_upload_mb)}. ` +
        "Choose a smaller file (an MP3 is much smaller than a WAV).",
    );
    log("rejected", { reason: "size" });
    updateSeparateButton();
    return;
  }
  const duration = await probeDuration(file);
  if (token !== state.fileToken) return; // another file was chosen meanwhile
  if (duration === null) {
    $("file-duration").textContent = "unknown (the server checks it)";
  } else {
    $("file-duration").textContent = formatClock(duration);
    if (duration > limits.max_duration + 0.5) {
      fileError(
        `This song is too long: it lasts ${formatClock(duration)} and the limit is ${formatDuration(limits.max_duration)}. ` +
          "Choose a shorter file.",
      );
      log("rejected", { reason: "duration", duration });
      updateSeparateButton();
      return;
    }
  }
  state.fileOk = true;
  log("accepted", { duration });
  updateSeparateButton();
}

function clearFile() {
  state.fileToken += 1;
  state.file = null;
  state.fileOk = false;
  $("file").value = "";
  fileError("");
  show("file-info", false);
  $("drop").dataset.state = "empty";
  $("file-label").textContent = "Choose a file";
  updateSeparateButton();
}

function readOptions() {
  const two = document.querySelector('input[name="stems"]:checked').value === "two";
  const model = document.querySelector('input[name="model"]:checked');
  const format = $("format").value || "mp3:192";
  return {
    twoStems: two ? $("two-stems").value : null,
    model: model ? model.value : state.config.model,
    format: format.startsWith("mp3") ? "mp3" : format,
    bitrate: format.startsWith("mp3:") ? Number(format.slice(4)) : null,
    shifts: Number($("shifts").value || 1),
  };
}

function buildForm(file, options) {
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

// ------------------------------------------------------------------------------------------- progress

function setPhase(phase, text, fraction = null) {
  const changed = state.phase !== phase;
  state.phase = phase;
  const index = PHASES.indexOf(phase);
  for (const item of document.querySelectorAll("#phases li")) {
    const at = PHASES.indexOf(item.dataset.phase);
    item.dataset.state = at < index ? "done" : at === index ? "active" : "waiting";
    if (at === index) item.setAttribute("aria-current", "step");
    else item.removeAttribute("aria-current");
  }
  setProgress(text, fraction, changed);
  if (changed) log("phase", { phase });
}

function setProgress(text, fraction, announce = false) {
  const bar = $("progress");
  if (fraction === null || !Number.isFinite(fraction)) {
    bar.removeAttribute("value");
    $("progress-number").textContent = "";
  } else {
    const clamped = Math.min(1, Math.max(0, fraction));
    bar.value = clamped;
    $("progress-number").textContent = `${Math.floor(clamped * 100)}%`;
  }
  $("status").textContent = text;
  // The live region speaks on a new phase and at most every 5 s, so screen readers are not flooded.
  const now = performance.now();
  if (announce || now - state.lastAnnounced > 5000) {
    $("announce").textContent = text;
    state.lastAnnounced = now;
  }
  log("progress", { phase: state.phase, text, fraction });
}

function onJobMessage(message) {
  if (state.job && message.id && message.id !== state.job.id) return;
  log("job", { state: message.state, progress: message.progress, position: message.position });
  if (state.lost && state.reconnecting && state.follower && state.follower.socket && state.follower.socket.readyState === WebSocket.OPEN) {
    log("reconnected");
  }
  // A job that starts again (a new start time, or back in the queue after running) was resumed from its
  // beginning by a restarted server: say so, instead of letting the progress drop unexplained.
  const startedAgain =
    (message.state === "queued" && state.maxProgress > 0) ||
    (message.started_at && state.startedAt && message.started_at !== state.startedAt);
  if (startedAgain && !state.restartNote) {
    state.restartNote = "The server restarted; your separation started again. ";
    log("restarted", { from: state.maxProgress });
  }
  if (startedAgain) state.maxProgress = 0;
  if (message.started_at) state.startedAt = message.started_at;
  if (message.state === "queued") {
    const position = message.position || 0;
    const words = position <= 1 ? "You are next in line." : `Waiting in line: position ${position}.`;
    setPhase("queue", `${state.restartNote}${words}`, null);
  } else if (message.state === "running") {
    const fraction = Number(message.progress) || 0;
    if (fraction + 0.02 < state.maxProgress) {
      // Progress went back: the server restarted and ran the job again from its start.
      state.restartNote = "The server restarted; your separation started again. ";
      log("restarted", { from: state.maxProgress, to: fraction });
    }
    state.maxProgress = Math.max(state.maxProgress, fraction);
    setPhase("separate", `${state.restartNote}Separating: ${Math.floor(fraction * 100)}%`, fraction);
  } else if (message.state === "done") {
    setPhase("separate", "Separated.", 1);
  } else if (message.state === "failed") {
    const error = message.error || {};
    settleFollow(new Problem(error.code || "failed", error.message || ""));
  } else if (message.state === "cancelled") {
    const error = message.error || {};
    settleFollow(new Problem("cancelled", error.message || ""));
  }
}

function onDoneMessage(message) {
  if (state.job && message.id && message.id !== state.job.id) return;
  log("done", { id: message.id });
  state.doneSeen = true;
  settleFollow(null);
}

function onSessionProblem(problem) {
  log("session_problem", { code: problem.code });
  if (["server_restart", "connection_lost"].includes(problem.code) && state.run) {
    // The socket dropped (1006, 1011, 1012): the job is kept on the server for a while, or resumed after a
    // restart. Keys do not survive: follow the job by id and token on a new socket.
    state.lost = true;
    if (state.follow) reconnect();
    return;
  }
  settleFollow(problem);
}

function settleFollow(problem) {
  const follow = state.follow;
  if (!follow) {
    if (!problem) state.doneSeen = true;
    else state.pendingProblem = problem;
    return;
  }
  state.follow = null;
  if (problem) follow.reject(problem);
  else follow.resolve();
}

/** Resolves when the job is done (WebSocket messages, or polling after a server restart). */
function followJob(created) {
  if (created.state === "done" || state.doneSeen) return Promise.resolve();
  if (state.pendingProblem) return Promise.reject(state.pendingProblem);
  const following = new Promise((resolve, reject) => {
    state.follow = { resolve, reject };
  });
  if (state.lost) reconnect();
  return following;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Follow the job by id and token on a new socket, reconnecting with backoff while the server is away.
 * Runs until the follow settles (done, failed, cancelled, not found) or the run is cancelled.
 */
async function reconnect() {
  if (state.reconnecting) return;
  state.reconnecting = true;
  const signal = state.run && state.run.signal;
  const started = Date.now();
  let delay = 500;
  try {
    while (state.follow && !(signal && signal.aborted)) {
      if (state.lost) {
        setProgress("Lost contact with the server; reconnecting…", null, true);
        log("reconnecting", { delay });
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 8000);
      }
      if (!state.follow || (signal && signal.aborted)) return;
      const follower = new Follower(state.job, { onJob: onJobMessage, onDone: onDoneMessage });
      state.follower = follower;
      let outcome;
      try {
        outcome = await follower.run();
      } catch (problem) {
        settleFollow(problem); // not_found: the job is gone
        return;
      }
      if (outcome.byUs || !state.follow) return;
      state.lost = true;
      if (outcome.opened) delay = 500;
      if (Date.now() - started > RECONNECT_GIVE_UP_MS) {
        settleFollow(new Problem("lost_contact"));
        return;
      }
    }
  } finally {
    state.reconnecting = false;
  }
}

// ------------------------------------------------------------------------------------------- the run

async function separate() {
  if (!state.file || !state.fileOk || state.run) return;
  const options = readOptions();
  const file = state.file;
  const run = new AbortController();
  state.run = run;
  state.doneSeen = false;
  state.pendingProblem = null;
  state.lost = false;
  state.maxProgress = 0;
  state.startedAt = null;
  state.restartNote = "";
  state.job = null;
  clearTimeout(state.retryTimer);
  show("problem", false);
  show("setup", false);
  show("result", false);
  show("work", true);
  $("work-name").textContent = file.name;
  $("cancel").disabled = false;
  $("work-title").focus();
  window.addEventListener("beforeunload", warnBeforeLeaving);
  log("separate", { options });
  // An audio context made during the click may play later without another click.
  if (!state.audioContext || state.audioContext.state === "closed") {
    try {
      state.audioContext = makeAudioContext();
    } catch (ignored) {
      state.audioContext = null;
    }
  }
  try {
    const session = await ensureSession(run.signal);
    setPhase("upload", `Uploading ${formatBytes(file.size)}…`, 0);
    let created;
    try {
      created = await uploadJob(buildForm(file, options), session.key, {
        signal: run.signal,
        onProgress: (sent, total) => {
          const words = sent >= total ? "Upload finished; the server is checking the file…" : `Uploading: ${formatBytes(sent)} of ${formatBytes(total)}`;
          setProgress(words, sent / total, sent >= total);
        },
      });
    } catch (error) {
      if (!(error instanceof Problem && KEEPS_KEY.has(error.status))) session.spent = true;
      throw error;
    }
    session.spent = true;
    state.job = { id: created.id, token: created.token };
    const entry = { id: created.id, token: created.token, name: file.name, created: Date.now(), options };
    saveCurrent(entry);
    remember({ id: entry.id, token: entry.token, name: entry.name, created: entry.created });
    log("created", { id: created.id, state: created.state, cache: created.cache });
    if (created.state === "queued" && state.phase === "upload") onJobMessage(created);
    await followJob(created);
    session.close(); // the key did its one job; nothing more to hear
    await collect(file, options, run);
  } catch (error) {
    if (run.signal.aborted || (error && error.name === "AbortError")) {
      log("cancelled");
      backToSetup();
      $("separate").focus();
    } else {
      showProblem(error);
    }
  } finally {
    window.removeEventListener("beforeunload", warnBeforeLeaving);
    endRun(run);
  }
}

function endRun(run) {
  if (state.run === run) state.run = null;
  state.follow = null;
  state.lost = false;
  if (state.follower) state.follower.close();
  state.follower = null;
}

/** The job is done: download its zip and show the player. */
async function collect(file, options, run) {
  if (state.follower) state.follower.close();
  setPhase("fetch", "Downloading the stems…", 0);
  const archive = await downloadResult(state.job, {
    signal: run.signal,
    onProgress: (received, total) => setProgress(`Downloading the stems: ${Math.floor((100 * received) / total)}%`, received / total),
  });
  setProgress("Unpacking and decoding the stems…", null, true);
  await showResult(archive, file, options);
}

/** After a reload: follow this tab's unfinished job again, or show its result if it is done. */
async function reattach(entry) {
  let view;
  try {
    view = await getJob(entry);
  } catch (error) {
    if (error && error.code === "not_found") {
      saveCurrent(null);
      forget(entry.id);
    }
    log("reattach_failed", { code: error && error.code });
    return;
  }
  const run = new AbortController();
  state.run = run;
  state.job = { id: entry.id, token: entry.token };
  state.doneSeen = false;
  state.pendingProblem = null;
  state.maxProgress = 0;
  state.startedAt = null;
  state.restartNote = "";
  state.lost = false;
  const file = { name: entry.name || "your song" };
  const given = entry.options || {};
  const options = { ...given, format: view.options.format || given.format || "mp3", bitrate: view.options.mp3_bitrate || given.bitrate || 192 };
  log("reattach", { id: entry.id, state: view.state });
  show("setup", false);
  show("problem", false);
  show("result", false);
  show("work", true);
  $("work-name").textContent = file.name;
  $("cancel").disabled = false;
  try {
    if (view.state === "failed" || view.state === "cancelled") {
      onJobMessage(view);
      throw state.pendingProblem || new Problem(view.state);
    }
    if (view.state !== "done") {
      onJobMessage(view);
      state.lost = false;
      const following = followJob(view);
      reconnect(); // no session socket after a reload: follow by id and token
      await following;
    }
    await collect(file, options, run);
  } catch (error) {
    if (run.signal.aborted || (error && error.name === "AbortError")) {
      backToSetup({ keepFile: false });
    } else {
      showProblem(error);
    }
  } finally {
    endRun(run);
  }
}

/**
 * A session whose key no upload has used yet: the open one, or a new one (challenge, proof of work, key).
 * Also on servers without keys (FREESTEMS_AUTH=none): the socket is what reports the job's progress and
 * what cancels the job when the page goes away.
 */
async function ensureSession(signal) {
  if (state.session && state.session.usable) {
    log("session_reused");
    return state.session;
  }
  if (state.session) state.session.close();
  setPhase("check", "Anti-abuse check: connecting…", null);
  const session = new Session({ onJob: onJobMessage, onDone: onDoneMessage, onProblem: onSessionProblem });
  state.session = session;
  const closeOnAbort = () => session.close();
  signal.addEventListener("abort", closeOnAbort, { once: true });
  try {
    const challenge = await session.connect();
    setProgress("Anti-abuse check: your browser is solving a small puzzle…", null, true);
    const started = performance.now();
    const payload = await solveChallenge(challenge, {
      signal,
      expected: state.config.powCounter,
      onProgress: ({ tries, expected }) => {
        const fraction = expected ? Math.min(0.99, tries / expected) : null;
        setProgress(`Anti-abuse check: ${tries} tries`, fraction);
      },
    }).catch((error) => {
      if (error && error.name === "AbortError") throw error;
      throw error instanceof Problem ? error : new Problem("pow_unsupported", error.message);
    });
    log("solved", { ms: Math.round(performance.now() - started) });
    await session.redeem(payload);
    log("key");
    return session;
  } finally {
    signal.removeEventListener("abort", closeOnAbort);
  }
}

function cancelRun() {
  if (!state.run) return;
  $("cancel").disabled = true;
  setProgress("Cancelling…", null, true);
  // Closing the socket ends the key; deleting the job stops it now (else it would wait out the grace).
  if (state.job) {
    const job = state.job;
    deleteJob(job).catch(() => {});
    forget(job.id);
  }
  saveCurrent(null);
  if (state.session) state.session.close();
  state.session = null;
  state.run.abort();
  settleFollow(Object.assign(new DOMException("cancelled", "AbortError")));
}

function warnBeforeLeaving(event) {
  event.preventDefault();
  event.returnValue = "";
}

// ------------------------------------------------------------------------------------------- problems

function showProblem(error) {
  const problem = error instanceof Problem ? error : new Problem("unexpected", error && error.message ? error.message : String(error));
  const words = describe(problem);
  log("problem", { code: problem.code, status: problem.status, title: words.title });
  state.phase = "problem";
  state.lastProblem = { code: problem.code, status: problem.status, title: words.title, action: words.action };
  if (state.session && !state.session.usable) {
    state.session.close();
    state.session = null;
  }
  show("work", false);
  show("result", false);
  show("setup", false);
  $("problem-text").textContent = words.title;
  $("problem-action").textContent = words.action;
  show("problem", true);
  const retry = $("retry");
  clearTimeout(state.retryTimer);
  const fileProblem = ["upload_too_large", "too_long", "not_audio"].includes(problem.code) || !state.file;
  retry.hidden = fileProblem;
  $("problem-dismiss").textContent = fileProblem ? "Choose another file" : "Change the song or options";
  if (!state.file && words.action.includes("Try again")) {
    // After a reload the page no longer has the file: only "Choose another file" is on this screen.
    $("problem-action").textContent = "Press Choose another file to separate a song again.";
  }
  if (problem.code !== "lost_contact") saveCurrent(null); // the job has ended: nothing to re-attach to
  if (words.retryAfter) {
    const until = Date.now() + words.retryAfter * 1000;
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      retry.disabled = left > 0;
      retry.textContent = left > 0 ? `Try again in ${left} s` : "Try again";
      if (left > 0) state.retryTimer = setTimeout(tick, 500);
    };
    tick();
  } else {
    retry.disabled = false;
    retry.textContent = "Try again";
  }
  $("problem-title").focus();
}

function backToSetup({ keepFile = true } = {}) {
  clearTimeout(state.retryTimer);
  state.phase = "setup";
  show("work", false);
  show("problem", false);
  show("result", false);
  show("setup", true);
  if (!keepFile) clearFile();
  updateSeparateButton();
}

// ------------------------------------------------------------------------------------------- result

/** Decoded stems take 4 bytes per sample and channel: past this many bytes the page offers downloads only. */
function memoryBudget() {
  if (Number.isFinite(window.freestems.memoryBudget)) return window.freestems.memoryBudget;
  const gigabytes = navigator.deviceMemory || 4;
  return Math.min(1.5e9, (gigabytes * 1e9) / 4);
}

function makeAudioContext() {
  try {
    return new AudioContext({ sampleRate: 44100, latencyHint: "playback" }); // the stems' rate: no resampling
  } catch (ignored) {
    return new AudioContext();
  }
}

async function showResult(archive, file, options) {
  let files;
  try {
    files = await readZip(archive);
  } catch (error) {
    throw new Problem("zip", error.message);
  }
  files.sort((a, b) => stemRank(baseName(a.name)) - stemRank(baseName(b.name)));
  await disposeResult();
  const song = baseName(file.name);
  const zipUrl = URL.createObjectURL(new Blob([archive], { type: "application/zip" }));
  state.urls.push(zipUrl);
  $("download-all").href = zipUrl;
  $("download-all").download = `${song} - stems.zip`;
  const stems = files.map((entry) => {
    const name = baseName(entry.name);
    const extension = entry.name.slice(entry.name.lastIndexOf(".") + 1).toLowerCase();
    const type = { mp3: "audio/mpeg", wav: "audio/wav", flac: "audio/flac" }[extension] || "application/octet-stream";
    const address = URL.createObjectURL(new Blob([entry.data], { type }));
    state.urls.push(address);
    return { name, data: entry.data, fileName: `${song} - ${name}.${extension}`, address };
  });

  // The player: every stem decoded into memory. A song too long for this device gets downloads only.
  let mixer = null;
  let noPlayer = "";
  try {
    const context = state.audioContext && state.audioContext.state !== "closed" ? state.audioContext : makeAudioContext();
    state.audioContext = null;
    mixer = new Mixer(context);
    for (const [index, stem] of stems.entries()) {
      setProgress(`Decoding the stems: ${index + 1} of ${stems.length}…`, index / stems.length);
      const added = await mixer.addStem(stem.name, stem.data.slice().buffer);
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
    if (mixer) await mixer.close();
    mixer = null;
  }
  state.mixer = mixer;

  const list = $("stems");
  list.replaceChildren(...stems.map((stem) => stemRow(stem.name, stem.fileName, stem.address, stem.data.length, Boolean(mixer))));
  show("transport", Boolean(mixer));
  const formatWords = options.format === "mp3" ? `MP3 ${options.bitrate} kbps` : options.format.toUpperCase();
  if (mixer) {
    const seconds = mixer.duration;
    $("seek").max = String(seconds);
    $("seek").value = "0";
    $("time-total").textContent = formatClock(seconds);
    $("result-note").textContent = `${stems.length} stems of ${file.name}, ${formatClock(seconds)}, ${formatWords}.`;
    mixer.on(() => renderTransport());
  } else {
    $("result-note").textContent = `${stems.length} stems of ${file.name}, ${formatWords}. ${noPlayer}`;
  }
  $("result-heading").textContent = mixer ? "Listen, mix and download" : "Download the stems";
  $("delete").disabled = false;
  $("delete-status").textContent = "";
  state.phase = "result";
  show("work", false);
  show("result", true);
  renderTransport();
  drawAll();
  log("result", { stems: files.map((entry) => entry.name), player: Boolean(mixer), noPlayer });
  $("result-title").focus();
}

function stemRow(name, downloadName, blobUrl, size, playable) {
  const words = stemWords(name);
  const row = document.createElement("li");
  row.className = playable ? "stem" : "stem stem-download-only";
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
  const download = document.createElement("a");
  download.className = "button button-small";
  download.href = blobUrl;
  download.download = downloadName;
  download.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 4v11m0 0-4.5-4.5M12 15l4.5-4.5M5 19h14" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg><span></span>';
  download.lastChild.textContent = "Download";
  download.setAttribute("aria-label", `Download ${words} (${formatBytes(size)})`);
  tail.append(download);
  if (!playable) {
    row.append(head, tail);
    return row;
  }

  const buttons = document.createElement("div");
  buttons.className = "stem-buttons";
  const mute = toggleButton("Mute", words, "mute");
  const solo = toggleButton("Solo", words, "solo");
  mute.addEventListener("click", () => {
    const pressed = mute.getAttribute("aria-pressed") !== "true";
    mute.setAttribute("aria-pressed", String(pressed));
    state.mixer.setMuted(name, pressed);
    log("mute", { stem: name, pressed });
  });
  solo.addEventListener("click", () => {
    const pressed = solo.getAttribute("aria-pressed") !== "true";
    solo.setAttribute("aria-pressed", String(pressed));
    state.mixer.setSoloed(name, pressed);
    log("solo", { stem: name, pressed });
  });
  buttons.append(mute, solo);
  head.append(buttons);

  const canvas = document.createElement("canvas");
  canvas.className = "wave";
  canvas.setAttribute("aria-hidden", "true");
  canvas.title = `${words}: click to jump there`;
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect();
    state.mixer.seek(((event.clientX - box.left) / box.width) * state.mixer.duration);
  });

  const volumeId = `volume-${name}`;
  const volumeLabel = document.createElement("label");
  volumeLabel.htmlFor = volumeId;
  volumeLabel.className = "volume-label";
  volumeLabel.innerHTML = '<span class="visually-hidden"></span><svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9v6h4l5 4V5L8 9H4z" fill="currentColor"/><path d="M16 8.5a5 5 0 0 1 0 7" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/></svg>';
  volumeLabel.firstChild.textContent = `${words} volume`;
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
    state.mixer.setVolume(name, Number(volume.value));
    volume.setAttribute("aria-valuetext", `${Math.round(Number(volume.value) * 100)}%`);
  });
  tail.prepend(volumeLabel, volume);

  row.append(head, canvas, tail);
  return row;
}

function toggleButton(verb, words, kind) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `toggle toggle-${kind}`;
  button.setAttribute("aria-pressed", "false");
  button.textContent = verb;
  const hidden = document.createElement("span");
  hidden.className = "visually-hidden";
  hidden.textContent = ` ${words}`;
  button.append(hidden);
  return button;
}

let frame = 0;
let dragging = false;

function renderTransport() {
  const mixer = state.mixer;
  if (!mixer) return;
  const position = mixer.position();
  const play = $("play");
  play.dataset.playing = String(mixer.playing);
  play.setAttribute("aria-label", mixer.playing ? "Pause" : "Play");
  play.title = mixer.playing ? "Pause (space)" : "Play (space)";
  if (!dragging) $("seek").value = String(position);
  $("time-now").textContent = formatClock(dragging ? Number($("seek").value) : position);
  $("seek").setAttribute("aria-valuetext", `${formatClock(position)} of ${formatClock(mixer.duration)}`);
  const targets = mixer.targets();
  for (const row of $("stems").children) row.classList.toggle("is-silent", targets[row.dataset.stem] === 0);
  drawAll();
  cancelAnimationFrame(frame);
  if (mixer.playing) frame = requestAnimationFrame(renderTransport);
}

function drawAll() {
  const mixer = state.mixer;
  if (!mixer || $("result").hidden) return;
  const progress = mixer.duration ? mixer.position() / mixer.duration : 0;
  const line = cssVar("--text");
  for (const row of $("stems").children) {
    const stem = mixer.stem(row.dataset.stem);
    if (!row.querySelector("canvas")) continue;
    const canvas = row.querySelector("canvas");
    drawWaveform(canvas, stem.peaks, progress, { line, color: row.style.getPropertyValue("--stem") || cssVar("--stem-other") });
  }
}

async function disposeResult() {
  cancelAnimationFrame(frame);
  if (state.mixer) {
    const mixer = state.mixer;
    state.mixer = null;
    await mixer.close();
  }
  for (const address of state.urls.splice(0)) URL.revokeObjectURL(address);
  $("stems").replaceChildren();
}

async function deleteFiles() {
  if (!state.job) return;
  const button = $("delete");
  button.disabled = true;
  $("delete-status").textContent = "Deleting your files from the server…";
  try {
    const deleted = await deleteJob(state.job);
    forget(state.job.id);
    saveCurrent(null);
    $("delete-status").textContent = deleted
      ? "Your files were deleted from the server. The copies in this page stay until you leave it."
      : "Your files were already gone from the server.";
    log("deleted", { deleted });
  } catch (error) {
    const words = describe(error);
    $("delete-status").textContent = `Your files could not be deleted: ${words.title} ${words.action}`;
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------- wiring

function wire() {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => chooseFile(input.files && input.files[0]));
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("is-over");
    });
  }
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("is-over"));
  // A file dropped anywhere on the page is taken (instead of the browser opening it).
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  for (const radio of document.querySelectorAll('input[name="stems"]')) radio.addEventListener("change", updateStemsChoice);
  $("setup").addEventListener("submit", (event) => {
    event.preventDefault();
    separate();
  });
  $("cancel").addEventListener("click", cancelRun);
  $("retry").addEventListener("click", () => {
    show("problem", false);
    state.phase = "setup";
    separate();
  });
  $("problem-dismiss").addEventListener("click", () => {
    const fileProblem = ["upload_too_large", "too_long", "not_audio"].includes(state.lastProblem && state.lastProblem.code);
    backToSetup({ keepFile: !fileProblem });
    (fileProblem ? $("file") : $("separate")).focus();
  });
  $("play").addEventListener("click", () => state.mixer && state.mixer.toggle());
  const seek = $("seek");
  seek.addEventListener("input", () => {
    dragging = true;
    renderTransport();
  });
  seek.addEventListener("change", async () => {
    dragging = false;
    if (state.mixer) await state.mixer.seek(Number(seek.value));
    renderTransport();
  });
  $("master").addEventListener("input", () => state.mixer && state.mixer.setMasterVolume(Number($("master").value)));
  $("delete").addEventListener("click", deleteFiles);
  $("again").addEventListener("click", async () => {
    await disposeResult();
    state.job = null;
    saveCurrent(null);
    backToSetup({ keepFile: false });
    $("file").focus();
  });
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.closest("input, select, textarea, button, a, summary") || target.isContentEditable);
    if (event.key === " " && !typing && state.mixer && !$("result").hidden) {
      event.preventDefault();
      state.mixer.toggle();
    }
  });
  new ResizeObserver(() => drawAll()).observe($("stems"));
  // Leaving the page closes the socket. An unfinished job is kept on the server for a short grace period
  // (a reload follows it again, from sessionStorage); after that it is cancelled.
  window.addEventListener("pagehide", () => {
    if (state.session) state.session.close();
    if (state.follower) state.follower.close();
  });
  for (const heading of ["problem-title", "result-title", "work-title"]) $(heading).tabIndex = -1;
}

// A small window into the page for tests and for curious people (nothing secret in it).
window.freestems = {
  get phase() {
    return state.phase;
  },
  get config() {
    return state.config;
  },
  get job() {
    return state.job ? { ...state.job } : null;
  },
  get problem() {
    return state.lastProblem || null;
  },
  events: state.events,
  mixer: {
    gains: () => (state.mixer ? state.mixer.gains() : null),
    targets: () => (state.mixer ? state.mixer.targets() : null),
    playing: () => Boolean(state.mixer && state.mixer.playing),
    position: () => (state.mixer ? state.mixer.position() : 0),
    duration: () => (state.mixer ? state.mixer.duration : 0),
    contextState: () => (state.mixer ? state.mixer.context.state : null),
  },
  ready: false,
  memoryBudget: undefined, // bytes; tests set it to see the downloads-only result
};

async function start() {
  wire();
  updateStemsChoice();
  updateSeparateButton();
  try {
    state.config = await loadConfig();
  } catch (error) {
    state.config = null;
  }
  if (!state.config) {
    fileError("The server's settings could not be loaded. Check your connection and reload the page.");
    return;
  }
  fillOptions(state.config);
  updateSeparateButton();
  if (state.file) chooseFile(state.file);
  window.freestems.ready = true;
  document.documentElement.dataset.ready = "true";
  log("ready", { described: state.config.described });
  const current = loadCurrent();
  if (current) reattach(current);
  renderRecent();
}

start();
