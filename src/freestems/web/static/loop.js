// Loop a region of the song: "Loop from here" and "Loop to here" set its ends at the playing position (the
// keyboard's way), or a drag across a waveform selects it (a click still jumps). The mixer repeats the
// region sample-exactly (its sources loop it); "No loop" plays on to the end again.
import { $ } from "./dom.js";
import { formatClock } from "./text.js";

const DRAG_PX = 6; // a pointer that moved less than this was a click

/** `mixer()` is the player's mixer now (null without one); `render()` redraws the player. */
export function createLoop({ mixer, render, log }) {
  let start = null; // "Loop from here" waiting for its end

  function words() {
    const current = mixer();
    const loop = current && current.loop;
    $("loop-clear").disabled = !loop && start === null;
    if (loop) return `Looping ${formatClock(loop.start)} to ${formatClock(loop.end)}`;
    if (start !== null) return `Loop from ${formatClock(start)}: press Loop to here at its end`;
    return "";
  }

  function show() {
    $("loop-words").textContent = words();
  }

  async function setRegion(from, to) {
    const current = mixer();
    if (!current || current.live) return; // while it separates, the stems do not loop yet
    start = null;
    await current.setLoop(Math.min(from, to), Math.max(from, to));
    log("loop", { start: current.loop && current.loop.start, end: current.loop && current.loop.end });
    show();
    render();
  }

  function wire() {
    $("loop-a").addEventListener("click", () => {
      const current = mixer();
      if (!current) return;
      const at = current.position();
      if (current.loop && at < current.loop.end - 0.05) setRegion(at, current.loop.end);
      else {
        start = at;
        show();
      }
    });
    $("loop-b").addEventListener("click", () => {
      const current = mixer();
      if (!current) return;
      const at = current.position();
      const from = start ?? (current.loop ? current.loop.start : 0);
      setRegion(from, at);
    });
    $("loop-clear").addEventListener("click", async () => {
      const current = mixer();
      start = null;
      if (current) await current.setLoop(null);
      log("loop", { start: null, end: null });
      show();
      render();
    });
  }

  /**
   * Makes `canvas` (a waveform) jump on a click and select a loop on a drag; `duration()` is the song's
   * seconds, `jump(fraction)` the click.
   */
  function dragOn(canvas, duration, jump) {
    let down = null;
    const fraction = (event) => {
      const box = canvas.getBoundingClientRect();
      return Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
    };
    canvas.addEventListener("pointerdown", (event) => {
      down = { x: event.clientX, fraction: fraction(event) };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointerup", (event) => {
      if (!down) return;
      const from = down;
      down = null;
      if (Math.abs(event.clientX - from.x) < DRAG_PX) jump(fraction(event));
      else setRegion(from.fraction * duration(), fraction(event) * duration());
    });
    canvas.addEventListener("pointercancel", () => {
      down = null;
    });
  }

  /** A new player: no pending "Loop from here". */
  function reset() {
    start = null;
    show();
  }

  return { wire, show, reset, dragOn, setRegion };
}
