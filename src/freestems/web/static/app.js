// The page: choose a song and options, earn a session key (proof of work in Web Workers), upload, follow
// the job on the WebSocket, then unzip the stems in the browser and mix them live.
//
// This module only wires the parts together; each part keeps its own state:
//   song.js      the chosen file, its checks, the Separate button     options.js  the form's choices
//   jobs.js      "What do you want?": the job, its best model, its stems
//   job.js       a job's life: key, upload, follow, re-attach, cancel  messages.js progress, live region, problems
//   result.js    the result card: files, downloads, delete             player.js   the stem rows and transport
//   recent.js    recent separations in this browser                    screens.js  which card shows, the phase
//   stream.js    listening while it separates (progressive results)     confirm.js  "Stop the separation?"
//   compare.js   a second model on the same song (no upload), A/B per stem while it plays
//   cost.js      what the chosen options cost on the server, and the budget the anti-abuse check is for
// A job outlives a dropped connection for a grace period on the server: a reload (or a phone that dropped
// the page) follows it again, and when the socket drops mid-job the page reconnects and follows it by id and
// token (the server kept it, or resumed it after a restart).
import { loadConfig } from "./api.js";
import { createCompare } from "./compare.js";
import { askFirst } from "./confirm.js";
import { budgetFor, showCost } from "./cost.js";
import { createDevice } from "./device-run.js";
import { $ } from "./dom.js";
import { createJobs } from "./job.js";
import { createJobPicker } from "./jobs.js";
import { createLog } from "./log.js";
import { createMessages, isFileProblem } from "./messages.js";
import { fillOptions, readOptions, updateStemsChoice, wireOptions } from "./options.js";
import { createPlayer } from "./player.js";
import { createRecent } from "./recent.js";
import { createResult } from "./result.js";
import { createScreens } from "./screens.js";
import { createSong } from "./song.js";
import { createListen } from "./stream.js";

const { events, log } = createLog();
const screens = createScreens();
const messages = createMessages({ screens, log });
// The device's advice depends on the song's length (memory), the cost hint on the song and the choice.
const song = createSong({ log, canChoose: () => screens.phase === "setup", onChecked: () => (device.songChanged(), updateCost()) });
const recent = createRecent({ log, onOpen: (entry) => reopen(entry) });
const player = createPlayer({ log, setProgress: messages.setProgress, budgetOverride: () => hook.memoryBudget });
const result = createResult({ player, screens, log });
const listen = createListen({ player, log });
const compare = createCompare({ player, config: () => config, log, duration: () => song.duration });
const jobs = createJobs({
  screens,
  messages,
  recent,
  log,
  present: async (archive, file, given) => {
    await listen.finish(); // the live player's last segments: the result player takes its audio
    listen.stop();
    const options = named(given);
    await result.show(archive, file, options);
    compare.offer(jobs.job, file, options);
  },
  prepareAudio: () => player.prepare(),
  onView: (job, message) => listen.offer(job, message),
});
// Separating on this device instead (device-run.js): no upload, no job; its result shows as a server's does.
const device = createDevice({
  screens,
  messages,
  song,
  player,
  log,
  present: async (archive, file, options) => {
    await result.show(archive, file, options);
    compare.offer(null, file, options);
  },
  prepareAudio: () => player.prepare(),
});

const picker = createJobPicker(); // its changes reach the form's listeners (the cost, the device) as events

/** `options` with the job that names its stems: a job of the recent list has none, so its model's first. */
function named(options) {
  if (options.naming !== undefined || !config) return options;
  const model = config.models.find((entry) => entry.name === options.model);
  return { ...options, naming: (model && model.jobs[0]) || null };
}

/** The job ended without a result: stop listening to it. */
async function stopListening() {
  listen.stop();
  await player.dispose();
}
let config = null;

/** The cost hint under the options; false when the chosen options cost more than one separation may. */
function updateCost() {
  if (!config) return true;
  return showCost(device.chosen ? null : config.pricing, readOptions(config.model), song.duration); // a device run costs the server nothing
}

function backToSetup({ keepFile = true } = {}) {
  messages.clearRetry();
  screens.enter("setup");
  screens.show("setup");
  if (!keepFile) song.clear();
  song.refresh();
}

function showProblem(problem) {
  messages.showProblem(problem, { hasFile: Boolean(song.file) });
}

