// What the page tells a person while it works and when something goes wrong: the work card's steps,
// progress bar and status line, the screen-reader live region (spoken on a new step and at most every 5 s,
// so screen readers are not flooded), and the problem card with its words, buttons and retry countdown.
import { $, show } from "./dom.js";
import { describe, Problem } from "./text.js";

const PHASES = ["check", "upload", "queue", "separate", "fetch"];
const ANNOUNCE_EVERY_MS = 5000;
const FILE_PROBLEMS = ["upload_too_large", "too_long", "not_audio"];

/** Any error as a Problem (a Problem stays as it is). */
export function asProblem(error) {
  return error instanceof Problem ? error : new Problem("unexpected", error && error.message ? error.message : String(error));
}

/** True for a problem with the file itself: the person chooses another file rather than trying again. */
export function isFileProblem(code) {
  return FILE_PROBLEMS.includes(code);
}

export function createMessages({ screens, log }) {
  let lastAnnounced = 0;
  let retryTimer = null;
  let lastProblem = null;

  /** Moves the work to a step (`phase`) and says `text`; `fraction` fills the bar (null: it moves). */
  function setPhase(phase, text, fraction = null) {
    const changed = screens.phase !== phase;
    screens.enter(phase);
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
    const now = performance.now();
    if (announce || now - lastAnnounced > ANNOUNCE_EVERY_MS) {
      $("announce").textContent = text;
      lastAnnounced = now;
    }
    log("progress", { phase: screens.phase, text, fraction });
  }

  /** Shows the work card for the song `name`, its Cancel button ready. */
  function showWork(name) {
    clearRetry();
    screens.show("work");
    $("work-name").textContent = name;
    $("cancel").disabled = false;
  }

  function cancelling() {
    $("cancel").disabled = true;
    setProgress("Cancelling…", null, true);
  }

  /**
   * Shows the problem card for `problem`. `hasFile`: the page still holds the song (after a reload it does
   * not), so "Try again" can send it again.
   */
  function showProblem(problem, { hasFile }) {
    const words = describe(problem);
    log("problem", { code: problem.code, status: problem.status, title: words.title });
    screens.enter("problem");
    lastProblem = { code: problem.code, status: problem.status, title: words.title, action: words.action };
    screens.show("problem");
    $("problem-text").textContent = words.title;
    $("problem-action").textContent = words.action;
    clearRetry();
    const fileProblem = isFileProblem(problem.code) || !hasFile;
    $("retry").hidden = fileProblem;
    $("problem-dismiss").textContent = fileProblem ? "Choose another file" : "Change the song or options";
    if (!hasFile && words.action.includes("Try again")) {
      // After a reload the page no longer has the file: only "Choose another file" is on this screen.
      $("problem-action").textContent = "Press Choose another file to separate a song again.";
    }
    retryAfter(words.retryAfter);
    $("problem-title").focus();
  }

  /** "Try again" waits `seconds` (the server said when), counting down; at once when null. */
  function retryAfter(seconds) {
    const retry = $("retry");
    if (!seconds) {
      retry.disabled = false;
      retry.textContent = "Try again";
      return;
    }
    const until = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      retry.disabled = left > 0;
      retry.textContent = left > 0 ? `Try again in ${left} s` : "Try again";
      if (left > 0) retryTimer = setTimeout(tick, 500);
    };
    tick();
  }

  function clearRetry() {
    clearTimeout(retryTimer);
  }

  return {
    setPhase,
    setProgress,
    showWork,
    cancelling,
    showProblem,
    hideProblem: () => show("problem", false),
    clearRetry,
    /** {code, status, title, action} of the last problem shown, or null. */
    get lastProblem() {
      return lastProblem;
    },
  };
}
