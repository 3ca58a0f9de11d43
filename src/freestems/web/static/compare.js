// Hear two models side by side on your own song. After a result, the page offers the server's other models;
// choosing one separates the same song again on the server (POST jobs with from_job and from_token: the
// server kept the song with its result, so nothing is uploaded again), while the first result keeps playing.
// The second result's stems are added to the player as alternates of the stems of the same name
// (mixer.addAlternate): they play in sync, and each stem's A/B switch glides between the two versions
// without stopping playback; the row then shows the version it plays (its waveform, its download). Stems only
// one model gives (a vocals model's "no_vocals") are offered as a download of the second zip. The status line
// shows every step and tick; screen readers hear only the changes of state (not each tick of progress).
// The rerun needs the first job's song on the server: after "Delete my files now" it is not offered.
import { downloadResult, uploadJob } from "./api.js";
import { budgetFor } from "./cost.js";
import { $, show } from "./dom.js";
import { JobFollow } from "./follow.js";
import { stemWords, baseName } from "./names.js";
import { modelFacts } from "./options.js";
import { createSessions } from "./sessions.js";
import { describe, formatBytes, Problem } from "./text.js";
import { readZip } from "./zip.js";

const KEEPS_KEY = new Set([413, 415, 422, 429]); // refused requests do not use the session key up
// What screen readers hear when the second separation reaches a step (not the status line's numbers).
const STEPS = {
  check: "Anti-abuse check: your browser is solving a small puzzle.",
  upload: "The server is checking the request.",
  queue: "Waiting for a free slot.",
  separate: "Separating the song with the second model.",
};
const GONE =
  "Your files are no longer on the server (deleted, or expired), so another model cannot run on this song " +
  "without uploading it again: press Separate another song to start over.";

/**
 * Why the second separation failed, and what to do with this card's button ("Separate with it too"): the
 * words of the problem card name buttons this card does not have.
 */
export function compareFailure(error) {
  const problem = error instanceof Problem ? error : new Problem("unexpected", String(error && error.message));
  if (problem.code === "not_found") return GONE;
  const words = describe(problem);
  const action = words.action
    .replace(/[Pp]ress Change the song or options to fix it\./, "")
    .replace(/\b[Pp]ress Try again\b/g, (said) => `${said[0]}ress Separate with it too`)
    .replace(/^Try again;/, "Press Separate with it too;");
  return `The second separation did not work: ${words.title} ${action}`.trim();
}

/** The form of a rerun: the earlier job instead of a file, the chosen model, the first run's options. */
export function rerunForm(job, options, model) {
  const form = new FormData();
  form.append("from_job", job.id);
  form.append("from_token", job.token);
  form.append("model", model);
  if (options.twoStems) form.append("two_stems", options.twoStems);
  form.append("mp3", options.format === "mp3" ? "true" : "false");
  if (options.format === "mp3" && options.bitrate) form.append("mp3_bitrate", String(options.bitrate));
  if (options.format === "flac") form.append("format", "flac");
  if (options.shifts > 1) form.append("shifts", String(options.shifts));
  return form;
}

/**
 * `player`: the result's player (its mixer gets the alternates); `config()`: the server's description;
 * `duration()`: the song's length in seconds (null: unknown), to earn a key for what the rerun costs.
 */
