// "Recent separations in this browser": a short list in localStorage, shown while the results live on the
// server (a job the server no longer knows is dropped from the list): each done one opens in the player or
// downloads as a zip.
import { getJob, url } from "./api.js";
import { $, show } from "./dom.js";
import { baseName } from "./names.js";
import { readStorage, validEntry, writeStorage } from "./storage.js";

const RECENT_KEY = "freestems.recent";
const RECENT_MAX = 8;
const STATE_WORDS = { queued: "waiting", running: "separating", failed: "failed", cancelled: "cancelled" };

/** `onOpen(entry)` opens a done entry ({id, token, name, created}) in the player. */
export function createRecent({ log, onOpen }) {
  function entries() {
    const list = readStorage(localStorage, RECENT_KEY, []);
    return Array.isArray(list) ? list.filter(validEntry).slice(0, RECENT_MAX) : [];
  }

  /** Puts {id, token, name, created} first in the list. */
  function remember(entry) {
    const list = [entry, ...entries().filter((item) => item.id !== entry.id)].slice(0, RECENT_MAX);
    writeStorage(localStorage, RECENT_KEY, list);
  }

  function forget(id) {
    writeStorage(localStorage, RECENT_KEY, entries().filter((item) => item.id !== id));
  }

  /** Asks the server about each entry and shows those it still has. */
  async function render() {
    const items = [];
    for (const entry of entries()) {
      let view;
      try {
        view = await getJob(entry);
      } catch (error) {
        if (error && error.code === "not_found") forget(entry.id);
        continue;
      }
      items.push(recentItem(entry, view, onOpen));
    }
    $("recent-list").replaceChildren(...items);
    show("recent", items.length > 0);
    log("recent", { shown: items.length });
  }

  return { remember, forget, render };
}

/** One list item: the song's name, then "Open in the player" and a link to its stems (done), or its state. */
function recentItem(entry, view, onOpen) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "recent-name";
  name.textContent = entry.name || "a song";
  item.append(name, " ");
  if (view.state === "done" && view.result) {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "button button-small button-secondary";
    open.textContent = "Open in the player";
    open.setAttribute("aria-label", `Open ${entry.name || "the song"} in the player`);
    open.addEventListener("click", () => onOpen(entry));
    const link = document.createElement("a");
    link.href = url(view.result.replace(/^\//, ""));
    link.download = `${baseName(entry.name || "song")} - stems.zip`;
    link.textContent = "Download the stems (zip)";
    const actions = document.createElement("span");
    actions.className = "recent-actions";
    actions.append(open, link);
    item.append(actions);
  } else {
    const status = document.createElement("span");
    status.className = "muted";
    status.textContent = `(${STATE_WORDS[view.state] || view.state})`;
    item.append(status);
  }
  item.dataset.job = entry.id;
  return item;
}
