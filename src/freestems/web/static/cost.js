// What a separation costs on the server, shown before anything is sent, and the budget of compute the page
// asks its anti-abuse check for. The server prices every request in model-seconds (one second of audio
// through SCNet at the default options): seconds x passes x the overlap's chunk factor x the model's
// relative cost, with the prices GET config publishes (`pricing`; the formula's home is the service's
// pricing.py). One request may cost at most `max_request_cost`, and the check's work grows with the budget.
import { $ } from "./dom.js";
import { formatClock } from "./text.js";

const MARGIN = 1.1; // the browser's reading of a length may differ from the server's decoded count
const MARGIN_SECONDS = 2;

/** Model-seconds of `duration` seconds with the page's `options`, or null when the server sets no prices. */
export function priceOf(pricing, options, duration) {
  if (!pricing || !pricing.models || !Number.isFinite(duration)) return null;
  const factor = pricing.models[options.model];
  if (!Number.isFinite(factor)) return null;
  const overlap = Number.isFinite(options.overlap) ? options.overlap : pricing.default_overlap;
  const chunks = (1 - pricing.default_overlap) / (1 - overlap);
  return duration * Math.max(1, options.shifts || 1) * chunks * factor;
}

/** The budget to earn a key for (null: the server's default): the price with a margin, at most the ceiling. */
export function budgetFor(pricing, options, duration) {
  if (!pricing) return null;
  const most = pricing.max_request_cost;
  if (!Number.isFinite(duration)) return Number.isFinite(most) ? Math.floor(most) : null;
  const price = priceOf(pricing, options, duration + MARGIN_SECONDS);
  if (price === null) return null;
  const budget = Math.ceil(price * MARGIN);
  return Number.isFinite(most) ? Math.min(budget, Math.floor(most)) : budget;
}

/** {fits, words}: what the options cost for a song of `duration` seconds (null: no song yet), and what fits. */
export function describeCost(pricing, options, duration) {
  const most = pricing && pricing.max_request_cost;
  const perMinute = priceOf(pricing, options, 60);
  if (perMinute === null || !Number.isFinite(most)) return { fits: true, words: "" };
  const longest = (most / perMinute) * 60;
  if (!Number.isFinite(duration)) {
    return {
      fits: true,
      words: `Compute: ${round(perMinute)} model-seconds per minute of audio with these options; songs up to ${formatClock(longest)} fit.`,
    };
  }
  const price = priceOf(pricing, options, duration);
  if (price <= most + 1e-6) {
    return { fits: true, words: `Compute: ${round(price)} of the ${round(most)} model-seconds one separation may use.` };
  }
  const perPass = price / Math.max(1, options.shifts || 1);
  const passes = Math.floor(most / perPass + 1e-9);
  const fewer = options.shifts > 1 && passes >= 1 ? `choose at most ${passes} pass${passes === 1 ? "" : "es"}, ` : "";
  const cheaper = Object.entries(pricing.models)
    .filter(([name, factor]) => name !== options.model && priceOf(pricing, { ...options, model: name }, duration) <= most + 1e-6 && Number.isFinite(factor))
    .map(([name]) => name);
  const model = cheaper.length ? `a cheaper model, ` : "";
  return {
    fits: false,
    words:
      `Too much compute: these options cost ${round(price)} model-seconds for this song and one separation may use ${round(most)}. ` +
      `To fit, ${fewer}${model}or a song of at most ${formatClock(longest)}.`,
  };
}

/** The hint under the options: the cost of the choices (and a warning when they do not fit). */
export function showCost(pricing, options, duration) {
  const hint = $("cost-hint");
  if (!hint) return true;
  const { fits, words } = describeCost(pricing, options, duration);
  hint.textContent = words;
  hint.hidden = !words;
  hint.classList.toggle("notice", !fits);
  hint.classList.toggle("notice-error", !fits);
  return fits;
}

function round(value) {
  return value >= 10 ? Math.round(value).toLocaleString("en") : value.toFixed(1);
}
