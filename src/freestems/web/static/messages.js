// What the page tells a person while it works and when something goes wrong: the work card's steps,
// progress bar and status line, the screen-reader live region (at most one announcement every 10 s: a new
// step that comes sooner is said when the 10 s are over, so four quick steps are not four interruptions),
// and the problem card with its words, buttons and retry countdown (the words count down with the button).
import { $, show } from "./dom.js";
import { describe, formatDuration, Problem } from "./text.js";

const PHASES = ["check", "upload", "queue", "separate", "fetch"];
export const ANNOUNCE_EVERY_MS = 10000;
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
  let lastAnnounced = -Infinity;
  let pendingAnnouncement = null; // words of a new step that came within 10 s of the last announcement
  let announceTimer = null;
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
    // The bar moves (an animation) while nothing can be counted: the file being checked, a queue with no
    // estimate. A fraction shown as a number is not also animated.
    $("progress").closest(".progress-line").classList.toggle("is-busy", fraction === null || !Number.isFinite(fraction));
    say(text, announce);
    log("progress", { phase: screens.phase, text, fraction });
  }

  /**
   * The live region, at most once every ANNOUNCE_EVERY_MS. Routine progress inside the window is dropped
   * (the next one after it is said); a new step (`important`) inside the window waits for its end, the
   * latest words (of the step or of progress after it) winning.
   */
  function say(text, important) {
    const now = performance.now();
    const wait = lastAnnounced + ANNOUNCE_EVERY_MS - now;
    if (wait <= 0) {
      announceNow(text);
    } else if (important || pendingAnnouncement !== null) {
      pendingAnnouncement = text; // a waiting step is said with the latest words, not its first (stale) ones
      if (!announceTimer) {
        announceTimer = setTimeout(() => {
          announceTimer = null;
          const words = pendingAnnouncement;
          pendingAnnouncement = null;
          if (words) announceNow(words);
        }, wait);
      }
    }
  }

  function announceNow(text) {
    pendingAnnouncement = null;
    $("announce").textContent = text;
    lastAnnounced = performance.now();
    log("announce", { text });
  }

  /** Nothing more to say about the work (it ended): a pending step announcement is dropped. */
  function quiet() {
    clearTimeout(announceTimer);
    announceTimer = null;
    pendingAnnouncement = null;
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
    quiet();
    retryAfter(words.retryAfter, fileProblem ? null : $("problem-action").textContent);
    $("problem-title").focus();
  }

  /**
   * "Try again" waits `seconds` (the server said when), counting down; at once when null. The words under
   * the title (`action`, which says "Try again in 40 seconds.") count down with the button.
   */
  function retryAfter(seconds, action) {
    const retry = $("retry");
    if (!seconds) {
      retry.disabled = false;
      retry.textContent = "Try again";
      return;
    }
    const said = `Try again in ${formatDuration(seconds)}.`;
    const until = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      retry.disabled = left > 0;
      retry.textContent = left > 0 ? `Try again in ${left} s` : "Try again";
      if (action && action.includes(said)) {
        const now = left > 0 ? `Try again in ${formatDuration(left)}.` : "You can try again now.";
        $("problem-action").textContent = action.replace(said, now);
      }
      if (left > 0) retryTimer = setTimeout(tick, 250);
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
    quiet,
    /** {code, status, title, action} of the last problem shown, or null. */
    get lastProblem() {
      return lastProblem;
    },
  };
}
