/* Workers page: re-render the cards and rows from /api/v2/workers every second. */
"use strict";

(() => {
  const {el} = Pages;
  const tbody = document.getElementById("worker-rows");
  const search = document.getElementById("worker-search");
  const runPage = tbody.dataset.runPage;
  let workers = null;
  // Expanded task lists survive re-renders.
  const expanded = new Set(
    [...tbody.querySelectorAll("details[open]")].map((d) => d.closest("tr").dataset.workerId));

  // Same rule as the server: substring of the id or of any key=value, case-insensitive.
  function matches(worker, query) {
    const needle = query.trim().toLowerCase();
    if (!needle) return true;
    const texts = [worker.id, ...Object.entries(worker.labels).map(([k, v]) => `${k}=${v}`)];
    return texts.some((text) => text.toLowerCase().includes(needle));
  }

  function renderCards(rows) {
    const online = rows.filter((w) => w.health_status !== "OFFLINE");
    const busy = online.reduce((sum, w) => sum + w.busy, 0);
    const total = online.reduce((sum, w) => sum + w.max_active_runs, 0);
    const util = total ? Math.round((busy * 100) / total) : 0;
    document.getElementById("m-workers").textContent = rows.length;
    document.getElementById("m-healthy").textContent =
      `${rows.filter((w) => w.health_status === "HEALTHY").length} healthy`;
    document.getElementById("m-slots").textContent = `${busy}/${total}`;
    document.getElementById("m-tasks").textContent =
      rows.reduce((sum, w) => sum + w.running_tasks.length, 0);
    const utilNode = document.getElementById("m-util");
    utilNode.textContent = `${util}%`;
    utilNode.className = "card-value " +
      (util >= 90 ? "util-high" : util >= 50 ? "util-mid" : util > 0 ? "util-low" : "");
  }

  function taskItem(task) {
    const lineage = [];
    const isChild = Boolean(task.parent_dag_run_id);
    if (![task.dag_run_id, task.parent_dag_run_id].includes(task.root_dag_run_id)) {
      lineage.push(Pages.runLink(runPage, task.root_dag_run_id, task.root_dag_run_name), " › ");
    }
    if (isChild) {
      lineage.push(Pages.runLink(runPage, task.parent_dag_run_id, task.parent_dag_run_name), " › ");
    }
    const link = Pages.runLink(runPage, task.dag_run_id, task.dag_name);
    link.className = "task-run";
    lineage.push(link);
    return el("li", {class: "task"},
      el("div", {class: "lineage"}, lineage),
      el("div", {class: "sub"}, el("code", {}, task.dag_run_id),
        ` · started ${Pages.relativeAge(task.started_at)}`));
  }

  function tasksCell(worker) {
    if (!worker.running_tasks.length) return el("td", {class: "tasks"}, el("span", {class: "muted"}, "idle"));
    const details = el("details", {open: expanded.has(worker.id)},
      el("summary", {}, `${worker.running_tasks.length} running`),
      el("ul", {class: "task-list"}, worker.running_tasks.map(taskItem)));
    details.addEventListener("toggle", () => {
      if (details.open) expanded.add(worker.id); else expanded.delete(worker.id);
    });
    return el("td", {class: "tasks"}, details);
  }

  function row(worker) {
    const health = worker.health_status.toLowerCase();
    const labels = Object.entries(worker.labels).sort(([a], [b]) => a.localeCompare(b));
    const pct = worker.max_active_runs
      ? Math.min(100, Math.round((worker.busy * 100) / worker.max_active_runs)) : 0;
    return el("tr", {class: `worker health-${health}`,
                     dataset: {workerId: worker.id, health: worker.health_status}},
      el("td", {class: "health"},
        el("span", {class: `dot dot-${health}`, title: worker.health_status}),
        el("span", {class: "health-label"}, health[0].toUpperCase() + health.slice(1))),
      el("td", {class: "ident"},
        el("div", {class: "wid"}, worker.id,
          worker.draining && [" ", el("span", {class: "badge badge-draining"}, "draining")]),
        el("div", {class: "sub"}, worker.host || "unknown host",
          worker.pid ? ` · pid ${worker.pid}` : "")),
      el("td", {class: "labels"}, labels.length
        ? labels.map(([k, v]) => el("span", {class: "chip"}, `${k}=${v}`))
        : el("span", {class: "muted"}, "no labels")),
      el("td", {class: "usage"},
        el("div", {class: "bar"}, el("div", {class: "fill", style: `width: ${pct}%`})),
        el("span", {class: "usage-text"}, `${worker.busy}/${worker.max_active_runs}`)),
      tasksCell(worker),
      el("td", {class: "seen", title: worker.last_heartbeat || ""},
        Pages.relativeAge(worker.last_heartbeat)));
  }

  function render() {
    if (workers === null) return;
    renderCards(workers);
    const shown = workers.filter((w) => matches(w, search.value));
    const rows = shown.map(row);
    if (!rows.length) {
      const text = workers.length ? "No workers match the search" : "No workers connected";
      rows.push(el("tr", {class: "empty"}, el("td", {colspan: 6}, text)));
    }
    tbody.replaceChildren(...rows);
  }

  const poller = Pages.poll(async () => {
    workers = (await Pages.api(tbody.dataset.api)).workers;
    render();
  }, 1000);

  search.form.addEventListener("submit", (event) => event.preventDefault());
  search.addEventListener("input", () => (workers === null ? poller.now() : render()));
  poller.now();
})();
