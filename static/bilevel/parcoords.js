// Parallel coordinates above an iteration table: one polyline per filtered iteration across the
// parameters that vary, ending at val_bpb. The data is embedded in the table fragment that htmx
// swaps on every filter change, so the plot is redrawn from exactly what the table shows.
"use strict";

(function () {
  const GROUP_COLOURS = { R: "#7a8594", A: "#2f6fd6", B: "#e07b00", C: "#1f9d55", D: "#8a4fd0" };
  const node = window.bilevelSvg.node, fmt = window.bilevelSvg.fmt;

  function draw() {
    const source = document.getElementById("parcoords-data");
    const box = document.getElementById("parcoords");
    if (!source || !box) return;
    const data = JSON.parse(source.textContent);
    const note = document.getElementById("parcoords-note");
    box.replaceChildren();
    if (!data.lines.length) { note.textContent = "No iteration with a val_bpb matches the filter."; return; }
    const width = Math.max(box.clientWidth || 900, 320), height = 300, top = 28, bottom = 24, left = 40, right = 40;
    const svg = node("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height, role: "img",
      "aria-label": "parallel coordinates of the filtered iterations" });
    const n = data.axes.length;
    const x = function (i) { return n === 1 ? width / 2 : left + (width - left - right) * i / (n - 1); };
    const scales = data.axes.map(function (name, i) {
      const vals = data.lines.map(function (l) { return l.values[i]; }).filter(function (v) { return v !== null; });
      let low = Math.min.apply(null, vals), high = Math.max.apply(null, vals);
      if (high - low < 1e-12) { low -= 1; high += 1; }
      // Learning rates and the like span decades: a log axis keeps them readable.
      const log = low > 0 && high / low > 50;
      const f = log ? Math.log : function (v) { return v; };
      return { low: low, high: high, y: function (v) { return top + (height - top - bottom) * (f(high) - f(v)) / (f(high) - f(low)); } };
    });
    data.lines.forEach(function (line) {
      const pts = [];
      line.values.forEach(function (v, i) { if (v !== null) pts.push(x(i).toFixed(1) + "," + scales[i].y(v).toFixed(1)); });
      const poly = node("polyline", { points: pts.join(" "), fill: "none", stroke: GROUP_COLOURS[line.group] || "#444",
        "stroke-width": line.status === "keep" ? 2 : 1, "stroke-opacity": line.status === "keep" ? 0.9 : 0.35,
        "class": "pc-line", "data-run": line.run, "data-index": line.index });
      poly.appendChild(node("title", {}, "run #" + line.run + " (" + line.group + line.repeat + ") iteration #" + line.index + " · " + line.status));
      svg.appendChild(poly);
    });
    data.axes.forEach(function (name, i) {
      svg.appendChild(node("line", { x1: x(i), x2: x(i), y1: top, y2: height - bottom, stroke: "#18202b", "stroke-width": 1 }));
      svg.appendChild(node("text", { x: x(i), y: top - 10, "text-anchor": "middle", "font-size": 11, "class": "pc-axis" }, name));
      svg.appendChild(node("text", { x: x(i) + 3, y: top + 4, "font-size": 10, fill: "#67707c" }, fmt(scales[i].high)));
      svg.appendChild(node("text", { x: x(i) + 3, y: height - bottom + 12, "font-size": 10, fill: "#67707c" }, fmt(scales[i].low)));
    });
    box.appendChild(svg);
    note.textContent = data.shown + " iteration" + (data.shown === 1 ? "" : "s") + " with a val_bpb" +
      (data.total > data.shown ? " (the first " + data.shown + " of " + data.total + ")" : "") +
      "; colour = group, thick = kept; axes: the parameters that vary, then val_bpb (lower is better).";
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
