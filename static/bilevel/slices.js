// Slice plots above an iteration table (as optuna-dashboard's): one panel per parameter that varies
// among the filtered iterations, its value (x) against val_bpb (y), one point per iteration. The
// data (runs/slice_plots.py) is embedded in the table fragment that htmx swaps on every filter
// change, so the panels are redrawn from exactly what the table shows. One y axis for every panel.
"use strict";

(function () {
  const svg = window.bilevelSvg, node = svg.node;
  const H = 240, TOP = 30, BOTTOM = 46, LEFT = 50, RIGHT = 14, PLOT_H = H - TOP - BOTTOM, GAP = 10;
  let W = 300, PLOT_W = W - LEFT - RIGHT;  // set per draw from the width there is

  function quantile(sorted, q) {
    const at = (sorted.length - 1) * q, i = Math.floor(at);
    return i + 1 < sorted.length ? sorted[i] + (sorted[i + 1] - sorted[i]) * (at - i) : sorted[i];
  }

  // A stable jitter in [-0.5, 0.5) per iteration, so a redraw puts each point where it was.
  function jitter(point, salt) {
    let h = (point.run * 73856093) ^ (point.index * 19349663) ^ (salt * 83492791);
    h = Math.imul(h ^ (h >>> 13), 1274126177);
    return (((h ^ (h >>> 16)) >>> 0) % 1000) / 1000 - 0.5;
  }

  // One val_bpb axis for every panel. Diverged iterations (far above the rest: beyond the third
  // quartile + 3 IQR) would squeeze the interesting range, so they sit on the top edge instead.
  function yScale(data) {
    const vals = data.points.map(function (p) { return p.val_bpb; }).sort(function (a, b) { return a - b; });
    const q1 = quantile(vals, 0.25), q3 = quantile(vals, 0.75);
    const cap = vals.length >= 8 && q3 > q1 ? q3 + 3 * (q3 - q1) : Infinity;
    const kept = vals.filter(function (v) { return v <= cap; });
    if (data.baseline !== null) kept.push(data.baseline);
    let low = Math.min.apply(null, kept), high = Math.max.apply(null, kept);
    const pad = high - low > 1e-9 ? (high - low) * 0.1 : 0.01;
    low -= pad; high += pad;
    return { ticks: svg.ticks(low, high, 4), cap: cap, high: high, above: vals.length - vals.filter(function (v) { return v <= cap; }).length,
      y: function (v) { return TOP + PLOT_H * (high - Math.min(v, high)) / (high - low); } };
  }

  function xScale(param, points, i) {
    if (param.kind === "categorical") {
      const band = PLOT_W / param.categories.length;
      const at = {};
      param.categories.forEach(function (c, k) { at[c] = k; });
      return {
        x: function (v, p) { return LEFT + band * (at[v] + 0.5 + jitter(p, i) * Math.min(0.5, 24 / band)); },
        ticks: param.categories.map(function (c, k) { return { at: LEFT + band * (k + 0.5), label: c }; }),
        band: band,
      };
    }
    const vals = points.map(function (p) { return p.x[i]; }).filter(function (v) { return v !== null; });
    const low = Math.min.apply(null, vals), high = Math.max.apply(null, vals);
    const f = param.log ? Math.log10 : function (v) { return v; };
    const pad = (f(high) - f(low)) * 0.06;
    const lo = f(low) - pad, hi = f(high) + pad;
    const x = function (v) { return LEFT + PLOT_W * (f(v) - lo) / (hi - lo); };
    let values = [];
    if (param.log) {
      for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) values.push(Math.pow(10, e));
    } else {
      values = svg.ticks(low, high, 4);
      // Integer parameters (depths, sizes) get no ticks between integers.
      if (vals.every(Number.isInteger)) values = values.filter(Number.isInteger);
    }
    // The smallest and largest value are always labelled, unless a tick is right beside them.
    [low, high].forEach(function (v) {
      if (!values.some(function (t) { return Math.abs(x(t) - x(v)) < 26; })) values.push(v);
    });
    values.sort(function (a, b) { return a - b; });
    return { x: x, ticks: values.map(function (v) { return { at: x(v), label: svg.short(v) }; }) };
  }

  function panel(data, param, i, ys, colours) {
    const points = data.points.filter(function (p) { return p.x[i] !== null; });
    const xs = xScale(param, points, i);
    const el = node("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "class": "slice-panel",
      "data-param": param.name, "data-kind": param.kind + (param.log ? " log" : ""),
      "aria-label": "val_bpb against " + param.name });
    el.appendChild(node("text", { x: LEFT + PLOT_W / 2, y: 16, "text-anchor": "middle", "class": "slice-title" },
      param.name + (param.log ? " (log)" : "")));
    el.appendChild(node("rect", { x: LEFT, y: TOP, width: PLOT_W, height: PLOT_H, "class": "slice-frame" }));
    ys.ticks.forEach(function (v) {
      el.appendChild(node("line", { x1: LEFT, x2: LEFT + PLOT_W, y1: ys.y(v), y2: ys.y(v), "class": "slice-grid" }));
      el.appendChild(node("text", { x: LEFT - 5, y: ys.y(v) + 3.5, "text-anchor": "end", "class": "slice-tick slice-ytick" }, svg.short(v)));
    });
    el.appendChild(node("text", { x: 11, y: TOP + PLOT_H / 2, "text-anchor": "middle", "class": "slice-axis-label",
      transform: "rotate(-90 11 " + (TOP + PLOT_H / 2) + ")" }, "val_bpb"));
    const slanted = param.kind === "categorical" && xs.band < 46;
    xs.ticks.forEach(function (t) {
      if (param.kind === "categorical") {
        el.appendChild(node("line", { x1: t.at, x2: t.at, y1: TOP, y2: TOP + PLOT_H, "class": "slice-grid" }));
      } else {
        el.appendChild(node("line", { x1: t.at, x2: t.at, y1: TOP + PLOT_H, y2: TOP + PLOT_H + 4, "class": "slice-tickmark" }));
      }
      const text = t.label.length > 12 ? t.label.slice(0, 11) + "…" : t.label;
      const label = node("text", slanted
        ? { x: t.at, y: TOP + PLOT_H + 13, "text-anchor": "end", transform: "rotate(-35 " + t.at + " " + (TOP + PLOT_H + 13) + ")", "class": "slice-tick slice-xtick" }
        : { x: t.at, y: TOP + PLOT_H + 15, "text-anchor": "middle", "class": "slice-tick slice-xtick" }, text);
      if (text !== t.label) label.appendChild(node("title", {}, t.label));
      el.appendChild(label);
    });
    if (data.baseline !== null) {
      const yb = ys.y(data.baseline);
      el.appendChild(node("line", { x1: LEFT, x2: LEFT + PLOT_W, y1: yb, y2: yb, "class": "slice-baseline" }));
      el.appendChild(node("text", { x: LEFT + PLOT_W - 3, y: yb - 4, "text-anchor": "end", "class": "slice-baseline-label" }, "baseline"));
    }
    // Kept iterations last, so they are drawn on top.
    points.slice().sort(function (a, b) { return (a.status === "keep") - (b.status === "keep"); }).forEach(function (p) {
      const kept = p.status === "keep", colour = colours[p.group] || "#444", off = p.val_bpb > ys.cap;
      const value = p.x[i];
      const cx = xs.x(value, p), cy = ys.y(p.val_bpb);
      const shape = off  // a triangle pointing up: beyond the top of the axis
        ? ["path", { d: "M" + cx.toFixed(1) + "," + (cy - 1).toFixed(1) + "l4.5,8h-9z" }]
        : ["circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: kept ? 5 : 4 }];
      const dot = node(shape[0], Object.assign(shape[1], {
        fill: kept ? colour : "#fff", "fill-opacity": kept ? 0.9 : 0.6, stroke: colour, "stroke-width": kept ? 1 : 1.3,
        "stroke-opacity": kept ? 1 : 0.6, "class": "slice-point" + (kept ? " kept" : "") + (off ? " off-scale" : ""),
        "data-group": p.group, "data-run": p.run, "data-index": p.index }));
      dot.appendChild(node("title", {}, "run #" + p.run + " · " + p.group + p.repeat + " · iteration #" + p.index +
        "\n" + param.name + " = " + value + "\nval_bpb = " + p.val_bpb.toFixed(4) + " · " + p.status));
      el.appendChild(dot);
    });
    return el;
  }

  function legend(box, data) {
    box.replaceChildren();
    data.groups.forEach(function (g) {
      const el = document.createElement("span");
      el.className = "slice-legend-item";
      el.dataset.group = g.group;
      const swatch = document.createElement("span");
      swatch.className = "slice-swatch";
      swatch.style.background = g.colour;
      el.append(swatch, g.label);
      box.appendChild(el);
    });
    const key = document.createElement("span");
    key.className = "slice-legend-key muted";
    key.innerHTML = '<span class="slice-swatch kept"></span>kept <span class="slice-swatch hollow"></span>not kept';
    box.appendChild(key);
  }

  function draw() {
    const source = document.getElementById("slices-data");
    const box = document.getElementById("slices");
    if (!source || !box) return;
    const data = JSON.parse(source.textContent);
    const note = document.getElementById("slices-note");
    box.closest("figure").hidden = false;  // hidden where this script is not loaded (the run page's table)
    box.replaceChildren();
    legend(document.getElementById("slices-legend"), data);
    if (!data.points.length) { note.textContent = "No iteration with a val_bpb matches the filter."; return; }
    const colours = {};
    data.groups.forEach(function (g) { colours[g.group] = g.colour; });
    const width = box.clientWidth || 1200, cols = Math.max(1, Math.floor((width + GAP) / (270 + GAP)));
    W = Math.min(380, Math.floor((width - (cols - 1) * GAP) / cols));
    PLOT_W = W - LEFT - RIGHT;
    const ys = yScale(data);
    data.params.forEach(function (param, i) { box.appendChild(panel(data, param, i, ys, colours)); });
    const constant = data.constant.map(function (c) { return c.name + " = " + c.value; });
    note.textContent = data.shown + " iteration" + (data.shown === 1 ? "" : "s") + " with a val_bpb" +
      (data.total > data.shown ? " (the first " + data.shown + " of " + data.total + ")" : "") +
      "; lower val_bpb is better; one y axis for every panel; colour = group, filled = kept" +
      (data.baseline !== null ? "; dashed line = the run's baseline" : "") +
      (ys.above ? "; " + ys.above + " far above the rest (val_bpb > " + svg.short(ys.cap) + ") drawn on the top edge as △" : "") + "." +
      (data.params.length ? "" : " No parameter varies among them.") +
      (constant.length ? " Constant among them, so not plotted: " + constant.join(", ") + "." : "");
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
