// Talking to the service this page came from: its settings, the session WebSocket, jobs over HTTP.
// Every URL is relative to the page, so the service also works behind a path prefix.
import { Problem } from "./text.js";

/** The close code of a socket that reached its lifetime (the server closes every socket after a while). */
export const LIFETIME_CLOSE = 4000;

/** What the page falls back to when the server does not describe itself (no GET /config). */
export const FALLBACK_CATALOG = [
  { name: "scnet", title: "SCNet (authors' base)", sdr: { avg: 9.03, bass: 8.89, drums: 10.44, vocals: 9.9, other: 6.89 }, relative_cost: 1 },
  { name: "scnet-large", title: "SCNet Large (ZFTurbo)", sdr: { avg: 9.32, bass: 8.63, drums: 10.89, vocals: 10.69, other: 7.06 }, relative_cost: 5 },
  { name: "scnet-large-authors", title: "SCNet Large (authors)", sdr: { avg: 9.7, bass: 9.38, drums: 11.15, vocals: 10.94, other: 7.31 }, relative_cost: 5 },
  { name: "scnet-xl", title: "SCNet XL", sdr: { avg: 9.8, bass: 9.23, drums: 11.51, vocals: 11.05, other: 7.41 }, relative_cost: 6 },
  { name: "scnet-xl-ihf", title: "SCNet XL IHF", sdr: { avg: 10.08, bass: 9.23, drums: 11.81, vocals: 11.42, other: 7.88 }, relative_cost: 10 },
];
export const FALLBACK_LIMITS = { max_upload_mb: 100, max_duration: 1200, max_shifts: 5 };
export const MP3_BITRATES = [128, 160, 192, 224, 256, 320];
const SOURCES = ["drums", "bass", "other", "vocals"];

export function url(path) {
  return new URL(path, document.baseURI).href;
}

function websocketUrl(path) {
  const address = new URL(path, document.baseURI);
  address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
  return address.href;
}

async function problemFromResponse(response) {
  let error = {};
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) error = body.error;
  } catch (ignored) {
    // not JSON: a proxy's page, say
  }
  const header = Number(response.headers.get("Retry-After"));
  const retryAfter = error.retry_after || (Number.isFinite(header) && header > 0 ? header : null);
  return new Problem(error.code || `http_${response.status}`, error.message || response.statusText, {
    status: response.status,
    retryAfter,
    field: error.field || null,
  });
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(url(path), { cache: "no-store", ...options });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new Problem("network", "the server cannot be reached");
  }
  return response;
}

/**
 * The server's description, normalised: {model, sources, models[], jobs[], limits, formats[], mp3Bitrates,
 * mp3Bitrate, auth, powCounter, pricing, resultTtl, described}. Uses GET config, else GET health and defaults.
 * `pricing` (null from a server that sets no prices) is what cost.js prices a separation with.
 */
export async function loadConfig() {
  let described = null;
  try {
    const response = await request("config", { headers: { Accept: "application/json" } });
    if (response.ok) described = await response.json();
  } catch (ignored) {
    described = null;
  }
  let health = {};
  if (!described) {
    try {
      const response = await request("health", { headers: { Accept: "application/json" } });
      if (response.ok) health = await response.json();
    } catch (ignored) {
      health = {};
    }
  }
  const source = described || {};
  const model = source.model || health.model || "scnet";
  const catalog = Array.isArray(source.models) && source.models.length ? source.models : FALLBACK_CATALOG;
  // A server lists the models it serves (each with its stems, published SDR, relative time and licence);
  // an older one listed its whole catalog with a `served` flag.
  const models = catalog.map((entry) => ({
    name: entry.name,
    title: entry.title || entry.name,
    stems: Array.isArray(entry.stems) && entry.stems.length ? entry.stems : null,
    sdr: entry.sdr || null,
    sdrSet: entry.sdr_set || null,
    relativeCost: entry.relative_cost ?? entry.relativeCost ?? null,
    license: entry.license || null,
    jobs: Array.isArray(entry.jobs) ? entry.jobs : [],
    available: entry.served ?? entry.available ?? (catalog === source.models || entry.name === model),
  }));
  if (!models.some((entry) => entry.name === model)) {
    models.unshift({ name: model, title: model, sdr: null, relativeCost: null, available: true });
  }
  const limits = { ...FALLBACK_LIMITS, ...(source.limits || {}) };
  const formats = Array.isArray(source.formats) && source.formats.length ? source.formats : ["mp3", "wav"];
  return {
    model,
    sources: Array.isArray(source.sources) && source.sources.length ? source.sources : SOURCES,
    deviceModels: Array.isArray(source.device_models) ? source.device_models : [], // device-run.js
    deviceOnly: source.device_only === true, // the server separates on the visitor's device only
    models,
    jobs: describedJobs(source.jobs),
    limits,
    formats,
    mp3Bitrates: Array.isArray(source.mp3_bitrates) && source.mp3_bitrates.length ? source.mp3_bitrates : MP3_BITRATES,
    mp3Bitrate: source.mp3_bitrate || 192,
    auth: source.auth || health.auth || "pow",
    powCounter: (source.pow && source.pow.counter) || source.pow_counter || null,
    pricing: source.pricing && typeof source.pricing === "object" ? source.pricing : null,
    resultTtl: source.result_ttl || null,
    described: Boolean(described),
  };
}

