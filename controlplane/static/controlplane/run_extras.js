/* Run page extras painted from run.js's fetch (the "run:refresh" event): the placement
   diagnosis of a queued run. */
"use strict";

(() => {
  const {el} = Pages;

  function renderPlacement(placement) {
    const section = document.getElementById("placement");
    if (!section) return;
    section.hidden = !placement;
    if (!placement) return;
    document.getElementById("placement-summary").textContent = placement.summary;
    const rows = placement.workers.map((w) => el("tr", {dataset: {worker: w.id}},
      el("td", {}, w.id), el("td", {}, w.matches ? "yes" : "no"),
      el("td", {}, ...(w.missing.length ? w.missing.map((m) => el("span", {class: "chip"}, m))
        : ["-"])),
      el("td", {}, w.reason || "can take it")));
    document.getElementById("placement-body").replaceChildren(...rows);
  }

  document.addEventListener("run:refresh", (event) => renderPlacement(event.detail.placement));
})();
