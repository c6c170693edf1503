/* Runs page: re-render this page of runs from /api/v2/dag-runs every two seconds. */
"use strict";

(() => {
  const {el} = Pages;
  const tbody = document.getElementById("run-rows");
  const filter = document.getElementById("status-filter");
  const runPage = tbody.dataset.runPage;
  const query = new URLSearchParams({limit: filter.dataset.limit, offset: filter.dataset.offset});
  if (filter.dataset.status) query.set("status", filter.dataset.status);

  function time(iso) {
    return iso ? el("time", {datetime: iso}, Pages.shortTime(iso)) : "-";
  }

  function row(run) {
    return el("tr", {dataset: {runId: run.dag_run_id, status: run.status}},
      el("td", {}, Pages.statusBadge(run.status),
        run.waiting_reason && el("div", {class: "sub"}, run.waiting_reason)),
      el("td", {}, Pages.runLink(runPage, run.dag_run_id, run.dag_name),
        run.parent_dag_run_id && el("div", {class: "sub"}, "↳ child of ",
          Pages.runLink(runPage, run.parent_dag_run_id, run.parent_dag_run_name))),
      el("td", {}, el("code", {}, run.dag_run_id)),
      el("td", {}, run.worker_id || "-", el("div", {class: "sub"}, run.execution_mode)),
      el("td", {}, run.attempt),
      el("td", {}, time(run.queued_at)),
      el("td", {}, time(run.started_at)),
      el("td", {}, time(run.finished_at)));
  }

  Pages.poll(async () => {
    const page = await Pages.api(`${tbody.dataset.api}?${query}`);
    const rows = page.dag_runs.map(row);
    if (!rows.length) rows.push(el("tr", {class: "empty"}, el("td", {colspan: 8}, "No runs yet")));
    tbody.replaceChildren(...rows);
  }, 2000);
})();
