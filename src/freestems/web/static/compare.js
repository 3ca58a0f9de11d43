// Hear two models side by side on your own song. After a result, the page offers the server's other models;
// choosing one separates the same song again on the server (POST jobs with from_job and from_token: the
// server kept the song with its result, so nothing is uploaded again), while the first result keeps playing.
// The second result's stems are added to the player as alternates of the stems of the same name
// (mixer.addAlternate): they play in sync, and each stem's A/B switch glides between the two versions
// without stopping playback. Stems only one model gives (a vocals model's "no_vocals") are offered as a
// download of the second zip.
import { downloadResult, uploadJob } from "./api.js";
import { budgetFor } from "./cost.js";
import { $, show } from "./dom.js";
import { JobFollow } from "./follow.js";
import { stemWords, baseName } from "./names.js";
import { modelFacts } from "./options.js";
import { createSessions } from "./sessions.js";
import { describe, Problem } from "./text.js";
import { readZip } from "./zip.js";

const KEEPS_KEY = new Set([413, 415, 422, 429]); // refused requests do not use the session key up

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
  let second = null; // {model, stems: [names with an A/B switch], url}
  let run = null; // the AbortController of a rerun in progress
  let zipUrl = null;
  const status = (text) => {
    $("compare-status").textContent = text;
  };
  // What sessions.js and follow.js report goes to this card's status line, not to the work card.
  const messages = {
    setPhase: (phase, text) => status(text),
    setProgress: (text) => status(text),
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

  /** Shows the card for the result of `job` ({id, token}), made from `file` with `options`. */
  function offer(job, file, options) {
    reset();
    const described = config();
    const model = options.model || (described && described.model);
    const others = described ? described.models.filter((entry) => entry.available && entry.name !== model) : [];
    first = { job, file, options, model };
    show("compare", Boolean(job && others.length));
    if (!job || !others.length) return;
    $("compare-first").textContent = modelOf(model).title;
    $("compare-model").replaceChildren(
      ...others.map((entry) => {
        const element = document.createElement("option");
        element.value = entry.name;
        element.textContent = `${entry.title} (${modelFacts(entry).join(" · ")})`;
        return element;
      }),
    );
    $("compare-run").disabled = false;
  }

  async function compare() {
    if (!first || run) return;
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
      const words = describe(error instanceof Problem ? error : new Problem("unexpected", String(error && error.message)));
      status(`The second separation did not work: ${words.title} ${words.action}`);
      log("compare_failed", { code: error && error.code });
    } finally {
      if (follow) follow.end();
      follow = null;
      if (run === mine) run = null;
      $("compare-run").disabled = false;
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
            (others.length ? ` ${others.map(stemWords).join(", ")}: in the download only.` : "")
        : `${title} gives other stems (${others.map(stemWords).join(", ")}) than the first result: download them to listen.`,
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
    group.setAttribute("aria-label", `${stemWords(name)}: which model`);
    for (const [choice, model] of [["a", first.model], ["b", second.model]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `toggle toggle-ab toggle-${choice}`;
      button.dataset.choice = choice;
      button.textContent = choice.toUpperCase();
      button.title = `${stemWords(name)} by ${modelOf(model).title}`;
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
    log("ab", { stem: name, choice });
  }

  /** The result goes away (another song): forget the comparison. */
  function reset() {
    if (run) run.abort();
    run = null;
    sessions.close();
    first = null;
    second = null;
    if (zipUrl) URL.revokeObjectURL(zipUrl);
    zipUrl = null;
    show("compare-download", false);
    status("");
    show("compare", false);
  }

  function wire() {
    $("compare-run").addEventListener("click", () => compare());
  }

  return {
    offer,
    reset,
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
