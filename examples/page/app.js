// The demo page: plain JavaScript, no build step. It talks to the API as the signed-in
// user through the session cookie, which fetch and EventSource both send (same origin).
"use strict";

const API = "/api/v1";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const $ = (id) => document.getElementById(id);

let planId = null;
let events = null; // the open EventSource, if any

class ApiError extends Error {}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const fields = answer && answer.details && answer.details.fieldErrors;
    const detail = fields ? " " + Object.entries(fields).map(([k, v]) => `${k}: ${v.join(" ")}`).join("; ") : "";
    throw new ApiError(`${answer ? answer.error : response.statusText}${detail}`);
  }
  return answer;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// -- signing in --------------------------------------------------------------------------

function showUser(userId) {
  $("sign-in-form").hidden = Boolean(userId);
  $("signed-in").hidden = !userId;
  $("user-name").textContent = userId || "";
  document.body.dataset.user = userId ? "yes" : "";
}

async function signIn(event) {
  event.preventDefault();
  showMessage("");
  try {
    const answer = await api("POST", "/demo/session", { userId: $("user-id").value.trim() });
    showUser(answer.userId);
  } catch (error) {
    showMessage(error.message);
  }
}

async function signOut() {
  if (events) events.close();
  await api("DELETE", "/demo/session");
  planId = null;
  document.body.dataset.plan = "";
  showUser(null);
}

// -- plans and regenerations -------------------------------------------------------------

function formValues(form) {
  const values = {};
  for (const [name, value] of new FormData(form)) {
    if (value === "") continue; // empty: keep (overrides) or the server's default (new plan)
    values[name] = name === "weeklyHours" ? Number(value) : value;
  }
  return values;
}

async function createPlan(event) {
  event.preventDefault();
  showMessage("");
  try {
    const accepted = await api("POST", `${API}/plans`, formValues($("plan-form")));
    planId = accepted.planId;
    document.body.dataset.plan = "yes";
    watch(accepted, "First generation of the new plan");
  } catch (error) {
    showMessage(error.message);
  }
}

async function regenerate(event) {
  event.preventDefault();
  showMessage("");
  const overrides = formValues($("regenerate-form"));
  try {
    const accepted = await api("POST", `${API}/plans/${planId}/regenerate`, { overrides });
    const list = Object.entries(overrides).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
    watch(accepted, `Regeneration with overrides: ${list}`);
  } catch (error) {
    showMessage(error.message);
  }
}

// Follow one regeneration through its event stream until it ends.
function watch(accepted, label) {
  if (events) events.close();
  $("timeline").replaceChildren();
  delete $("modules").dataset.preview;
  $("progress-label").textContent = `${label} (${accepted.generationId})`;
  setStatus(accepted.status);
  setBusy(true);
  // The card sits below the forms: bring it into view, else the click seems to do nothing.
  $("progress").scrollIntoView({ block: "start" });
  const url = `${API}/plans/${accepted.planId}/regenerations/${accepted.generationId}/events`;
  events = new EventSource(url);
  events.onmessage = (message) => {
    const state = JSON.parse(message.data);
    addToTimeline(state);
    setStatus(state.status);
    if (TERMINAL.has(state.status)) {
      // A browser reconnects after the server closes a stream: stop it here.
      events.close();
      events = null;
      setBusy(false);
      if (state.status === "failed") showMessage(`Failed (${state.failureClass}): ${state.error}`);
      loadPlan(accepted.planId);
    }
  };
  // Each module as soon as the model has written it (a preview: the plan is replaced,
  // paced into weeks, only when the regeneration succeeds).
  events.addEventListener("module", (message) => showModule(JSON.parse(message.data)));
  events.onerror = () => {
    // EventSource reconnects by itself (sending Last-Event-ID); only a closed one is final.
    if (events && events.readyState === EventSource.CLOSED) {
      showMessage("The event stream was refused; see the status route.");
      setBusy(false);
    }
  };
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
}

