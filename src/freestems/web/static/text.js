// Words for people: sizes, durations, and what an error means and what to do about it.

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "unknown size";
  if (bytes < 1000) return `${bytes} bytes`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(0)} kB`;
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
  return `${(bytes / 1e9).toFixed(2)} GB`;
}

/** 75.4 -> "1:15"; 3725 -> "1:02:05". */
export function formatClock(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "0:00";
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** 1200 -> "20 minutes"; 90 -> "1 minute 30 seconds"; 45 -> "45 seconds". */
export function formatDuration(seconds) {
  const whole = Math.round(seconds);
  const parts = [];
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = whole % 60;
  if (h) parts.push(`${h} hour${h === 1 ? "" : "s"}`);
  if (m) parts.push(`${m} minute${m === 1 ? "" : "s"}`);
  if (s || parts.length === 0) parts.push(`${s} second${s === 1 ? "" : "s"}`);
  return parts.join(" ");
}

/** A limit in MB as people write it: 100 -> "100 MB", 0.5 -> "500 kB". */
export function formatLimitMB(mb) {
  return formatBytes(Math.round(mb * 1e6));
}

const LOSSLESS = /\.(wav|wave|flac|aiff?|alac)$/i;
const MP3_STEPS = [320, 256, 224, 192, 160, 128, 112, 96, 80, 64, 56, 48, 40, 32];

/**
 * What would fit under the upload limit, for a `file` ({name, size, type}) that is over it and lasts
 * `duration` seconds (null: unknown); no length it names is over the length limit `maxDuration` (a song
 * longer than that is told to be cut to it at most). An MP3 (or another compressed file) can be exported
 * again at a lower bitrate or cut shorter; a WAV or FLAC fits as an MP3 at the bitrate the limit allows.
 * Headroom of 3% for the file's headers and tags.
 */
export function fitAdvice(file, duration, limitMB, maxDuration = Infinity) {
  const limitBytes = limitMB * 1e6 * 0.97;
  const lossless = LOSSLESS.test(file.name || "") || /audio\/(wav|x-wav|flac|x-flac|aiff)/.test(file.type || "");
  if (!Number.isFinite(duration) || !duration) {
    return lossless
      ? `Convert it to MP3 (a 5-minute song at 192 kbps is about 7 MB) and choose that file.`
      : `Export it again at a lower bitrate, or cut it shorter, and choose that file.`;
  }
  const longest = Math.floor(maxDuration); // the most a song may last
  const tooLong = duration > maxDuration + 0.5;
  const kept = Math.min(duration, longest); // what is left of the song once it is within the length limit
  const fitsKbps = Math.floor((limitBytes * 8) / kept / 1000);
  const bitrate = MP3_STEPS.find((kbps) => kbps <= fitsKbps);
  const cut = Math.min(Math.floor(limitBytes / (file.size / duration)), longest);
  const within = tooLong ? `It is also longer than the limit of ${formatDuration(maxDuration)}. ` : "";
  if (lossless && bitrate) {
    const mp3 = `MP3 at ${bitrate} kbps or lower (about ${formatBytes((bitrate * 1000 * kept) / 8)})`;
    return tooLong
      ? `${within}Cut it to at most ${formatClock(longest)}, convert that to ${mp3}, and choose that file.`
      : `Convert it to ${mp3} and choose that file.`;
  }
  if (lossless) return `${within}Even as an MP3 it would not fit: cut it to at most ${formatClock(cut)} and choose that file.`;
  if (tooLong) {
    const lower = bitrate && cut < longest ? `, or to ${formatClock(longest)} exported again at ${bitrate} kbps or lower` : "";
    return `${within}To fit, cut it to at most ${formatClock(cut)}${lower}, and choose that file.`;
  }
  const now = Math.round((file.size * 8) / duration / 1000);
  const lower = bitrate ? `export it again at ${bitrate} kbps or lower (it is about ${now} kbps now), or ` : "";
  return `To fit, ${lower}cut it to at most ${formatClock(cut)}, and choose that file.`;
}

export function capitalize(text) {
  const value = String(text || "").trim();
  return value ? value[0].toUpperCase() + value.slice(1) : value;
}

function sentence(text) {
  const value = capitalize(text);
  return value && !/[.!?]$/.test(value) ? `${value}.` : value;
}

/** A failure the page shows: what happened and what to do. */
export class Problem extends Error {
  /**
   * @param {string} code  a server error code (queue_full, not_audio, ...) or a page one (network, ...)
   * @param {string} message  the detail (the server's message when it sent one)
   * @param {object} extra  {status, retryAfter (s), field, cost (model-seconds, of a refused price)}
   */
  constructor(code, message = "", { status = 0, retryAfter = null, field = null, cost = null } = {}) {
    super(message || code);
    this.code = code;
    this.detail = message;
    this.status = status;
    this.retryAfter = retryAfter;
    this.field = field;
    this.cost = cost;
  }
}

// Actions name only buttons of the screen that shows them: the problem screen has "Try again" and
// "Change the song or options" (or "Choose another file").
const AGAIN = "Press Try again.";

/** {title, action, retryAfter} for a Problem (or any error). */
export function describe(problem) {
  const code = problem && problem.code ? problem.code : "unexpected";
  const detail = problem && (problem.detail || problem.message) ? String(problem.detail || problem.message) : "";
  const wait = problem && problem.retryAfter ? Math.max(1, Math.ceil(problem.retryAfter)) : null;
  const waitWords = wait ? `Try again in ${formatDuration(wait)}.` : "Try again in a minute.";
  const said = sentence(detail);
  switch (code) {
    case "network":
      return { title: "The server cannot be reached.", action: "Check your internet connection, then press Try again." };
    case "connection_lost":
      return {
        title: "The connection to the server was lost before the separation started.",
        action: "Check your internet connection, then press Try again.",
      };
    case "session_refused":
      return {
        title: "The server did not open a session for this page.",
        action: "You may have started many separations in the last minute. Wait a minute, then try again.",
      };
    case "session_expired":
    case "key_expired":
    case "key_closed":
    case "key_invalid":
    case "key_missing":
    case "key_used":
      return { title: "Your session expired before the upload started.", action: AGAIN };
    case "key_foreign":
      return {
        title: "Your network address changed during the separation (for example, Wi-Fi to mobile data).",
        action: AGAIN,
      };
    case "idle":
      return { title: "The session was closed because nothing happened for a while.", action: AGAIN };
    case "challenge_expired":
      return { title: "The anti-abuse check took too long.", action: AGAIN };
    case "invalid_solution":
    case "invalid_payload":
    case "invalid_signature":
    case "foreign_challenge":
    case "replayed_solution":
    case "no_challenge":
      return { title: "The anti-abuse check was not accepted.", action: "Reload the page and try again." };
    case "pow_unsupported":
      return {
        title: `The anti-abuse check cannot run in this browser: ${detail}`,
        action: "Use an up-to-date browser (Chrome, Firefox, Safari or Edge).",
      };
    case "bad_origin":
      return {
        title: "This page is not allowed to use the server it was loaded from.",
        action: "Open the page from the server's own address.",
      };
    case "rate_limited":
      return { title: "Too many sessions were started from your address.", action: waitWords, retryAfter: wait };
    case "too_many_jobs":
      return {
        title: "You already have separations running.",
        action: `Wait until they finish. ${waitWords}`,
        retryAfter: wait,
      };
    case "queue_full":
      return { title: "The server is busy: its queue is full.", action: waitWords, retryAfter: wait };
    case "too_much_work":
      return { title: "You already have a lot of separation work running.", action: `Wait until it finishes. ${waitWords}`, retryAfter: wait };
    case "too_many_cuts":
      return { title: "The server is busy preparing results to listen to.", action: waitWords, retryAfter: wait };
    case "too_costly":
      return { title: "These options take more compute than this server gives one song.", action: `${said} Press Change the song or options.` };
    case "key_budget":
      return { title: "The anti-abuse check was for a smaller separation than this one.", action: AGAIN };
    case "unavailable":
      return {
        title: said || "The server is busy or restarting.",
        action: waitWords,
        retryAfter: wait,
      };
    case "upload_too_large":
      return { title: "This file is too big.", action: `${said} Choose a smaller file: an MP3 at a lower bitrate, or a shorter cut.` };
    case "too_long":
      return { title: "This song is too long.", action: `${said} Choose a shorter file.` };
    case "not_audio":
      return {
        title: "This file is not audio the server can read.",
        action: "Choose an MP3, WAV, FLAC, OGG, Opus or M4A file, or a video with sound.",
      };
    case "not_multipart":
    case "invalid_form":
    case "invalid_parameter":
      return { title: `An option was refused: ${detail}`, action: "Press Change the song or options to fix it." };
    case "upload_timeout":
      return {
        title: "The upload took too long.",
        action: "Try a smaller file (an MP3 instead of a WAV) or a faster connection.",
      };
    case "not_found":
      return {
        title: "Your files are no longer on the server (they are deleted after a while).",
        action: "Press Try again to separate the song again.",
      };
    case "cancelled":
      return { title: detail ? `The separation was cancelled: ${detail.replace(/\.$/, "")}.` : "The separation was cancelled.", action: "Press Try again to start it again." };
    case "lost_contact":
      return {
        title: "The server could not be reached for a long time.",
        action: "Your separation may still finish there: reload this page in a few minutes to see it.",
      };
    case "encode_failed":
    case "internal":
    case "failed":
      return {
        title: "The separation failed on the server.",
        action: "Try again; if it fails again, try another file.",
      };
    case "zip":
    case "decode":
      return {
        title: `The stems were downloaded but cannot be played in this page: ${detail}`,
        action: "Use Download all to get the files.",
      };
    case "socket_lifetime":
      return { title: "The connection to the server was renewed before the separation started.", action: AGAIN };
    case "server_restart":
      return {
        title: "The server restarted before your separation started.",
        action: AGAIN,
      };
    case "device_only":
      return {
        title: said || "This server separates only on your own device: nothing is uploaded to it.",
        action: "Reload the page to separate the song in this browser; if this browser cannot, open the page in an up-to-date Chrome, Edge or Firefox.",
      };
    case "aborted":
      return { title: "Stopped.", action: "" };
    default: {
      const status = problem && problem.status;
      if (status === 503) return { title: said || "The server is unavailable.", action: waitWords, retryAfter: wait };
      if (status === 429) return { title: said || "Too many requests.", action: waitWords, retryAfter: wait };
      return { title: said || "Something went wrong.", action: "Try again. If it keeps happening, reload the page." };
    }
  }
}
