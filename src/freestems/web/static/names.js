// Names of stems and files as people read them, and the order stems are listed in (no state).
//
// A stem's name alone does not always say what it holds: "dry" is the sound without its reverb from a
// de-reverb model and without its noise from a denoise model, and the karaoke model's "vocals" is the lead
// vocal only. So the words and the order may take the job the stems were made for (`job`, a name of GET
// config's jobs: the one picked, else the model's first). A chain's stems are its parts, "<stem>-<part>"
// (models/chain.py: "drums-kick", "vocals-dry"): each is named as its part and listed where its stem was.
import { capitalize } from "./text.js";

const STEM_ORDER = ["vocals", "drums", "bass", "other", "guitar", "piano", "crowd", "dry"];
const PART_ORDER = ["kick", "snare", "toms", "hh", "ride", "crash", "cymbals", "dry"];
const STEM_WORDS = {
  vocals: "Vocals",
  drums: "Drums",
  bass: "Bass",
  other: "Other",
  guitar: "Guitar",
  piano: "Piano",
  kick: "Kick",
  snare: "Snare",
  toms: "Toms",
  hh: "Hi-hat",
  ride: "Ride",
  crash: "Crash",
  cymbals: "Cymbals",
  crowd: "Crowd noise",
  dry: "Dry",
  no_vocals: "Instrumental (no vocals)",
  no_crowd: "Without crowd noise",
  no_dry: "What was taken out",
};
/** What a job's stems are, where the name alone does not say it. */
const JOB_WORDS = {
  "lead-backing": { vocals: "Lead vocals", no_vocals: "Backing vocals and instruments" },
  "de-reverb": { dry: "Without reverb", no_dry: "Reverb" },
  denoise: { dry: "Without noise", no_dry: "Noise" },
};
/** The stem a job is for, listed first (the others keep their order). */
const JOB_FIRST = { karaoke: "no_vocals", crowd: "no_crowd" };
const PART = "-"; // models/chain.py's PART

/** "drums-kick" -> ["drums", "kick"]; "vocals" -> ["vocals", null]. */
function parts(name) {
  const at = name.indexOf(PART);
  return at > 0 ? [name.slice(0, at), name.slice(at + 1)] : [name, null];
}

function ownWords(name, job) {
  const words = (JOB_WORDS[job] || {})[name] || STEM_WORDS[name];
  if (words) return words;
  if (name.startsWith("no_")) return `Everything but ${ownWords(name.slice(3), job).toLowerCase()}`;
  return capitalize(name.replace(/_/g, " "));
}

/**
 * "vocals" -> "Vocals"; "no_vocals" -> "Instrumental (no vocals)"; "no_piano" -> "Everything but piano";
 * a drum part "drums-hh" -> "Hi-hat"; with the job "de-reverb", "dry" -> "Without reverb" and a chain's
 * "vocals-dry" -> "Vocals without reverb", "vocals-no_dry" -> "Reverb of the vocals".
 */
export function stemWords(name, job = null) {
  const [stem, part] = parts(name);
  if (!part) return ownWords(stem, job);
  const partWords = ownWords(part, job);
  if (stem === "drums") return partWords; // the drum parts say what they are: "Kick", "Snare"
  const whole = ownWords(stem, job);
  if (part === stem) return whole; // a vocals model run on the vocals: "vocals-vocals", "vocals-no_vocals"
  if (part === `no_${stem}`) return `Rest of the ${whole.toLowerCase()}`;
  return part.startsWith("no_")
    ? `${partWords} of the ${whole.toLowerCase()}`
    : `${whole} ${partWords.toLowerCase()}`;
}

function rankIn(order, name) {
  const base = name.startsWith("no_") ? name.slice(3) : name;
  const rank = order.indexOf(base);
  return (rank < 0 ? order.length : rank) * 2 + (name.startsWith("no_") ? 1 : 0);
}

/**
 * Where a stem goes in the list: the usual order, each "no_" stem right after its stem, unknown ones last;
 * a chain's parts where their stem was, in the parts' order; the stem the job is for first.
 */
export function stemRank(name, job = null) {
  if (JOB_FIRST[job] === name) return -1;
  const [stem, part] = parts(name);
  return rankIn(STEM_ORDER, stem) * 100 + (part ? 1 + rankIn(PART_ORDER, part) : 0);
}

/** A file name without its extension ("My Song.mp3" -> "My Song"); "song" when nothing is left. */
export function baseName(fileName) {
  const dot = fileName.lastIndexOf(".");
  return (dot > 0 ? fileName.slice(0, dot) : fileName).trim() || "song";
}
