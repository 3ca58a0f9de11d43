// The song to separate: the file input and the drop zone (a file dropped anywhere on the page counts), what
// the page shows of the file (name, size, length), the checks against the server's limits before anything
// is uploaded, and whether Separate can be pressed. A file that is not audio (a text file named .mp3) is
// refused here, with the server's words, before the puzzle and the upload: when the browser cannot read it
// and its first bytes are not those of any audio or video file the server reads.
import { $, show } from "./dom.js";
import { describe, fitAdvice, formatBytes, formatClock, formatDuration, formatLimitMB, Problem } from "./text.js";

const NO_LIMITS = { max_upload_mb: Infinity, max_duration: Infinity };

/**
 * How audio and video files the server reads (PyAV) begin: [offset, bytes] (a string is its ASCII bytes).
 * Broad on purpose: a format the browser cannot play (WMA, AIFF, APE...) still goes to the server.
 */
const MEDIA_SIGNATURES = [
  [0, "ID3"], // MP3 (or AAC) with a tag
  [0, "RIFF"], // WAV, AVI
  [0, "RF64"],
  [0, "BW64"],
  [0, "fLaC"],
  [0, "OggS"], // Ogg Vorbis, Opus, FLAC in Ogg
  [0, "FORM"], // AIFF
  [0, "caff"],
  [0, "#!AMR"],
  [0, "MAC "], // Monkey's Audio
  [0, "wvpk"], // WavPack
  [0, "TTA1"],
  [0, ".snd"], // Sun/NeXT audio
  [0, "FLV"],
  [0, "DSD "],
  [0, "FRM8"],
  [4, "ftyp"], // MP4, M4A, MOV, 3GP
  [4, "moov"],
  [4, "mdat"],
  [4, "free"],
  [4, "wide"],
  [4, "skip"],
  [0, [0x1a, 0x45, 0xdf, 0xa3]], // Matroska, WebM
  [0, [0x30, 0x26, 0xb2, 0x75, 0x8e, 0x66, 0xcf, 0x11]], // ASF: WMA, WMV
  [0, [0x0b, 0x77]], // AC-3
  [0, [0x7f, 0xfe, 0x80, 0x01]], // DTS
  [0, [0x00, 0x00, 0x01, 0xba]], // MPEG program stream
];

/**
 * `canChoose()` says whether the form is in use (a file chosen during a separation is ignored); the page's
 * settings come later through `useConfig`.
 */
export function createSong({ log, canChoose, onChecked = () => {} }) {
  let config = null;
  let file = null;
  let duration = null; // seconds, as the browser read them from the chosen file (null: unknown)
  let token = 0; // the latest choice: a slow check of an earlier file must not overwrite it
  let ok = false;

  function refresh() {
    const ready = Boolean(file) && ok && Boolean(config) && canChoose();
    $("separate").disabled = !ready;
    let hint = "";
    if (!config) hint = "Loading the server's settings…";
    else if (!file) hint = "Choose a song first.";
    else if (!ok && !$("file-error").hidden) hint = "Choose another file.";
    else if (!ok) hint = "Reading the file…";
    $("setup-hint").textContent = hint;
  }

  function showError(message) {
    $("file-error").textContent = message;
    show("file-error", Boolean(message));
  }

  function refuse(reason, message, extra = {}) {
    showError(message);
    log("rejected", { reason, ...extra });
    refresh();
  }

  async function choose(chosen) {
    if (!chosen || !canChoose()) return;
    const mine = (token += 1);
    file = chosen;
    ok = false;
    showError("");
    showChosen(chosen);
    refresh();
    log("file", { name: chosen.name, size: chosen.size });
    const limits = config ? config.limits : NO_LIMITS;
    if (!checkSize(chosen, limits)) {
      // The size alone refuses it; its length (from the header, when the browser can read it) says what
      // would fit instead.
      const { duration } = await probe(chosen);
      if (mine === token && duration !== null) {
        $("file-duration").textContent = formatClock(duration);
        showError(tooBig(chosen, limits, duration));
        log("advice", { duration });
      }
      return;
    }
    const { duration: read, unreadable } = await probe(chosen);
    if (mine !== token) return; // another file was chosen meanwhile
    if (unreadable && !(await looksLikeMedia(chosen))) {
      if (mine !== token) return;
      $("file-duration").textContent = "not audio";
      const words = describe(new Problem("not_audio"));
      refuse("not_audio", `${words.title} ${words.action}`);
      return;
    }
    if (!checkDuration(read, limits)) return;
    ok = true;
    duration = read;
    log("accepted", { duration });
    refresh();
    onChecked();
  }

  function checkSize(chosen, limits) {
    if (chosen.size === 0) {
      $("file-duration").textContent = "none";
      refuse("empty", "This file is empty. Choose another file.");
      return false;
    }
    if (chosen.size > limits.max_upload_mb * 1e6) {
      $("file-duration").textContent = "not read";
      refuse("size", tooBig(chosen, limits, null));
      return false;
    }
    return true;
  }

  function checkDuration(duration, limits) {
    if (duration === null) {
      $("file-duration").textContent = "unknown (the server checks it)";
      return true;
    }
    $("file-duration").textContent = formatClock(duration);
    if (duration <= limits.max_duration + 0.5) return true;
    refuse(
      "duration",
      `This song is too long: it lasts ${formatClock(duration)} and the limit is ${formatDuration(limits.max_duration)}. ` +
        "Choose a shorter file.",
      { duration },
    );
    return false;
  }

  function clear() {
    token += 1;
    file = null;
    duration = null;
    ok = false;
    $("file").value = "";
    showError("");
    show("file-info", false);
    $("drop").dataset.state = "empty";
    $("file-label").textContent = "Choose a file";
    refresh();
    onChecked();
  }

  /** The server's settings arrived: its limits apply, also to a file chosen before. */
  function useConfig(loaded) {
    config = loaded;
    refresh();
    if (file) choose(file);
  }

  return {
    get file() {
      return file;
    },
    /** The accepted file's length in seconds, as the browser reads it (null: unknown, or none accepted). */
    get duration() {
      return ok ? duration : null;
    },
    /** A file is chosen and passed the checks. */
    get ready() {
      return Boolean(file) && ok;
    },
    choose,
    clear,
    refresh,
    showError,
    useConfig,
    wire: () => wireDrop(choose),
  };
}

