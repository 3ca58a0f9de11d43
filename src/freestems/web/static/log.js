// The page's event log: what happened, in order, with a timestamp. Tests and curious people read it through
// window.freestems.events; nothing secret goes in it. Bounded, so a long session does not grow it forever.

export function createLog(limit = 500) {
  const events = [];
  function log(kind, detail = {}) {
    events.push({ kind, ...detail, at: Math.round(performance.now()) });
    if (events.length > limit) events.shift();
  }
  return { events, log };
}
