// An in-page confirmation for an action that loses work (Cancel during a separation): the question and its
// two buttons appear under the button that asked, as an alert dialog a screen reader reads out, with focus
// on the safe answer; Escape or "Keep …" closes it and gives focus back. (window.confirm would freeze the
// page, WebSocket messages included, and cannot be styled or tested.)
import { $ } from "./dom.js";

/**
 * `trigger` (a button id) opens the box `box` (an element id) whose buttons `yes` and `no` answer;
 * `onYes()` runs after yes. Returns {close()} for when the work ends by itself.
 */
export function askFirst({ trigger, box, yes, no, onYes }) {
  const button = $(trigger);
  const dialog = $(box);
  button.setAttribute("aria-haspopup", "dialog");
  button.setAttribute("aria-expanded", "false");

  function open() {
    dialog.hidden = false;
    button.setAttribute("aria-expanded", "true");
    $(no).focus();
  }

  function close(refocus = false) {
    if (dialog.hidden) return;
    dialog.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (refocus && !button.disabled) button.focus();
  }

  button.addEventListener("click", () => (dialog.hidden ? open() : close(true)));
  $(no).addEventListener("click", () => close(true));
  $(yes).addEventListener("click", () => {
    close();
    onYes();
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close(true);
    }
  });
  return { close: () => close() };
}