function tooBig(file, limits, duration) {
  return (
    `This file is too big: it is ${formatBytes(file.size)} and the limit is ${formatLimitMB(limits.max_upload_mb)}. ` +
    fitAdvice(file, duration, limits.max_upload_mb, limits.max_duration)
  );
}

function showChosen(file) {
  $("file-name").textContent = file.name;
  $("file-size").textContent = formatBytes(file.size);
  $("file-duration").textContent = "reading…";
  show("file-info", true);
  $("drop").dataset.state = "chosen";
  $("file-label").textContent = "Choose another file";
}

function wireDrop(choose) {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => choose(input.files && input.files[0]));
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("is-over");
    });
  }
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("is-over"));
  // A file dropped anywhere on the page is taken (instead of the browser opening it).
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) choose(file);
  });
}

/**
 * What the browser reads of the file: {duration (seconds from its header, or null), unreadable (the browser
 * said it cannot read it at all; not after a timeout)}.
 */
function probe(file, timeout = 10000) {
  return new Promise((resolve) => {
    const audio = document.createElement("audio");
    const address = URL.createObjectURL(file);
    let finished = false;
    const finish = (value, unreadable = false) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      audio.removeAttribute("src");
      audio.load();
      URL.revokeObjectURL(address);
      resolve({ duration: Number.isFinite(value) && value > 0 ? value : null, unreadable });
    };
    const timer = setTimeout(() => finish(null), timeout);
    audio.preload = "metadata";
    audio.onloadedmetadata = () => finish(audio.duration);
    audio.onerror = () => finish(null, true);
    audio.src = address;
  });
}

/** True when the file begins as an audio or video file does (MEDIA_SIGNATURES, an MPEG audio frame, MPEG-TS). */
async function looksLikeMedia(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await file.slice(0, 192).arrayBuffer());
  } catch (ignored) {
    return true; // unreadable here: the server decides
  }
  const at = (offset, expected) => {
    const wanted = typeof expected === "string" ? [...expected].map((letter) => letter.charCodeAt(0)) : expected;
    return wanted.every((byte, i) => bytes[offset + i] === byte);
  };
  const frameSync = bytes[0] === 0xff && (bytes[1] & 0xe0) === 0xe0; // MP3, MP2, AAC (ADTS)
  const transportStream = bytes[0] === 0x47 && bytes[188] === 0x47;
  return frameSync || transportStream || MEDIA_SIGNATURES.some(([offset, expected]) => at(offset, expected));
}
