/* Run page: refresh from /api/v2/dag-runs/<id> (+ /logs) every second until the run ends. */
"use strict";

(() => {
  const {el} = Pages;
  const head = document.getElementById("run");
  const runPage = head.dataset.runPage;
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  function cell(...children) { return el("td", {}, ...children); }
  function emptyRow(colspan, text) {
    return el("tr", {class: "empty"}, el("td", {colspan}, text));
  }

  function renderFacts(run) {
    const values = {
      status: run.status,
      waiting_reason: run.waiting_reason || "-",
      execution_mode: run.execution_mode,
      worker_selector: Pages.chips(run.worker_selector),
      worker_id: run.worker_id || "-",
      attempt: run.attempt,
      params: Pages.chips(run.params),
      queued_at: Pages.shortTime(run.queued_at),
      started_at: Pages.shortTime(run.started_at),
      finished_at: Pages.shortTime(run.finished_at),
      error: run.error || "-",
    };
    for (const [field, value] of Object.entries(values)) {
      const dd = document.querySelector(`#run-facts [data-field="${field}"]`);
      if (dd) dd.replaceChildren(...[value].flat().map((v) => (v instanceof Node ? v : String(v))));
    }
    const badge = document.getElementById("run-status");
    badge.textContent = run.status;
    badge.className = `status status-${run.status}`;
    head.dataset.status = run.status;
  }

  function renderSteps(steps) {
    const rows = steps.map((s) => el("tr", {dataset: {step: s.name, status: s.status}},
      cell(s.name), cell(Pages.statusBadge(s.status)),
      cell(s.exit_code === null ? "-" : s.exit_code), cell(s.attempt),
      cell(Pages.shortTime(s.started_at)), cell(Pages.shortTime(s.finished_at)),
      el("td", {class: "err"}, s.error)));
    document.getElementById("steps-body").replaceChildren(
      ...(rows.length ? rows : [emptyRow(7, "No steps")]));
  }

  // A retried step shows its last try; each earlier try's log is a link to the logs API.
  function triesLinks(step) {
    if (step.tries < 2) return [];
    const links = [];
    for (let n = 1; n < step.tries; n++) {
      const query = new URLSearchParams({step: step.name, try: n});
      links.push(" ", el("a", {href: `${head.dataset.logsApi}?${query}`}, String(n)));
    }
    return [`, try ${step.try}; earlier tries:`, ...links];
  }

  function renderLogs(steps) {
    const container = document.getElementById("logs");
    for (const step of steps) {
      let details = container.querySelector(`details[data-step="${CSS.escape(step.name)}"]`);
      if (!details) {
        details = el("details", {class: "log", dataset: {step: step.name}},
          el("summary", {}), el("pre", {}));
        container.append(details);
      }
      details.querySelector("summary").replaceChildren(step.name, " ",
        Pages.statusBadge(step.status), " ", el("span", {class: "sub"}, `attempt ${step.attempt}`,
          ...triesLinks(step)));
      const pre = details.querySelector("pre");
      const text = step.log || "(no output yet)";
      if (pre.textContent !== text) {
        // Keep following the tail if the reader was at the bottom.
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        // Open a step's log when its first output arrives; later, the reader decides.
        const wasEmpty = !pre.textContent || pre.textContent === "(no output yet)";
        if (step.log && wasEmpty) details.open = true;
        pre.textContent = text;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
    }
  }

  function renderAttempts(attempts) {
    const rows = attempts.map((a) => el("tr", {},
      cell(a.number), cell(a.mode), cell(a.worker_id || "-"), cell(Pages.statusBadge(a.status)),
      cell(Pages.shortTime(a.created_at)), cell(Pages.shortTime(a.started_at)),
      cell(Pages.shortTime(a.finished_at)), cell(a.end_reason)));
    document.getElementById("attempts-body").replaceChildren(
      ...(rows.length ? rows : [emptyRow(8, "No attempts yet")]));
  }

  function renderDecisions(decisions) {
    const rows = decisions.map((d) => el("tr", {},
      cell(Pages.shortTime(d.decided_at)), cell(d.attempt), cell(d.event), cell(d.mode),
      cell(d.why), cell(Pages.chips(d.selector)), cell(d.workers_considered),
      cell(d.workers_matched), cell(d.chosen_worker || "-"), cell(d.waiting_reason || "-"),
      cell(d.detail)));
    document.getElementById("decisions-body").replaceChildren(
      ...(rows.length ? rows : [emptyRow(11, "No decisions")]));
  }

  function renderChildren(children) {
    const parts = [];
    children.forEach((child, i) => {
      if (i) parts.push(", ");
      parts.push(Pages.runLink(runPage, child.dag_run_id, child.dag_name), " ",
        el("code", {}, child.dag_run_id), " ", Pages.statusBadge(child.status));
    });
    document.getElementById("children").replaceChildren(...(parts.length ? parts : ["-"]));
  }

  function renderActions(terminal) {
    document.querySelector('#run-actions [data-action="cancel"]').hidden = terminal;
    document.querySelector('#run-actions [data-action="retry"]').hidden = !terminal;
    document.getElementById("live-status").hidden = terminal;
  }

  async function refresh() {
    const [run, logs] = await Promise.all([
      Pages.api(head.dataset.api), Pages.api(head.dataset.logsApi)]);
    renderFacts(run);
    // run_extras.js (placement, step graph) paints from the same fetch.
    document.dispatchEvent(new CustomEvent("run:refresh", {detail: run}));
    renderSteps(run.steps);
    renderLogs(logs.steps);
    renderAttempts(run.attempts);
    renderDecisions(run.dispatch_decisions);
    if (run.children.length) {
      const page = await Pages.api(
        `${head.dataset.listApi}?parent=${encodeURIComponent(run.dag_run_id)}&limit=500`);
      renderChildren(page.dag_runs.slice().reverse());
    }
    const terminal = TERMINAL.includes(run.status);
    renderActions(terminal);
    return !terminal;  // stop polling once the run has ended
  }

  const poller = Pages.poll(refresh, 1000);
  if (!TERMINAL.includes(head.dataset.status)) poller.now();

  for (const form of document.querySelectorAll("#run-actions form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      Pages.showError("action-error", "");
      try {
        await Pages.api(form.action, {method: "POST"});
      } catch (error) {
        Pages.showError("action-error", error.message);
      } finally {
        button.disabled = false;
      }
      poller.now();
    });
  }
})();
