// A Web Worker that searches one share of an ALTCHA v2 challenge's counters (start, start + step, ...), so
// that the page stays responsive while the proof of work runs. Messages:
//   page -> worker  {parameters, start, step}
//   worker -> page  {type: "tries", count} (now and then), then {type: "found", solution} or
//                   {type: "failed", message}
import { search } from "./altcha.js";

self.onmessage = async (event) => {
  const { parameters, start, step } = event.data;
  try {
    const solution = await search(parameters, {
      start,
      step,
      onTries: (count) => self.postMessage({ type: "tries", count }),
    });
    if (solution) self.postMessage({ type: "found", solution });
    else self.postMessage({ type: "failed", message: "no solution exists for this challenge" });
  } catch (error) {
    self.postMessage({ type: "failed", message: String((error && error.message) || error) });
  }
};
