// "What do you want?": the job picker, before the model. Each job the server can do (GET /config's `jobs`,
// with its models best first) is a radio button with one line saying what it gives; choosing one picks its
// best model, narrows the model list to that job's models and sets the stems it needs (karaoke and acapella
// are the vocals and the rest). "Choose the model yourself" shows every model and the stems choice, as the
// page was before jobs. The choice (job and model) is kept in this browser for the next visit.
import { $ } from "./dom.js";
import { readStorage, writeStorage } from "./storage.js";
import { capitalize } from "./text.js";

const CHOICE_KEY = "freestems.choice"; // {job, model} in localStorage
/** The radio value of "Choose the model yourself": every model, the stems as the person sets them. */
export const OWN_CHOICE = "own";
/** Jobs that are one stem and the rest (two_stems), as the page's "One stem and the rest" makes them. */
const TWO_STEMS = { karaoke: "vocals", acapella: "vocals" };
/** Jobs whose model gives several stems the person may still narrow to one and the rest. */
const STEMS_CHOICE = new Set(["four-stems", "six-stems", OWN_CHOICE]);

/**
 * The jobs some served model does. A job no served model does is hidden rather than shown disabled: the
 * first choice on the page should hold only what can be done here (on a server of SCNet alone, seven of
 * the nine jobs would be dead rows, most of a phone's screen), and the API's GET config still lists them.
 */
export function offeredJobs(config) {
  const served = new Set(config.models.filter((model) => model.available).map((model) => model.name));
  return (config.jobs || [])
    .map((job) => ({ ...job, models: job.models.filter((name) => served.has(name)) }))
    .filter((job) => job.models.length);
}

/** The job chosen now: a job's name, or null ("Choose the model yourself", or no job picker). */
export function chosenJob() {
  const picked = document.querySelector('input[name="job"]:checked');
  return picked && picked.value !== OWN_CHOICE ? picked.value : null;
}

export function createJobPicker() {
  let jobs = [];
  let config = null;

  /** Builds the picker from `loaded` (the page's config) and applies the kept or the default choice. */
  function fill(loaded) {
    config = loaded;
    jobs = offeredJobs(config);
    $("jobs-field").hidden = jobs.length === 0;
    if (!jobs.length) return; // a server that says nothing of jobs: the models and stems as before
    const own = { name: OWN_CHOICE, title: "Choose the model yourself", description: "every model this server runs, with its stems, score and speed" };
    $("jobs").replaceChildren(...[...jobs, own].map(jobChoice));
    const kept = readStorage(localStorage, CHOICE_KEY, null);
    const known = (name) => name === OWN_CHOICE || jobs.some((job) => job.name === name);
    const start = kept && known(kept.job) ? kept.job : defaultJob();
    apply(start, kept && kept.job === start ? kept.model : null);
  }

  /** The first job of the server's default model, else the first job offered. */
  function defaultJob() {
    const model = config.models.find((entry) => entry.name === config.model);
    const first = model && (model.jobs || []).find((name) => jobs.some((job) => job.name === name));
    return first || jobs[0].name;
  }

  /** Chooses `name` (a job, or OWN_CHOICE) with `model` if that job offers it, else the job's best model. */
  function apply(name, model = null) {
    const job = jobs.find((entry) => entry.name === name);
    $("jobs").querySelector(`input[value="${name}"]`).checked = true;
    const models = job ? job.models : null;
    showModels(models);
    const current = document.querySelector('input[name="model"]:checked');
    const wanted = models ? (models.includes(model) ? model : models[0]) : model || (current && current.value);
    const radio = wanted && document.querySelector(`input[name="model"][value="${CSS.escape(wanted)}"]`);
    if (radio && !radio.disabled && radio !== current) {
      radio.checked = true;
      radio.dispatchEvent(new Event("change", { bubbles: true })); // its stems, its cost, on the device or not
    }
    setStems(job ? job.name : OWN_CHOICE);
    $("model-job-hint").textContent = !job
      ? ""
      : job.models.length > 1
        ? `${job.title}: the models this server has for it, the recommended one first (chosen for you).`
        : `${job.title}: this server has one model for it.`;
    $("model-job-hint").hidden = !job;
    keep();
  }

  /** Only `models` (null: all), in that order (the job's best first); all in the server's order. */
  function showModels(models) {
    const labels = new Map([...document.querySelectorAll('input[name="model"]')].map((input) => [input.value, input.closest("label")]));
    const order = [...(models || []), ...config.models.map((model) => model.name).filter((name) => !(models || []).includes(name))];
    for (const name of order) {
      const label = labels.get(name);
      if (!label) continue;
      label.hidden = Boolean(models) && !models.includes(name);
      $("models").append(label); // moved to its place
    }
  }

  /** The stems a job needs: one stem and the rest for karaoke and acapella; all of them otherwise. */
  function setStems(name) {
    $("stems-field").hidden = !STEMS_CHOICE.has(name);
    if (name === OWN_CHOICE) return; // as the person left it
    const two = TWO_STEMS[name];
    const radio = document.querySelector(`input[name="stems"][value="${two ? "two" : "all"}"]`);
    if (two && [...$("two-stems").options].some((option) => option.value === two)) $("two-stems").value = two;
    if (!radio.checked) {
      radio.checked = true;
      radio.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }

  function keep() {
    const picked = document.querySelector('input[name="job"]:checked');
    const model = document.querySelector('input[name="model"]:checked');
    if (picked) writeStorage(localStorage, CHOICE_KEY, { job: picked.value, model: model ? model.value : null });
  }

  function wire() {
    $("jobs").addEventListener("change", (event) => {
      if (event.target.name !== "job") return;
      apply(event.target.value); // then the form's own listeners hear the change: the cost, the device
    });
    $("models").addEventListener("change", () => jobs.length && keep());
  }

  return { fill, wire };
}

/**
 * A radio button for one job: its title and what it gives, in one line. A screen reader says the title as
 * the button's name and the line as its description.
 */
function jobChoice(job) {
  const label = document.createElement("label");
  label.className = `choice choice-job${job.name === OWN_CHOICE ? " choice-own" : ""}`;
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "job";
  input.value = job.name;
  input.setAttribute("aria-labelledby", `job-${job.name}-title`);
  input.setAttribute("aria-describedby", `job-${job.name}-words`);
  const text = document.createElement("span");
  const title = document.createElement("strong");
  title.id = `job-${job.name}-title`;
  title.textContent = job.title;
  const words = document.createElement("small");
  words.id = `job-${job.name}-words`;
  words.textContent = `${capitalize(job.description)}.`;
  text.append(title, words);
  label.append(input, text);
  return label;
}
