// The session WebSocket that earns a key: connect, solve the challenge in Web Workers (pow.js), redeem the
// answer. A session whose key no upload has used yet is kept for the next song (a refused upload does not use
// the key up). Also on servers without keys (FREESTEMS_AUTH=none): the socket is what reports the job's
// progress and what cancels the job when the page goes away.
import { Session } from "./api.js";
import { solveChallenge } from "./pow.js";
import { Problem } from "./text.js";

/** `handlers` ({onJob, onDone, onProblem}) hear the session's job messages and its failure. */
export function createSessions({ messages, log, handlers }) {
  let session = null;
  let atLeast = 0; // a budget the server said a request needs (a key_budget refusal): asked for from then on

  /**
   * A session with an unused key: the open one, or a new one. `expected`: the most tries (or null);
   * `budget`: the model-seconds the key must buy (cost.js; null: the server's default). The check's work
   * grows with the budget, so a key is earned for what the chosen options need.
   */
  async function obtain(signal, expected, budget = null) {
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
    /** After a problem: a session that cannot serve another upload is closed. */
    dropUnusable() {
      if (session && !session.usable) {
        session.close();
        session = null;
      }
    },
    close() {
      if (session) session.close();
      session = null;
    },
  };
}
