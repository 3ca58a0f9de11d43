// A job's life in this tab: a key (sessions.js), the upload, following it to its end (follow.js), the
// download of its zip; or, after a reload, following again the job this tab had (kept in sessionStorage as
// {id, token, name, created, options, position}: `position`, where the player was when the page went away);
// or opening a job of the recent list the same way; and Cancel. A run resolves with its outcome and the
// caller shows it: {kind: "result", cached}, {kind: "cancelled"} or {kind: "problem", problem}.
import { deleteJob, downloadResult, getJob, uploadJob } from "./api.js";
import { $ } from "./dom.js";
import { JobFollow } from "./follow.js";
import { asProblem } from "./messages.js";
import { formData } from "./options.js";
import { createSessions } from "./sessions.js";
import { readStorage, validEntry, writeStorage } from "./storage.js";
import { formatBytes, Problem } from "./text.js";

const CURRENT_KEY = "freestems.current";
const KEEPS_KEY = new Set([413, 415, 422, 429]); // refused uploads do not use the session key up

function saveCurrent(entry) {
  writeStorage(sessionStorage, CURRENT_KEY, entry);
}

function loadCurrent() {
  const entry = readStorage(sessionStorage, CURRENT_KEY, null);
  return validEntry(entry) ? entry : null;
}

function warnBeforeLeaving(event) {
  event.preventDefault();
  event.returnValue = "";
}

function aborted(run, error) {
  return run.signal.aborted || (error && error.name === "AbortError");
}

/**
 * `present(archive, file, options)` shows a finished job's zip; `prepareAudio()` runs during the click that
 * starts a separation (an audio context made then may play later without another click); `onView(job,
 * message)` hears each state of the job (the live player starts from them).
 */
