// Solves a session challenge in Web Workers (one per core, up to 4, each taking every n-th counter).
import { encodePayload } from "./altcha.js";

const MAX_WORKERS = 4;

export class ProofOfWorkError extends Error {}

/**
 * Solve `challenge` (the server's {parameters, signature}); resolves to the base64 payload to send.
 * onProgress({tries, expected}) reports the work done; `expected` is the most tries it can take when the
 * server said so (config.pow.counter), else null. `signal` (AbortSignal) stops the workers.
 */
export function solveChallenge(challenge, { onProgress, expected = null, signal } = {}) {
  const parameters = challenge && challenge.parameters;
  if (!parameters) return Promise.reject(new ProofOfWorkError("the server sent a malformed challenge"));
  const count = Math.max(1, Math.min(MAX_WORKERS, navigator.hardwareConcurrency || 1));
  const workers = [];
  let tries = 0;
  let failures = 0;
  return new Promise((resolve, reject) => {
    const finish = (error, payload) => {
      for (const worker of workers) worker.terminate();
      workers.length = 0;
      if (signal) signal.removeEventListener("abort", onAbort);
      if (error) reject(error);
      else resolve(payload);
    };
    const onAbort = () => finish(new DOMException("the proof of work was stopped", "AbortError"));
    if (signal) {
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort);
    }
    for (let index = 0; index < count; index += 1) {
      let worker;
      try {
        worker = new Worker(new URL("./pow-worker.js", import.meta.url), { type: "module" });
      } catch (error) {
        finish(new ProofOfWorkError(`this browser cannot run the check in the background (${error.message})`));
        return undefined;
      }
      workers.push(worker);
      worker.onmessage = (event) => {
        const message = event.data;
        if (message.type === "tries") {
          tries += message.count;
          if (onProgress) onProgress({ tries, expected });
        } else if (message.type === "found") {
          finish(null, encodePayload(challenge, message.solution));
        } else if (message.type === "failed") {
          failures += 1;
          if (failures === count) finish(new ProofOfWorkError(message.message));
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        finish(new ProofOfWorkError(`the background check failed: ${event.message || "unknown error"}`));
      };
      worker.postMessage({ parameters, start: index, step: count });
    }
    return undefined;
  });
}
