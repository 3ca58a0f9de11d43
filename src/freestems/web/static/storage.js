// JSON in the browser's storage, for the job this tab follows (sessionStorage) and the recent separations
// (localStorage). Storage may be off (private mode) or full: the page then works without it.

export function readStorage(storage, key, fallback) {
  try {
    const value = JSON.parse(storage.getItem(key));
    return value === null ? fallback : value;
  } catch (ignored) {
    return fallback; // storage off (private mode) or garbage
  }
}

/** Stores `value` under `key` (null removes it). */
export function writeStorage(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify(value));
  } catch (ignored) {
    // storage off or full: the page still works, it just cannot re-attach after a reload
  }
}

/** True for a stored job entry the page can use: {id (16 hex digits), token, ...}. */
export function validEntry(entry) {
  return Boolean(entry && typeof entry.id === "string" && /^[0-9a-f]{16}$/.test(entry.id) && typeof entry.token === "string");
}