export function createJobs({ screens, messages, recent, log, present, prepareAudio, onView = null }) {
  let run = null; // the AbortController of the run in progress
  let follow = null; // its JobFollow
  let job = null; // {id, token} of the last job started or re-attached
  const sessions = createSessions({
    messages,
    log,
    handlers: {
      onJob: (message) => follow && follow.onJob(message),
      onDone: (message) => follow && follow.onDone(message),
      onProblem: (problem) => follow && follow.onProblem(problem),
    },
  });

  function begin() {
    run = new AbortController();
    follow = new JobFollow({ messages, log, signal: run.signal, onView: onView && ((message) => onView(job, message)) });
    return run;
  }

  function end(ended) {
    if (run === ended) run = null;
    if (follow) follow.end();
    follow = null;
  }

  function failed(error) {
    const problem = asProblem(error);
    if (problem.code === "key_budget") sessions.needAtLeast(problem.cost); // Try again earns a key for it
    sessions.dropUnusable();
    if (problem.code !== "lost_contact") saveCurrent(null); // the job has ended: nothing to re-attach to
    return { kind: "problem", problem };
  }

  /**
   * Separates `file` with `options` (from the form); `powCounter`: the server's most proof-of-work tries;
   * `budget`: the model-seconds the options need on this song (cost.js), what the key is earned for.
   */
  async function separate(file, options, powCounter, budget = null) {
    const mine = begin();
    job = null;
    messages.showWork(file.name);
    $("work-title").focus();
    window.addEventListener("beforeunload", warnBeforeLeaving);
    log("separate", { options });
    prepareAudio();
    try {
      const session = await sessions.obtain(mine.signal, powCounter, budget);
      const created = await upload(session, file, options, mine.signal);
      started(created, file, options);
      await follow.until(created);
      session.close(); // the key did its one job; nothing more to hear
      await collect(file, options, mine);
      return { kind: "result", cached: created.cache === "hit" }; // answered at once from the result cache
    } catch (error) {
      if (!aborted(mine, error)) return failed(error);
      log("cancelled");
      return { kind: "cancelled" };
    } finally {
      window.removeEventListener("beforeunload", warnBeforeLeaving);
      end(mine);
    }
  }

  /** POST jobs with the session's key, showing the upload's progress; resolves with the created job. */
  async function upload(session, file, options, signal) {
    messages.setPhase("upload", `Uploading ${formatBytes(file.size)}…`, 0);
    let created;
    try {
      created = await uploadJob(formData(file, options), session.key, {
        signal,
        onProgress: (sent, total) => {
          if (sent >= total) messages.setProgress("Upload finished; the server is checking the file…", null, true);
          else messages.setProgress(`Uploading: ${formatBytes(sent)} of ${formatBytes(total)}`, sent / total);
        },
      });
    } catch (error) {
      if (!(error instanceof Problem && KEEPS_KEY.has(error.status))) session.spent = true;
      throw error;
    }
    session.spent = true;
    return created;
  }

  /** The job exists: remember it (this tab, for a reload; this browser's recent list) and show its state. */
  function started(created, file, options) {
    job = { id: created.id, token: created.token };
    follow.job = job;
    const entry = { id: created.id, token: created.token, name: file.name, created: Date.now(), options };
    saveCurrent(entry);
    recent.remember({ id: entry.id, token: entry.token, name: entry.name, created: entry.created });
    log("created", { id: created.id, state: created.state, cache: created.cache });
    if (created.state === "queued" && screens.phase === "upload") follow.onJob(created);
  }

  /** The job is done: download its zip and show the player. */
  async function collect(file, options, mine) {
    follow.closeSocket();
    messages.setPhase("fetch", "Downloading the stems…", 0);
    const archive = await downloadResult(job, {
      signal: mine.signal,
      onProgress: (received, total) =>
        messages.setProgress(`Downloading the stems: ${Math.floor((100 * received) / total)}%`, received / total),
    });
    messages.setProgress("Unpacking and decoding the stems…", null, true);
    await present(archive, file, options);
  }

  /**
   * After a reload: follows this tab's unfinished job again, or shows its result if it is done. Resolves
   * with null when there is none (or the server no longer has it). `chosen`: a job of the recent list
   * ({id, token, name, created}) instead, which becomes this tab's job.
   */
  async function reattach(chosen = null) {
    if (chosen && validEntry(chosen)) saveCurrent({ ...chosen });
    const entry = loadCurrent();
    if (!entry) return null;
    let view;
    try {
      view = await getJob(entry);
    } catch (error) {
      if (error && error.code === "not_found") {
        saveCurrent(null);
        recent.forget(entry.id);
      }
      log("reattach_failed", { code: error && error.code });
      return null;
    }
    const mine = begin();
    job = { id: entry.id, token: entry.token };
    follow.job = job;
    const file = { name: entry.name || "your song" };
    const given = entry.options || {};
    const options = {
      ...given,
      model: view.model || given.model,
      twoStems: view.options.two_stems ?? given.twoStems ?? null,
      shifts: view.options.shifts || given.shifts || 1,
      format: view.options.format || given.format || "mp3",
      bitrate: view.options.mp3_bitrate || given.bitrate || 192,
    };
    log("reattach", { id: entry.id, state: view.state });
    messages.showWork(file.name);
    try {
      await followAgain(view);
      await collect(file, options, mine);
      return { kind: "result" };
    } catch (error) {
      return aborted(mine, error) ? { kind: "cancelled" } : failed(error);
    } finally {
      end(mine);
    }
  }

  /** Resolves when the re-attached job (`view`: its state now) is done; rejects when it ended otherwise. */
  async function followAgain(view) {
    if (view.state === "failed" || view.state === "cancelled") {
      follow.onJob(view);
      throw follow.pendingProblem || new Problem(view.state);
    }
    if (view.state === "done") return;
    follow.onJob(view);
    follow.lost = false;
    const following = follow.until(view);
    follow.reconnect(); // no session socket after a reload: follow by id and token
    await following;
  }

  /** Cancel: stops the run, and deletes the job now (else the server would wait out its grace period). */
  function cancel() {
    if (!run) return;
    messages.cancelling();
    if (job) {
      deleteJob(job).catch(() => {});
      recent.forget(job.id);
    }
    saveCurrent(null);
    sessions.close();
    run.abort();
    follow.settle(new DOMException("cancelled", "AbortError"));
  }

  return {
    separate,
    reattach,
    cancel,
    /** {id, token} of the job of this page (a copy), or null. */
    get job() {
      return job ? { ...job } : null;
    },
    get running() {
      return Boolean(run);
    },
    /** The job's files were deleted: a reload has nothing to follow. */
    deleted() {
      saveCurrent(null);
    },
    /** "Separate another song": the page lets the last job go. */
    letGo() {
      job = null;
      saveCurrent(null);
    },
    /** Seconds into the song where the player was when this tab's job was last left (0: none). */
    get savedPosition() {
      const entry = loadCurrent();
      return entry && Number.isFinite(entry.position) ? entry.position : 0;
    },
    /** The page goes away while the player is at `seconds`: a reload resumes there. */
    notePosition(seconds) {
      const entry = loadCurrent();
      if (entry && job && entry.id === job.id) saveCurrent({ ...entry, position: seconds });
    },
    /** The page goes away: close the sockets (the server keeps an unfinished job for a grace period). */
    close() {
      sessions.close();
      if (follow) follow.closeSocket();
    },
  };
}