/** GET config's jobs ({name, title, description, models: best first}); none from a server that has none. */
function describedJobs(jobs) {
  if (!Array.isArray(jobs)) return [];
  return jobs
    .filter((job) => job && typeof job.name === "string" && Array.isArray(job.models))
    .map((job) => ({ name: job.name, title: job.title || job.name, description: job.description || "", models: job.models }));
}

/** True when the server answers at all (tells a refused WebSocket from a network that is down). */
export async function serverReachable() {
  try {
    const response = await request("health", { headers: { Accept: "application/json" } });
    return response.ok;
  } catch (ignored) {
    return false;
  }
}

/**
 * The session WebSocket. Messages are taken in order with `next(type)`; `job` and `done` messages go to
 * the callbacks. Any server error, or the socket closing when we did not close it, becomes a Problem:
 * waiting `next` calls reject with it and `onProblem` hears it (code "server_restart" for close 1012,
 * "socket_lifetime" for close 4000: the server ends every socket at its lifetime; the job goes on).
 */
export class Session {
  constructor({ onJob, onDone, onProblem } = {}) {
    this.onJob = onJob || (() => {});
    this.onDone = onDone || (() => {});
    this.onProblem = onProblem || (() => {});
    this.socket = null;
    this.inbox = [];
    this.waiters = [];
    this.problem = null;
    this.closedByUs = false;
    this.key = null;
    this.budget = null; // model-seconds the key buys (null: a server without prices)
    this.maxCounter = null; // the most tries the challenge can take, as the server said
    this.keyExpiresAt = 0;
    this.spent = false;
    this.pinger = null;
  }

  get open() {
    return Boolean(this.socket) && this.socket.readyState === WebSocket.OPEN && !this.problem;
  }

  /** A live key that no upload has used yet (refused uploads do not use it up). */
  get usable() {
    return this.open && Boolean(this.key) && !this.spent && Date.now() < this.keyExpiresAt - 5000;
  }

  /** Connects; resolves with the first challenge ({parameters, signature}), for a key of `budget`
   * model-seconds (null: the server's default budget). */
  async connect(budget = null) {
    let opened = false;
    this.socket = new WebSocket(websocketUrl(Number.isFinite(budget) ? `session?budget=${budget}` : "session"));
    this.socket.onopen = () => {
      opened = true;
    };
    this.socket.onmessage = (event) => this._receive(event.data);
    this.socket.onclose = async (event) => {
      clearInterval(this.pinger);
      if (this.closedByUs || this.problem) return this._fail(this.problem || new Problem("aborted"));
      if (!opened) {
        // Browsers hide why a handshake failed: ask the server whether it is there at all.
        const reachable = await serverReachable();
        return this._fail(new Problem(reachable ? "session_refused" : "network", "", { status: 0 }), true);
      }
      if (event.code === 1012) return this._fail(new Problem("server_restart", "the server is restarting"), true);
      if (event.code === LIFETIME_CLOSE) return this._fail(new Problem("socket_lifetime", event.reason || ""), true);
      return this._fail(new Problem("connection_lost", event.reason || ""), true);
    };
    const message = await this.next("challenge");
    this.pinger = setInterval(() => this.send({ type: "ping" }), 25000);
    this.maxCounter = Number.isFinite(message.max_counter) ? message.max_counter : null;
    return message.challenge;
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  /** Sends the proof-of-work answer; resolves with the key. */
  async redeem(payload) {
    this.send({ type: "solution", payload });
    const message = await this.next("session");
    this.key = message.key;
    this.budget = Number.isFinite(message.budget) ? message.budget : null;
    this.keyExpiresAt = Date.now() + (message.expires_in || 60) * 1000;
    this.spent = false;
    return this.key;
  }

  /** Resolves with the next message of `type` (messages of other types before it are dropped). */
  next(type) {
    const index = this.inbox.findIndex((message) => message.type === type);
    if (index >= 0) return Promise.resolve(this.inbox.splice(0, index + 1).pop());
    if (this.problem) return Promise.reject(this.problem);
    return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
  }

  close() {
    this.closedByUs = true;
    clearInterval(this.pinger);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "done");
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (ignored) {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    if (message.type === "pong") return;
    if (message.type === "error") {
      this._fail(new Problem(message.code || "unexpected", message.message || ""), true);
      return;
    }
    if (message.type === "job") {
      this.onJob(message);
      return;
    }
    if (message.type === "done") {
      this.onDone(message);
      return;
    }
    const waiter = this.waiters.findIndex((item) => item.type === message.type);
    if (waiter >= 0) this.waiters.splice(waiter, 1)[0].resolve(message);
    else this.inbox.push(message);
  }

  _fail(problem, tell = false) {
    if (!this.problem) this.problem = problem;
    const waiters = this.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(this.problem);
    // A problem goes to whoever waits for a message; else (while a job runs) to onProblem.
    if (tell && !this.closedByUs && waiters.length === 0) this.onProblem(this.problem);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) {
      this.closedByUs = true;
      this.socket.close(1000);
    }
  }
}

