// The session WebSocket that earns a key: connect, solve the challenge in Web Workers (pow.js), redeem the
// answer. A session whose key no upload has used yet is kept for the next song (a refused upload does not use
// the key up), for a minute: then its socket closes, since an open socket keeps the server's web container
// awake (and billed) for a page that may sit idle for hours. The socket is opened only when a key is needed
// (Separate), never when the page loads. Also on servers without keys (FREESTEMS_AUTH=none): the socket is
// what reports the job's progress and what cancels the job when the page goes away.
import { Session } from "./api.js";
import { solveChallenge } from "./pow.js";
import { Problem } from "./text.js";

const KEEP_MS = 60 * 1000; // how long an unused key's socket stays open for the next song

/** `handlers` ({onJob, onDone, onProblem}) hear the session's job messages and its failure. */
export function createSessions({ messages, log, handlers }) {
  let session = null;
  let idle = null; // the timer that closes a kept, unused session
  let atLeast = 0; // a budget the server said a request needs (a key_budget refusal): asked for from then on

  function stopIdle() {
    if (idle) clearTimeout(idle);
    idle = null;
  }

  /** Keep a session whose key is unused for the next song, for KEEP_MS; then close its socket. */
  function keepForAWhile() {
    stopIdle();
    const kept = session;
    const wait = Number(globalThis.freestemsSessionKeepMs) || KEEP_MS; // tests shorten it
    idle = setTimeout(() => {
      idle = null;
      if (session !== kept || !kept) return;
      log("session_idle_closed");
      kept.close();
      session = null;
    }, wait);
  }

  /**
   * A session with an unused key: the open one, or a new one. `expected`: the most tries (or null);
   * `budget`: the model-seconds the key must buy (cost.js; null: the server's default). The check's work
   * grows with the budget, so a key is earned for what the chosen options need.
   */
  async function obtain(signal, expected, budget = null) {
    stopIdle();
    const wanted = Number.isFinite(budget) ? Math.max(budget, atLeast) : atLeast || null;
    if (session && session.usable && !(wanted && session.budget !== null && session.budget < wanted)) {
      log("session_reused");
      return session;
    }
    if (session) session.close();
    messages.setPhase("check", "Anti-abuse check: connecting…", null);
    const fresh = new Session(handlers);
    session = fresh;
    const closeOnAbort = () => fresh.close();
    signal.addEventListener("abort", closeOnAbort, { once: true });
    try {
      await earnKey(fresh, signal, expected, wanted);
      return fresh;
    } finally {
      signal.removeEventListener("abort", closeOnAbort);
    }
  }

  async function earnKey(fresh, signal, expected, budget) {
    const challenge = await fresh.connect(budget);
    expected = fresh.maxCounter || expected;
    messages.setProgress("Anti-abuse check: your browser is solving a small puzzle…", null, true);
    const started = performance.now();
    const payload = await solveChallenge(challenge, {
      signal,
      expected,
      onProgress: ({ tries, expected: most }) => {
        const fraction = most ? Math.min(0.99, tries / most) : null;
        messages.setProgress(`Anti-abuse check: ${tries} tries`, fraction);
      },
    }).catch((error) => {
      if (error && error.name === "AbortError") throw error;
      throw error instanceof Problem ? error : new Problem("pow_unsupported", error.message);
    });
    log("solved", { ms: Math.round(performance.now() - started) });
    await fresh.redeem(payload);
    log("key");
  }

  return {
    obtain,
    /** The server refused a request as dearer than its key (`cost` model-seconds): later keys buy that. */
    needAtLeast(cost) {
      if (Number.isFinite(cost)) atLeast = Math.max(atLeast, Math.ceil(cost));
    },
    /** After a problem: a session that cannot serve another upload is closed; one that can is kept for a
     * while (KEEP_MS), then closed. */
    dropUnusable() {
      if (session && !session.usable) {
        session.close();
        session = null;
      } else if (session) {
        keepForAWhile();
      }
    },
    close() {
      stopIdle();
      if (session) session.close();
      session = null;
    },
  };
}