function setBusy(busy) {
  $("regenerate-plan").disabled = busy;
  $("create-plan").disabled = busy;
}

function addToTimeline(state) {
  const item = element("li", "", `event ${state.status}`);
  item.dataset.status = state.status;
  item.append(element("span", new Date().toLocaleTimeString(), "time"));
  item.append(element("span", state.status, "badge"));
  const attempt = state.attempts ? `attempt ${state.attempts}` : "queued";
  item.append(element("span", attempt, "attempt"));
  if (state.error) item.append(element("span", `${state.failureClass}: ${state.error}`, "error"));
  if (state.result) {
    item.append(element("span", `${state.result.modules} modules, ${state.result.tasks} tasks`, "result"));
  }
  $("timeline").append(item);
}

// -- the plan ----------------------------------------------------------------------------

function showModule(module) {
  const list = $("modules");
  if (!list.dataset.preview) {
    list.replaceChildren();
    list.dataset.preview = "yes";
    $("plan-summary").textContent = "The model is writing the plan: each module shows once written.";
  }
  const section = element("section", undefined, "module preview");
  section.dataset.index = module.index;
  section.append(element("h3", `${module.index + 1}. ${module.title}`));
  section.append(element("p", `${module.minutes} min, not yet paced`, "hint"));
  const tasks = element("ul");
  for (const task of module.tasks) tasks.append(element("li", `${task.title} (${task.minutes} min)`));
  section.append(tasks);
  list.append(section);
}

async function loadPlan(id) {
  try {
    renderPlan(await api("GET", `${API}/plans/${id}`));
  } catch (error) {
    showMessage(error.message);
  }
}

function renderPlan(plan) {
  const tasks = plan.modules.reduce((sum, module) => sum + module.tasks.length, 0);
  const dates = plan.startDate ? `${plan.startDate} to ${plan.deadlineDate}` : `until ${plan.deadlineDate || "open-ended"}`;
  $("plan-summary").textContent =
    `${plan.topic}: ${plan.skillLevel}, ${plan.weeklyHours} h/week, ${dates}. ` +
    `${plan.modules.length} modules, ${tasks} tasks.`;
  const modules = plan.modules.map((module, index) => {
    const section = element("section", undefined, "module");
    section.append(element("h3", `${index + 1}. ${module.title}`));
    section.append(element("p", `${module.estimatedMinutes} min`, "hint"));
    const table = element("table");
    const head = element("tr");
    for (const title of ["Week", "Due", "Task", "Minutes"]) head.append(element("th", title));
    table.append(head);
    for (const task of module.tasks) {
      const row = element("tr", undefined, "task");
      row.append(element("td", task.week ?? "", "week"));
      row.append(element("td", task.dueDate ?? "", "due"));
      row.append(element("td", task.title));
      row.append(element("td", task.estimatedMinutes, "minutes"));
      table.append(row);
    }
    section.append(table);
    return section;
  });
  delete $("modules").dataset.preview;
  $("modules").replaceChildren(...modules);
}

// -- start -------------------------------------------------------------------------------

function isoDate(date) {
  return date.toISOString().slice(0, 10);
}

function defaultDates() {
  const start = new Date();
  start.setUTCDate(start.getUTCDate() + ((8 - start.getUTCDay()) % 7 || 7)); // next Monday
  const deadline = new Date(start);
  deadline.setUTCDate(deadline.getUTCDate() + 42); // six weeks
  $("start-date").value = isoDate(start);
  $("deadline-date").value = isoDate(deadline);
}

document.addEventListener("DOMContentLoaded", async () => {
  defaultDates();
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("plan-form").addEventListener("submit", createPlan);
  $("regenerate-form").addEventListener("submit", regenerate);
  try {
    showUser((await api("GET", "/demo/session")).userId);
  } catch (error) {
    showMessage(error.message);
  }
  document.body.dataset.ready = "yes";
});
