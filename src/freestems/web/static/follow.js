// Following one job until it ends: its messages (from the session WebSocket, or from a socket that follows
// it by id and token after a reload or a dropped connection) become progress on the page; a job that starts
// again (a restarted server resumed it from its beginning) is said to have; while the server is away the
// page reconnects with backoff, for at most ten minutes. A socket the server closed at its lifetime (close
// 4000) is followed again at once and without a word: nothing was lost.
import { Follower, LIFETIME_CLOSE } from "./api.js";
import { formatClock, formatDuration, Problem } from "./text.js";

const RECONNECT_GIVE_UP_MS = 10 * 60 * 1000;
const RESTARTED = "The server restarted; your separation started again. ";

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * One run's follow. `job` ({id, token}) is set once the job exists: messages of other jobs are ignored.
 * Messages can arrive before anyone waits (`until`): the outcome is kept until then.
 */
export class JobFollow {
  constructor({ messages, log, signal, onView = null }) {
    this.messages = messages;
    this.onView = onView; // hears every state the job is in (the live player starts from them)
    this.log = log;
    this.signal = signal;
    this.job = null;
    this.waiter = null; // {resolve, reject} of `until`
    this.doneSeen = false;
    this.pendingProblem = null;
    this.lost = false; // the socket dropped while the job was unfinished: follow it by id and token
    this.quiet = false; // ... because it reached its lifetime: at once, without a word
    this.reconnecting = false;
    this.follower = null;
    this.maxProgress = 0;
    this.startedAt = null;
    this.restartNote = "";
  }

  /** A `job` message: its state as progress, or the end of the follow (failed, cancelled). */
  onJob(message) {
    if (this.job && message.id && message.id !== this.job.id) return;
    this.log("job", { state: message.state, progress: message.progress, position: message.position });
    const socket = this.follower && this.follower.socket;
    if (this.lost && this.reconnecting && socket && socket.readyState === WebSocket.OPEN) this.log("reconnected");
    this.noticeRestart(message);
    this.showState(message);
  }

  /**
   * A job that starts again (a new start time, or back in the queue after running) was resumed from its
   * beginning by a restarted server: say so, instead of letting the progress drop unexplained.
   */
  noticeRestart(message) {
    const startedAgain =
      (message.state === "queued" && this.maxProgress > 0) ||
      (message.started_at && this.startedAt && message.started_at !== this.startedAt);
    if (startedAgain && !this.restartNote) {
      this.restartNote = RESTARTED;
      this.log("restarted", { from: this.maxProgress });
    }
    if (startedAgain) this.maxProgress = 0;
    if (message.started_at) this.startedAt = message.started_at;
  }

  showState(message) {
    const error = message.error || {};
    if (message.stage === "checking" && ["queued", "running"].includes(message.state)) {
      this.messages.setPhase("upload", `${this.restartNote}The server is checking the file…`, null);
    } else if (message.state === "queued") {
      this.messages.setPhase("queue", `${this.restartNote}${queueWords(message)}`, null);
    } else if (message.state === "running") {
      const fraction = Number(message.progress) || 0;
      if (fraction + 0.02 < this.maxProgress) {
        // Progress went back: the server restarted and ran the job again from its start.
        this.restartNote = RESTARTED;
        this.log("restarted", { from: this.maxProgress, to: fraction });
      }
      this.maxProgress = Math.max(this.maxProgress, fraction);
      this.messages.setPhase("separate", `${this.restartNote}${runningWords(message, fraction)}`, fraction);
    } else if (message.state === "done") {
      this.messages.setPhase("separate", "Separated.", 1);
    } else if (message.state === "failed") {
      this.settle(new Problem(error.code || "failed", error.message || ""));
    } else if (message.state === "cancelled") {
      this.settle(new Problem("cancelled", error.message || ""));
    }
    if (this.onView) this.onView(message);
  }

  /** A `done` message: the result is ready. */
  onDone(message) {
    if (this.job && message.id && message.id !== this.job.id) return;
    this.log("done", { id: message.id });
    this.doneSeen = true;
    this.settle(null);
  }