export function createCompare({ player, config, log, duration = () => null }) {
  let first = null; // {job, file, options, model} of the result on show
  const named = (stem) => stemWords(stem, first && first.options.naming); // as the result's rows say it
  let second = null; // {model, stems: [names with an A/B switch], url}
  let run = null; // the AbortController of a rerun in progress
  let zipUrl = null;
  let stemUrls = {}; // the second result's stems: {name: {url, fileName, size}}
  let gone = false; // the first job's files were deleted: nothing to run again
  let said = null; // the step screen readers were last told
  /** The status line; a new `step` (null: none) is also said to screen readers, once, as `spoken`. */
  const status = (text, step = text, spoken = text) => {
    $("compare-status").textContent = text;
    if (step === null || step === said) return;
    said = step;
    $("compare-announce").textContent = spoken;
  };
  // What sessions.js and follow.js report goes to this card's status line, not to the work card; only a new
  // step (the check, the queue, the separation) is said, not every tick of progress.
  const messages = {
    setPhase: (phase, text) => status(text, phase, STEPS[phase] || text),
    setProgress: (text) => status(text, null),
  };
  let follow = null;
  const sessions = createSessions({
    messages,
    log,
    handlers: {
      onJob: (message) => follow && follow.onJob(message),
      onDone: (message) => follow && follow.onDone(message),
      onProblem: (problem) => follow && follow.onProblem(problem),
    },
  });

  function modelOf(name) {
    const described = config();
    return (described && described.models.find((entry) => entry.name === name)) || { name, title: name, stems: null };
  }

  /**
   * The other models as options: after a job's result (Remove reverb, say), the models that do the same job
   * come first, under its title, then the rest; otherwise every other model, in the server's order.
   */
  function choices(described, job, others) {
    const option = (entry) => {
      const element = document.createElement("option");
      element.value = entry.name;
      element.textContent = `${entry.title} (${modelFacts(entry).join(" · ")})`;
      return element;
    };
    const task = job && (described.jobs || []).find((entry) => entry.name === job);
    const same = task ? others.filter((entry) => task.models.includes(entry.name)) : [];
    if (!same.length || same.length === others.length) return others.map(option);
    const group = (label, entries) => {
      const element = document.createElement("optgroup");
      element.label = label;
      element.append(...entries.map(option));
      return element;
    };
    const rest = others.filter((entry) => !same.includes(entry));
    return [group(`Also for ${task.title.toLowerCase()}`, same), group("Other models", rest)];
  }

  /** Shows the card for the result of `job` ({id, token}), made from `file` with `options`. */
  function offer(job, file, options) {
    reset();
    const described = config();
    const model = options.model || (described && described.model);
    const others = described ? described.models.filter((entry) => entry.available && entry.name !== model) : [];
    first = { job, file, options, model };
    show("compare", Boolean(job && others.length));
    if (!job || !others.length) return;
    gone = false;
    $("compare-first").textContent = modelOf(model).title;
    $("compare-model").replaceChildren(...choices(described, options.job, others));
    $("compare-run").disabled = false;
  }

  async function compare() {
    if (!first || run || gone) return;
    const chosen = $("compare-model").value;
    const described = config();
    const mine = new AbortController();
    run = mine;
    follow = new JobFollow({ messages, log, signal: mine.signal });
    $("compare-run").disabled = true;
    log("compare", { model: chosen });
    try {
      const pricing = described && described.pricing;
      const budget = budgetFor(pricing, { ...first.options, model: chosen }, duration());
      const session = await sessions.obtain(mine.signal, described && described.powCounter, budget);
      status(`Separating the same song with ${modelOf(chosen).title}: sending the request (no upload)…`);
      let created;
      try {
        created = await uploadJob(rerunForm(first.job, first.options, chosen), session.key, { signal: mine.signal });
      } catch (error) {
        if (!(error instanceof Problem && KEEPS_KEY.has(error.status))) session.spent = true;
        throw error;
      }
      session.spent = true;
      follow.job = { id: created.id, token: created.token };
      log("compare_created", { id: created.id, model: created.model, cache: created.cache });
      await follow.until(created);
      session.close();
      follow.closeSocket();
      status("Downloading the second result…");
      const archive = await downloadResult(follow.job, { signal: mine.signal });
      await add(chosen, archive);
    } catch (error) {
      if (mine.signal.aborted) return;
      if (error && error.code === "key_budget") sessions.needAtLeast(error.cost);
      sessions.dropUnusable();
      gone = gone || (error && error.code === "not_found");
      status(compareFailure(error));
      log("compare_failed", { code: error && error.code });
    } finally {
      if (follow) follow.end();
      follow = null;
      if (run === mine) run = null;
      $("compare-run").disabled = gone;
    }
  }

  /** The second result: its stems become alternates of the stems of the same name in the player. */
  async function add(model, archive) {
    const mixer = player.mixer;
    const files = await readZip(archive);
    for (const name of second ? second.stems : []) if (mixer) mixer.dropAlternate(name);
    const stems = [];
    if (mixer) {
      status("Decoding the second result…");
      const names = new Set(mixer.stems.map((stem) => stem.name));
      for (const entry of files) {
        const name = baseName(entry.name);
        if (!names.has(name)) continue;
        await mixer.addAlternate(name, entry.data.slice().buffer);
        stems.push(name);
      }
    }
    forgetStems();
    for (const entry of files) {
      const name = baseName(entry.name);
      const extension = entry.name.slice(entry.name.lastIndexOf(".") + 1);
      stemUrls[name] = {
        url: URL.createObjectURL(new Blob([entry.data])),
        fileName: `${baseName(first.file.name)} - ${name} (${model}).${extension}`,
        size: entry.data.length,
      };
    }
    if (zipUrl) URL.revokeObjectURL(zipUrl);
    zipUrl = URL.createObjectURL(new Blob([archive], { type: "application/zip" }));
    const link = $("compare-download");
    link.href = zipUrl;
    link.download = `${baseName(first.file.name)} - stems (${model}).zip`;
    link.textContent = `Download the ${modelOf(model).title} stems (zip)`;
    show("compare-download", true);
    second = { model, stems };
    renderSwitches();
    const others = files.map((entry) => baseName(entry.name)).filter((name) => !stems.includes(name));
    const title = modelOf(model).title;
    status(
      stems.length
        ? `Now switch each stem between A (${modelOf(first.model).title}) and B (${title}) while it plays.` +
            (others.length ? ` ${others.map(named).join(", ")}: in the download only.` : "")
        : `${title} gives other stems (${others.map(named).join(", ")}) than the first result: download them to listen.`,
    );
    log("compare_ready", { model, stems, others });
  }

  /** An A/B switch in each row that has a second version. */
  function renderSwitches() {
    for (const row of $("stems").children) {
      const existing = row.querySelector(".ab");
      if (existing) existing.remove();
      if (!second || !second.stems.includes(row.dataset.stem)) continue;
      row.querySelector(".stem-head").append(abSwitch(row.dataset.stem));
    }
  }

  function abSwitch(name) {
    const group = document.createElement("div");
    group.className = "ab";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `${named(name)}: which model`);
    for (const [choice, model] of [["a", first.model], ["b", second.model]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `toggle toggle-ab toggle-${choice}`;
      button.dataset.choice = choice;
      button.textContent = choice.toUpperCase();
      button.title = `${named(name)} by ${modelOf(model).title}`;
      button.setAttribute("aria-label", `${choice.toUpperCase()}: ${button.title}`);
      button.setAttribute("aria-pressed", String(choice === "a"));
      button.addEventListener("click", () => choose(name, choice));
      group.append(button);
    }
    return group;
  }

  function choose(name, choice) {
    const mixer = player.mixer;
    if (!mixer || !second) return;
    mixer.choose(name, choice);
    const row = [...$("stems").children].find((item) => item.dataset.stem === name);
    for (const button of row ? row.querySelectorAll(".toggle-ab") : []) {
      button.setAttribute("aria-pressed", String(button.dataset.choice === choice));
    }
    if (row) showVersion(row, choice);
    player.draw(); // the waveform of the version heard
    log("ab", { stem: name, choice });
  }

  /** The row's download is the version it plays: A (the result's own file) or B (the second result's). */
  function showVersion(row, choice) {
    const link = row.querySelector(".stem-tail a[download]");
    if (!link) return;
    if (!link.dataset.a) link.dataset.a = JSON.stringify({ href: link.href, download: link.download, label: link.getAttribute("aria-label") });
    const own = JSON.parse(link.dataset.a);
    const other = stemUrls[row.dataset.stem];
    if (choice === "b" && other && second) {
      link.href = other.url;
      link.download = other.fileName;
      link.setAttribute("aria-label", `Download ${named(row.dataset.stem)} by ${modelOf(second.model).title} (${formatBytes(other.size)})`);
    } else {
      link.href = own.href;
      link.download = own.download;
      link.setAttribute("aria-label", own.label);
    }
  }

  /** The second result's stems go (another comparison, or another song): each row shows its own again. */
  function forgetStems() {
    for (const row of $("stems").children) showVersion(row, "a");
    for (const entry of Object.values(stemUrls)) URL.revokeObjectURL(entry.url);
    stemUrls = {};
    player.draw();
  }

  /** The result goes away (another song): forget the comparison. */
  function reset() {
    if (run) run.abort();
    run = null;
    sessions.close();
    forgetStems();
    first = null;
    second = null;
    if (zipUrl) URL.revokeObjectURL(zipUrl);
    zipUrl = null;
    show("compare-download", false);
    status("", null);
    $("compare-announce").textContent = "";
    said = null;
    show("compare", false);
  }

  /** "Delete my files now": the first job's song is gone from the server, so it cannot run again. */
  function filesDeleted() {
    if (!first) return;
    gone = true;
    if (run) run.abort();
    $("compare-run").disabled = true;
    status(GONE);
  }

  function wire() {
    $("compare-run").addEventListener("click", () => compare());
  }

  return {
    offer,
    reset,
    filesDeleted,
    wire,
    /** For tests (window.freestems.compare): the second model, its switched stems, the choices and gains. */
    view: {
      second: () => (second ? { model: second.model, stems: [...second.stems] } : null),
      running: () => Boolean(run),
      choices: () => (player.mixer ? Object.fromEntries(player.mixer.stems.filter((stem) => stem.alternate).map((stem) => [stem.name, stem.choice])) : {}),
      gains: () => (player.mixer ? player.mixer.alternateGains() : {}),
    },
  };
}
