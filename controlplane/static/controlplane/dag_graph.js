/* Step graph as SVG, laid out by the vendored @dagrejs/dagre. Reads the JSON that
   controlplane.dag_pages.step_graph renders into #dag-graph-data; on the run page the
   "run:refresh" event colours each node by its step's status. */
"use strict";

(() => {
  const data = document.getElementById("dag-graph-data");
  const container = document.getElementById("dag-graph");
  if (!data || !container || !window.dagre) return;
  const graph = JSON.parse(data.textContent);
  if (!graph || !graph.nodes.length) return;
  const SVG = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  };

  function label(node) {
    const lines = [node.id];
    if (node.call) lines.push(`call ${node.call}${node.selector ? ` [${node.selector}]` : ""}`);
    if (node.fanout !== undefined) lines.push(`parallel × ${node.fanout}`);
    return lines;
  }

  const g = new dagre.graphlib.Graph();
  g.setGraph({rankdir: "LR", nodesep: 20, ranksep: 40, marginx: 8, marginy: 8});
  g.setDefaultEdgeLabel(() => ({}));
  for (const node of graph.nodes) {
    const lines = label(node);
    const width = Math.max(...lines.map((l) => l.length)) * 7.5 + 24;
    g.setNode(node.id, {lines, width, height: 18 * lines.length + 14});
  }
  for (const [from, to] of graph.edges) g.setEdge(from, to);
  dagre.layout(g);

  const {width, height} = g.graph();
  const svg = svgEl("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "dag-graph",
    role: "img", "aria-label": "step graph"});
  const defs = svgEl("defs");
  const marker = svgEl("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 6, markerHeight: 6, orient: "auto"});
  marker.append(svgEl("path", {d: "M0,0 L10,5 L0,10 z", class: "edge-head"}));
  defs.append(marker);
  svg.append(defs);
  for (const e of g.edges()) {
    const points = g.edge(e).points.map((p) => `${p.x},${p.y}`).join(" ");
    svg.append(svgEl("polyline", {points, class: "edge", "marker-end": "url(#arrow)"}));
  }
  for (const id of g.nodes()) {
    const n = g.node(id);
    const group = svgEl("g", {class: "node status-pending", "data-step": id,
      transform: `translate(${n.x - n.width / 2},${n.y - n.height / 2})`});
    group.append(svgEl("rect", {width: n.width, height: n.height, rx: 6}));
    n.lines.forEach((line, i) => {
      const text = svgEl("text", {x: 12, y: 20 + i * 18, class: i ? "sub" : ""});
      text.textContent = line;
      group.append(text);
    });
    svg.append(group);
  }
  container.replaceChildren(svg);

  document.addEventListener("run:refresh", (event) => {
    for (const step of event.detail.steps) {
      const node = svg.querySelector(`g.node[data-step="${CSS.escape(step.name)}"]`);
      if (node) node.setAttribute("class", `node status-${step.status}`);
    }
  });
})();