async function separate() {
  if (!song.ready || !config || jobs.running || device.running) return;
  if (!device.chosen && !updateCost()) {
    $("cost-hint").focus();
    return; // the hint says what fits: nothing is sent that the server would refuse for its cost
  }
  const options = readOptions(config.model);
  player.useNaming(options.naming); // the job names the stems (a live player shows them before the result)
  const budget = budgetFor(config.pricing, options, song.duration);
  const outcome = device.chosen
    ? await device.separate(song.file, options)
    : await jobs.separate(song.file, options, config.powCounter, budget);
  if (outcome.kind === "result" && outcome.cached) await player.play(); // as a fresh result's live player does
  if (outcome.kind !== "result") await stopListening();
  if (outcome.kind === "cancelled") {
    backToSetup();
    $("separate").focus();
  } else if (outcome.kind === "problem") {
    showProblem(outcome.problem);
  }
}

/**
 * Follows this tab's job again after a reload (the player resumes where it was), or `chosen`, a job of the
 * recent list, in place of the result on show.
 */
async function reattach(chosen = null) {
  player.startAt(chosen ? 0 : jobs.savedPosition);
  const outcome = await jobs.reattach(chosen);
  player.startAt(0);
  if (outcome && outcome.kind !== "result") await stopListening();
  if (outcome && outcome.kind === "cancelled") backToSetup({ keepFile: false });
  else if (outcome && outcome.kind === "problem") showProblem(outcome.problem);
}

/** "Open" in the recent list: that result in the player, unless a separation is under way. */
async function reopen(entry) {
  if (jobs.running || !["setup", "result", "problem"].includes(screens.phase)) return;
  compare.reset();
  await result.dispose();
  messages.hideProblem();
  jobs.letGo();
  await reattach(entry);
}

function wire() {
  song.wire();
  wireOptions(() => config);
  picker.wire();
  $("setup").addEventListener("change", () => updateCost());
  player.wire();
  compare.wire();
  device.wire();
  $("setup").addEventListener("submit", (event) => {
    event.preventDefault();
    separate();
  });
  const confirmCancel = askFirst({ trigger: "cancel", box: "cancel-confirm", yes: "cancel-yes", no: "cancel-no", onYes: () => (device.running ? device.cancel() : jobs.cancel()) });
  screens.onShow(() => confirmCancel.close());
  $("retry").addEventListener("click", () => {
    messages.hideProblem();
    screens.enter("setup");
    separate();
  });
  $("problem-dismiss").addEventListener("click", () => {
    const problem = messages.lastProblem;
    const fileProblem = isFileProblem(problem && problem.code);
    backToSetup({ keepFile: !fileProblem });
    (fileProblem ? $("file") : $("separate")).focus();
  });
  result.wireDelete({
    job: () => jobs.job,
    onDeleted: (id) => {
      recent.forget(id);
      jobs.deleted();
      compare.filesDeleted(); // the song is gone from the server: no second model on it
    },
  });
  $("again").addEventListener("click", async () => {
    compare.reset();
    await result.dispose();
    jobs.letGo();
    backToSetup({ keepFile: false });
    $("file").focus();
  });
  // Leaving the page closes the socket. An unfinished job is kept on the server for a short grace period
  // (a reload follows it again, from sessionStorage); after that it is cancelled.
  window.addEventListener("pagehide", () => {
    jobs.notePosition(player.view.position()); // a reload resumes there
    jobs.close();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") jobs.notePosition(player.view.position());
  });
  for (const heading of ["problem-title", "result-title", "work-title"]) $(heading).tabIndex = -1;
}

// A small window into the page for tests and for curious people (nothing secret in it).
const hook = {
  get phase() {
    return screens.phase;
  },
  get config() {
    return config;
  },
  get job() {
    return jobs.job;
  },
  get problem() {
    return messages.lastProblem;
  },
  events,
  mixer: player.view,
  compare: compare.view,
  device: device.view,
  ready: false,
  memoryBudget: undefined, // bytes; tests set it to see the downloads-only result
};
window.freestems = hook;

async function start() {
  wire();
  updateStemsChoice();
  song.refresh();
  try {
    config = await loadConfig();
  } catch (error) {
    config = null;
  }
  if (!config) {
    song.showError("The server's settings could not be loaded. Check your connection and reload the page.");
    return;
  }
  fillOptions(config);
  picker.fill(config);
  song.useConfig(config);
  device.useConfig(config);
  updateCost();
  hook.ready = true;
  document.documentElement.dataset.ready = "true";
  log("ready", { described: config.described });
  reattach();
  recent.render();
}

start();
