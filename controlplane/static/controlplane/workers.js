/* Workers page: the server renders the cards, the page of rows and the pager (filtered by
   health and search, paginated, so 1,000 workers cost one page of rows); this script swaps
   in a fresh render of that part every second, searches as you type, and posts the
   Drain/Undrain buttons without leaving the page. */
"use strict";

(() => {
  const live = document.getElementById("workers-live");
  const search = document.getElementById("worker-search");
  // Expanded task lists survive re-renders.
  const expanded = new Set();
  let typed = null;

  function rememberExpanded() {
    for (const details of live.querySelectorAll("tr[data-worker-id] details")) {
      const id = details.closest("tr").dataset.workerId;
      if (details.open) expanded.add(id); else expanded.delete(id);
    }
  }

  function query() {
    const params = new URLSearchParams(window.location.search);
    params.set("fragment", "1");
    return params;
  }

  const poller = Pages.poll(async () => {
    const response = await fetch(`${window.location.pathname}?${query()}`,
      {credentials: "same-origin", headers: {Accept: "text/html"}});
    if (response.redirected || response.status === 403) {
      throw new Error("Session expired: reload the page to log in again.");
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const html = await response.text();
    rememberExpanded();
    live.innerHTML = html;  // rendered and escaped by the server's templates
    for (const details of live.querySelectorAll("tr[data-worker-id] details")) {
      details.open = expanded.has(details.closest("tr").dataset.workerId);
    }
  }, 1000);

  // Searching starts again from the first page; the address keeps the filters for reloads.
  search.addEventListener("input", () => {
    clearTimeout(typed);
    typed = setTimeout(() => {
      const params = new URLSearchParams(window.location.search);
      params.delete("page");
      if (search.value.trim()) params.set("q", search.value); else params.delete("q");
      const text = params.toString();
      window.history.replaceState(null, "", text ? `?${text}` : window.location.pathname);
      poller.now();
    }, 200);
  });
  search.form.addEventListener("submit", (event) => { event.preventDefault(); poller.now(); });

  live.addEventListener("submit", async (event) => {
    const form = event.target.closest("form");
    if (!form || !form.closest("td.drain")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    Pages.showError("load-error", "");
    try {
      const response = await fetch(form.action, {
        method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: {"X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value}});
      if (!response.ok) throw new Error(`${button.textContent.trim()} failed: HTTP ${response.status}`);
    } catch (error) {
      Pages.showError("load-error", error.message);
      button.disabled = false;
      return;
    }
    poller.now();
  });
})();
