/* Run page: refresh from /api/v2/dag-runs/<id> (+ its logs' new bytes) every second until
   the run ends. */
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

  // The log tail. Each step's log is read by byte offsets, so a poll moves only what is
  // new; the server bounds each answer and the page keeps at most the last `keep`
  // characters per step. Polling (and so the tail) stops when the run ends.
  const logs = document.getElementById("logs");
  const keep = Number(logs.dataset.keep);
  const follow = document.getElementById("log-follow");
  const tails = new Map();
  let followed = null;
  for (const details of logs.querySelectorAll("details[data-step]")) {
    const text = details.querySelector("pre").textContent;
    tails.set(details.dataset.step, {
      key: details.dataset.key, end: Number(details.dataset.end), status: details.dataset.status,
      text: text === "(no output yet)" ? "" : text,
      trimmed: !details.querySelector(".trimmed").hidden});
  }

  function logDetails(name) {
    let details = logs.querySelector(`details[data-step="${CSS.escape(name)}"]`);
    if (!details) {
      const full = `${head.dataset.logsApi}?${new URLSearchParams({step: name})}`;
      details = el("details", {class: "log", dataset: {step: name}}, el("summary", {}),
        el("p", {class: "sub trimmed", hidden: true}, "Showing the last part of this log; ",
          el("a", {href: full}, "the last MiB"), " is in the logs API."),
        el("pre", {}));
      logs.append(details);
    }
    return details;
  }

  // A new attempt or try writes a new file: its tail starts again from byte 0.
  async function readTail(name) {
    const url = (offset) => `${head.dataset.logsApi}?${new URLSearchParams({step: name, offset})}`;
    let tail = tails.get(name) || {key: "", end: 0, text: "", trimmed: false};
    let [entry] = (await Pages.api(url(tail.end))).steps;
    const key = `${entry.attempt}/${entry.tries}`;
    if (key !== tail.key) {
      if (tail.end) [entry] = (await Pages.api(url(0))).steps;
      tail = {key, end: 0, text: "", trimmed: false};
    }
    tail.trimmed ||= entry.start > tail.end;
    let text = tail.text + entry.log;
    if (text.length > keep) {
      // Cut at a line break so the first line shown is whole.
      const cut = text.indexOf("\n", text.length - keep);
      text = text.slice(cut === -1 ? text.length - keep : cut + 1);
      tail.trimmed = true;
    }
    Object.assign(tail, {text, end: entry.end, status: entry.status});
    tails.set(name, tail);
    return entry;
  }

  function renderTail(entry) {
    const tail = tails.get(entry.name);
    const details = logDetails(entry.name);
    details.querySelector("summary").replaceChildren(entry.name, " ",
      Pages.statusBadge(entry.status), " ", el("span", {class: "sub"}, `attempt ${entry.attempt}`,
        ...triesLinks(entry)));
    details.querySelector(".trimmed").hidden = !tail.trimmed;
    const pre = details.querySelector("pre");
    const text = tail.text || "(no output yet)";
    if (pre.textContent === text) return;
    // Keep following the tail if the reader was at the bottom.
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    // Open a step's log when its first output arrives; later, the reader decides.
    const wasEmpty = !pre.textContent || pre.textContent === "(no output yet)";
    if (tail.text && wasEmpty) details.open = true;
    pre.textContent = text;
    if (atBottom || (follow.checked && entry.name === followed)) pre.scrollTop = pre.scrollHeight;
  }

  // Follow mode: the log of the step that started last among the running ones is open and
  // scrolled to its newest line.
  function followRunning(steps) {
    const running = steps.filter((s) => s.status === "running")
      .sort((a, b) => (a.started_at || "").localeCompare(b.started_at || ""));
    const name = running.length ? running[running.length - 1].name : null;
    if (!follow.checked || !name) return;
    const details = logDetails(name);
    details.open = true;
    const pre = details.querySelector("pre");
    pre.scrollTop = pre.scrollHeight;
    if (name !== followed) details.scrollIntoView({block: "nearest"});
    followed = name;
  }

  async function refreshLogs(steps) {
    // Only running steps and steps whose status changed since the last read (their last
    // bytes) are read again; a finished run's logs are read once more, then never.
    const stale = steps.filter((s) => {
      const tail = tails.get(s.name);
      return s.status === "running" || !tail || tail.status !== s.status;
    });
    const entries = await Promise.all(stale.map((s) => readTail(s.name)));
    entries.forEach(renderTail);
    followRunning(steps);
  }
  follow.addEventListener("change", () => { if (follow.checked) poller.now(); });

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
    document.getElementById("log-follow-label").hidden = terminal;
  }

  async function refresh() {
    const run = await Pages.api(head.dataset.api);
    renderFacts(run);
    // run_extras.js (placement, step graph) paints from the same fetch.
    document.dispatchEvent(new CustomEvent("run:refresh", {detail: run}));
    renderSteps(run.steps);
    await refreshLogs(run.steps);
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
