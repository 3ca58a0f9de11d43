// Names of stems and files as people read them, and the order stems are listed in (no state).
import { capitalize } from "./text.js";

const STEM_ORDER = ["vocals", "drums", "bass", "other", "guitar", "piano"];
const STEM_WORDS = { vocals: "Vocals", drums: "Drums", bass: "Bass", other: "Other", guitar: "Guitar", piano: "Piano" };

/** "vocals" -> "Vocals"; "no_vocals" -> "Instrumental (no vocals)"; "no_drums" -> "Everything but drums". */
export function stemWords(name) {
  if (name.startsWith("no_")) {
    const rest = name.slice(3);
    return rest === "vocals" ? "Instrumental (no vocals)" : `Everything but ${rest}`;
  }
  return STEM_WORDS[name] || capitalize(name.replace(/_/g, " "));
}

/** Where a stem goes in the list: the usual order, each "no_" stem right after its stem, unknown ones last. */
export function stemRank(name) {
  const base = name.startsWith("no_") ? name.slice(3) : name;
  const rank = STEM_ORDER.indexOf(base);
  return (rank < 0 ? STEM_ORDER.length : rank) * 2 + (name.startsWith("no_") ? 1 : 0);
}

/** A file name without its extension ("My Song.mp3" -> "My Song"); "song" when nothing is left. */
export function baseName(fileName) {
  const dot = fileName.lastIndexOf(".");
  return (dot > 0 ? fileName.slice(0, dot) : fileName).trim() || "song";
}