  /**
   * The session socket failed. If it dropped (1006, 1011, 1012), the job is kept on the server for a
   * while, or resumed after a restart; keys do not survive: follow the job by id and token on a new socket.
   */
  onProblem(problem) {
    this.log("session_problem", { code: problem.code });
    if (["server_restart", "connection_lost", "socket_lifetime"].includes(problem.code)) {
      this.lost = true;
      this.quiet = problem.code === "socket_lifetime";
      if (this.waiter) this.reconnect();
      return;
    }
    this.settle(problem);
  }

  /** Ends the follow: done (null) or a Problem (or an AbortError when cancelled). */
  settle(problem) {
    const waiter = this.waiter;
    if (!waiter) {
      if (!problem) this.doneSeen = true;
      else this.pendingProblem = problem;
      return;
    }
    this.waiter = null;
    if (problem) waiter.reject(problem);
    else waiter.resolve();
  }

  /** Resolves when the job (`created`: its state when created or looked up) is done. */
  until(created) {
    if (created.state === "done" || this.doneSeen) return Promise.resolve();
    if (this.pendingProblem) return Promise.reject(this.pendingProblem);
    const following = new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
    if (this.lost) this.reconnect();
    return following;
  }

  /**
   * Follows the job by id and token on a new socket, reconnecting with backoff while the server is away.
   * Runs until the follow settles (done, failed, cancelled, not found) or the run is cancelled.
   */
  async reconnect() {
    if (this.reconnecting) return;
    this.reconnecting = true;
    const started = Date.now();
    let delay = 500;
    try {
      while (this.waiter && !this.signal.aborted) {
        if (this.lost && this.quiet) {
          this.log("reconnecting", { lifetime: true });
        } else if (this.lost) {
          this.messages.setProgress("Lost contact with the server; reconnecting…", null, true);
          this.log("reconnecting", { delay });
          await sleep(delay, this.signal);
          delay = Math.min(delay * 2, 8000);
        }
        this.quiet = false;
        if (!this.waiter || this.signal.aborted) return;
        const outcome = await this.followOnce();
        if (!outcome || outcome.byUs || !this.waiter) return;
        this.lost = true;
        this.quiet = outcome.code === LIFETIME_CLOSE;
        if (outcome.opened) delay = 500;
        if (Date.now() - started > RECONNECT_GIVE_UP_MS) {
          this.settle(new Problem("lost_contact"));
          return;
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  /** One follow socket, until it closes ({opened, code, byUs}); null when the job is gone (settled). */
  async followOnce() {
    const follower = new Follower(this.job, { onJob: (message) => this.onJob(message), onDone: (message) => this.onDone(message) });
    this.follower = follower;
    try {
      return await follower.run();
    } catch (problem) {
      this.settle(problem); // not_found: the job is gone
      return null;
    }
  }

  /** Closes the follow socket (the job is done, or the page goes away). */
  closeSocket() {
    if (this.follower) this.follower.close();
  }

  /** The run is over: nothing more to wait for or to reconnect. */
  end() {
    this.waiter = null;
    this.lost = false;
    this.closeSocket();
    this.follower = null;
  }
}

/** An estimate in words: exact under 20 s, else to 5 s ("about 1 minute 5 seconds"). */
function estimate(seconds) {
  const rounded = seconds < 20 ? Math.max(1, Math.ceil(seconds)) : Math.round(seconds / 5) * 5;
  return formatDuration(rounded);
}

function known(value) {
  return value !== null && value !== undefined && Number.isFinite(Number(value)) && Number(value) >= 0;
}

/** "Waiting in line: position 3. It should start in about 40 seconds." (the estimate when the server gives one). */
export function queueWords(message) {
  const position = message.position || 0;
  const words = position <= 1 ? "You are next in line." : `Waiting in line: position ${position}.`;
  return known(message.queue_eta) ? `${words} It should start in about ${estimate(Number(message.queue_eta))}.` : words;
}

/** "Separating: 42% · 0:12 so far · about 20 seconds left" (elapsed and time left when the server gives them). */
export function runningWords(message, fraction) {
  if (message.stage === "finishing") return "Finishing: writing the stem files…";
  const parts = [`Separating: ${Math.floor(fraction * 100)}%`];
  if (known(message.elapsed)) parts.push(`${formatClock(Number(message.elapsed))} so far`);
  if (known(message.eta)) parts.push(`about ${estimate(Number(message.eta))} left`);
  return parts.join(" · ");
}