/**
 * POST jobs with the form, with upload progress (XMLHttpRequest: fetch cannot report it).
 * Resolves with the 202 body ({id, token, state, position, ...}); rejects with a Problem.
 */
export function uploadJob(form, key, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url("jobs"));
    xhr.responseType = "text";
    if (key) xhr.setRequestHeader("X-Session-Key", key);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (event) => {
      if (onProgress && event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onerror = () => reject(new Problem("network", "the upload was interrupted"));
    xhr.ontimeout = () => reject(new Problem("upload_timeout", "the upload took too long"));
    xhr.onabort = () => reject(new DOMException("the upload was stopped", "AbortError"));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (ignored) {
        body = null;
      }
      if (xhr.status === 202 && body && body.id) {
        resolve(body);
        return;
      }
      const error = (body && body.error) || {};
      const header = Number(xhr.getResponseHeader("Retry-After"));
      reject(
        new Problem(error.code || `http_${xhr.status}`, error.message || xhr.statusText || "", {
          status: xhr.status,
          retryAfter: error.retry_after || (Number.isFinite(header) && header > 0 ? header : null),
          field: error.field || null,
          cost: Number.isFinite(error.cost) ? error.cost : null,
        }),
      );
    };
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(form);
  });
}

function jobPath(job, suffix = "") {
  return `jobs/${encodeURIComponent(job.id)}${suffix}`;
}

/** GET jobs/{id}: the job's state (used to follow it when the WebSocket is gone after a server restart). */
export async function getJob(job, { signal } = {}) {
  const response = await request(jobPath(job), { headers: { "X-Job-Token": job.token }, signal });
  if (!response.ok) throw await problemFromResponse(response);
  return response.json();
}

/** The result zip as an ArrayBuffer, with download progress. */
export async function downloadResult(job, { onProgress, signal } = {}) {
  const response = await request(jobPath(job, "/result"), { headers: { "X-Job-Token": job.token }, signal });
  if (!response.ok) throw await problemFromResponse(response);
  const total = Number(response.headers.get("Content-Length")) || 0;
  if (!response.body || !total) return response.arrayBuffer();
  const reader = response.body.getReader();
  const bytes = new Uint8Array(total);
  let received = 0;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new Problem("network", "the download was interrupted");
    }
    if (chunk.done) break;
    if (received + chunk.value.length > total) throw new Problem("zip", "the download is longer than announced");
    bytes.set(chunk.value, received);
    received += chunk.value.length;
    if (onProgress) onProgress(received, total);
  }
  if (received !== total) throw new Problem("network", "the download was cut short");
  return bytes.buffer;
}

/** DELETE jobs/{id}: cancels it and deletes its upload and result now. Resolves true (false: already gone). */
export async function deleteJob(job) {
  const response = await request(jobPath(job), { method: "DELETE", headers: { "X-Job-Token": job.token } });
  if (response.status === 204) return true;
  if (response.status === 404) return false;
  throw await problemFromResponse(response);
}

/**
 * A socket that follows a job by id and token (`follow`): after a reload, or after the connection dropped.
 * `run()` resolves when the socket closes ({opened, code, byUs}); `job` and `done` messages go to the
 * callbacks; an error message (e.g. not_found: the job is gone) rejects it with a Problem.
 */
export class Follower {
  constructor(job, { onJob, onDone } = {}) {
    this.job = job;
    this.onJob = onJob || (() => {});
    this.onDone = onDone || (() => {});
    this.socket = null;
    this.byUs = false;
    this.error = null;
    this.pinger = null;
  }

  run() {
    return new Promise((resolve, reject) => {
      let opened = false;
      let socket;
      try {
        socket = new WebSocket(websocketUrl("session"));
      } catch (error) {
        resolve({ opened: false, code: 0, byUs: false });
        return;
      }
      this.socket = socket;
      if (this.byUs) socket.close(1000);
      socket.onopen = () => {
        opened = true;
        socket.send(JSON.stringify({ type: "follow", id: this.job.id, token: this.job.token }));
        this.pinger = setInterval(() => {
          if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ping" }));
        }, 25000);
      };
      socket.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (ignored) {
          return;
        }
        if (!message || typeof message.type !== "string") return;
        if (message.type === "job") this.onJob(message);
        else if (message.type === "done") this.onDone(message);
        else if (message.type === "error" && message.code === "not_found") this.error = new Problem("not_found", message.message || "");
      };
      socket.onclose = (event) => {
        clearInterval(this.pinger);
        if (this.error) reject(this.error);
        else resolve({ opened, code: event.code, byUs: this.byUs });
      };
    });
  }

  close() {
    this.byUs = true;
    clearInterval(this.pinger);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "done");
  }
}
