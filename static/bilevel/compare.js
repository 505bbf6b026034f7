// Comparison chart: running best per group (mean line, optional band, optional thin lines per
// repeat), absolute or as Δ from each run's baseline. All numbers come from the server
// (runs/comparison.py); this file only draws them.
"use strict";

(function () {
  function hexToRgba(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + ((n >> 16) & 255) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function points(values) {
    const out = [];
    values.forEach(function (v, p) { if (v !== null && v !== undefined) out.push({ x: p, y: v }); });
    return out;
  }

  // Against cumulative seconds the runs of a group do not share x values, so no mean or band:
  // one line per run, the group's colour, one legend entry per group.
  function secondsDatasets(data, scale) {
    const sets = [];
    data.groups.forEach(function (group) {
      group.runs.forEach(function (run, i) {
        const pts = [];
        run[scale].forEach(function (v, p) {
          if (v !== null && v !== undefined && run.seconds[p] !== undefined) pts.push({ x: run.seconds[p], y: v });
        });
        sets.push({ label: group.label, data: pts, borderColor: group.colour, backgroundColor: group.colour,
          borderWidth: 1.5, pointRadius: 2, stepped: "before", isRepeat: i > 0, isTime: true,
          borderDash: group.same_as ? [2, 3] : group.dashed ? [6, 4] : [] });
      });
    });
    return sets;
  }

  function datasets(data, scale, band, showRepeats, xSeconds) {
    if (xSeconds) return secondsDatasets(data, scale);
    const sets = [];
    data.groups.forEach(function (group) {
      const series = group.series[scale];
      // A group identical to an earlier one is drawn dotted with markers on top of it, so both stay visible.
      const dash = group.same_as ? [2, 3] : group.dashed ? [6, 4] : [];
      if (band !== "none") {
        const lower = series.map(function (pt) {
          if (pt.mean === null) return null;
          if (band === "sd") return pt.sd === null ? null : pt.mean - pt.sd;
          return pt.ci_low;
        });
        const upper = series.map(function (pt) {
          if (pt.mean === null) return null;
          if (band === "sd") return pt.sd === null ? null : pt.mean + pt.sd;
          return pt.ci_high;
        });
        sets.push({ label: group.label + " band low", data: points(lower), borderWidth: 0, pointRadius: 0,
          fill: false, isBand: true });
        sets.push({ label: group.label + " band high", data: points(upper), borderWidth: 0, pointRadius: 0,
          backgroundColor: hexToRgba(group.colour, 0.15), fill: "-1", isBand: true });
      }
      if (showRepeats) {
        group.runs.forEach(function (run) {
          sets.push({ label: group.label + " · repeat " + run.repeat, data: points(run[scale]),
            borderColor: hexToRgba(group.colour, 0.35), borderWidth: 1, pointRadius: 0, borderDash: dash,
            stepped: "before", isRepeat: true });
        });
      }
      sets.push({ label: group.same_as ? group.label + " (same as " + group.same_as + ")" : group.label,
        data: points(series.map(function (pt) { return pt.mean; })),
        borderColor: group.colour, backgroundColor: group.colour, borderWidth: 2.5,
        pointRadius: group.same_as ? 4 : 0, pointStyle: "triangle", order: group.same_as ? -1 : 0,  // on top
        borderDash: dash, stepped: false, n: series.map(function (pt) { return pt.n; }) });
    });
    return sets;
  }

  function init() {
    const canvas = document.getElementById("compare-chart");
    const source = document.getElementById("compare-data");
    if (!canvas || !source || !window.Chart) return;
    const data = JSON.parse(source.textContent);
    const toggles = document.getElementById("chart-toggles");
    function state() {
      return {
        scale: toggles.querySelector("input[name=scale]:checked").value,
        band: toggles.querySelector("input[name=band]:checked").value,
        repeats: toggles.querySelector("input[name=repeats]").checked,
        xSeconds: toggles.querySelector("input[name=xseconds]").checked,
      };
    }
    const s = state();
    const chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: datasets(data, s.scale, s.band, s.repeats, s.xSeconds) },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: true,
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "proposal" }, ticks: { precision: 0 } },
          y: { title: { display: true, text: s.scale === "delta" ? "Δ val_bpb (best − baseline)" : "val_bpb" } },
        },
        plugins: {
          legend: { labels: { filter: function (item, chartData) {
            const ds = chartData.datasets[item.datasetIndex];
            return !ds.isBand && !ds.isRepeat;
          } } },
          tooltip: { filter: function (item) { return !item.dataset.isBand; },
            callbacks: { label: function (ctx) {
              const n = ctx.dataset.n ? " (n=" + ctx.dataset.n[ctx.parsed.x] + ")" : "";
              return ctx.dataset.label + ": " + ctx.parsed.y.toFixed(5) + n;
            } } },
        },
      },
    });
    toggles.addEventListener("change", function () {
      const now = state();
      chart.data.datasets = datasets(data, now.scale, now.band, now.repeats, now.xSeconds);
      chart.options.scales.x.title.text = now.xSeconds ? "cumulative seconds spent" : "proposal";
      chart.options.scales.x.ticks.precision = now.xSeconds ? undefined : 0;
      chart.options.scales.y.title.text = now.scale === "delta" ? "Δ val_bpb (best − baseline)" : "val_bpb";
      chart.update();
      canvas.dataset.scale = now.scale;
      canvas.dataset.x = now.xSeconds ? "seconds" : "proposal";
    });
    canvas.dataset.ready = "1";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
