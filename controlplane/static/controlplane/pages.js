/* Shared helpers for the operator pages: DOM building, API calls, polling. No framework. */
"use strict";

const Pages = (() => {
  // el("td", {class: "x"}, "text", otherNode): children are text (escaped) or nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // The server's clock, from the Date header, so "5s ago" does not depend on the browser's.
  let clockSkewMs = 0;

  async function api(url, options = {}) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: {Accept: "application/json", "X-CSRFToken": csrfToken()},
      ...options,
    });
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) clockSkewMs = date - Date.now();
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
      const error = new Error(response.status === 401 || response.status === 403
        ? "Session expired: reload the page to log in again." : detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function serverNow() { return Date.now() + clockSkewMs; }

  function relativeAge(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.floor((serverNow() - Date.parse(iso)) / 1000));
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (seconds >= size) return `${Math.floor(seconds / size)}${unit} ago`;
    }
    return `${seconds}s ago`;
  }

  // "2026-01-01T12:00:00.123Z" -> "2026-01-01 12:00:00" (UTC, as the server renders it).
  function shortTime(iso) {
    return iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, "") : "-";
  }

  function chips(map) {
    const entries = Object.entries(map || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!entries.length) return ["-"];
    return entries.map(([k, v]) => el("span", {class: "chip"}, `${k}=${v}`));
  }

  function statusBadge(status) {
    return el("span", {class: `status status-${status}`}, status);
  }

  function runLink(template, runId, text) {
    return el("a", {href: template.replace("RUN_ID", encodeURIComponent(runId))}, text);
  }

  function showError(id, message) {
    const node = document.getElementById(id);
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
  }

  function setLive(ok) {
    const live = document.getElementById("live-status");
    if (!live) return;
    live.classList.toggle("stale", !ok);
    live.textContent = ok ? "live" : "reconnecting";
  }

  // Run `tick` every `intervalMs` while it does not return false; never two ticks at once.
  // `now()` runs a tick at once (and resumes polling if it had stopped).
  function poll(tick, intervalMs) {
    let timer = null;
    let running = false;
    let rerun = false;
    async function loop() {
      if (running) { rerun = true; return; }
      running = true;
      clearTimeout(timer);
      let again = true;
      try {
        again = (await tick()) !== false;
        setLive(true);
        showError("load-error", "");
      } catch (error) {
        setLive(false);
        showError("load-error", `Refresh failed: ${error.message}`);
      }
      running = false;
      if (rerun) { rerun = false; loop(); return; }
      if (again) timer = setTimeout(loop, intervalMs);
    }
    timer = setTimeout(loop, intervalMs);
    return {now: loop};
  }

  return {el, api, relativeAge, shortTime, chips, statusBadge, runLink, showError, poll};
})();
