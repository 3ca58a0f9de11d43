// Which card the page shows (the form, the work, a problem or the result) and the page's phase: "setup",
// a step of the work ("check", "upload", "queue", "separate", "fetch"), "problem" or "result".

const CARDS = ["setup", "work", "problem", "result"];

export function createScreens() {
  let phase = "setup";
  const listeners = new Set();
  return {
    get phase() {
      return phase;
    },
    /** Sets the phase (the work's steps go through messages.setPhase, which also shows them). */
    enter(name) {
      phase = name;
    },
    /** Shows one card and hides the others. */
    show(card) {
      for (const id of CARDS) document.getElementById(id).hidden = id !== card;
      for (const listener of listeners) listener(card);
    },
    /** `listener(card)` after each change of card (a question left open on a card that went away closes). */
    onShow(listener) {
      listeners.add(listener);
    },
  };
}
