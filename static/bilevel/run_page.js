// The live run page: draws the run from a JSON snapshot, then applies WebSocket events.
// On every (re)connect it fetches a fresh snapshot, so nothing missed while offline is lost.
// Every stored string (hypotheses, guidance, notes) goes into the page as textContent.
"use strict";

(function () {
  const COLORS = { keep: "#1f9d55", discard: "#9aa4b1", crash: "#d64545", baseline: "#2f6fd6", best: "#18202b", band: "rgba(47,111,214,0.12)", extrapolated: "#d97706" };
  const DS = { keep: 0, discard: 1, baseline: 2, failed: 3, best: 4, baseLine: 5, bandHigh: 6, bandLow: 7, extrapolated: 8 };

  // A surrogate value for a config outside the measured support: no better than the nearest measured configs.
  function extrapolationText(it) {
    if (!it.extrapolated) return "";
    let text = "extrapolated: outside the surrogate's measured support";
    if (it.nearest_measured_val_bpb !== null && it.nearest_measured_val_bpb !== undefined) text += " (nearest measured " + fmt(it.nearest_measured_val_bpb) + ")";
    if (it.support_distance !== null && it.support_distance !== undefined) text += ", distance " + Number(it.support_distance).toPrecision(3);
    return text;
  }
  const CONTROL_WHEN = "[data-when]";

  function byId(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits === undefined ? 4 : digits);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s >= 3600) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return s + " s";
  }

  function truncate(text, length) {
    text = text || "";
    return text.length > length ? text.slice(0, length - 1) + "…" : text;
  }

  function RunPage(config, snapshot) {
    this.config = config;
    this.run = {};
    this.iterations = new Map();   // index -> iteration dict
    this.cycles = new Map();       // index -> outer cycle dict
    this.attachments = new Map();  // id -> attachment dict
    this.sessions = [];            // Level 2 research sessions
    this.level2 = null;            // the latest session's live panel (runs/engine/level2_progress.py)
    this.clockOffset = 0;          // server clock − this page's clock, in seconds
    this.live = {};                // the training in flight: {iteration, points, ...}
    this.lastCurve = {};
    this.snapshotTimer = null;
    this.tableTimer = null;
    this.chart = this.makeChart();
    this.curveChart = this.makeCurveChart();
    this.applySnapshot(snapshot);
  }

  RunPage.prototype.makeChart = function () {
    const point = function (label, color, style) {
      return { label: label, data: [], backgroundColor: color, borderColor: color, pointRadius: 4, pointStyle: style || "circle", baseStyle: style || "circle", showLine: false, clip: false };
    };
    const failed = point("crash / invalid", COLORS.crash, "crossRot");
    failed.yAxisID = "flags";
    failed.pointRadius = 7;
    failed.borderWidth = 2;
    return new Chart(byId("bpb-chart"), {
      type: "scatter",
      data: {
        datasets: [
          point("keep", COLORS.keep),
          point("discard", COLORS.discard),
          point("baseline training", COLORS.baseline, "rectRot"),
          failed,
          { label: "running best", data: [], borderColor: COLORS.best, backgroundColor: COLORS.best, showLine: true, stepped: true, pointRadius: 0, borderWidth: 2 },
          { label: "baseline mean", data: [], borderColor: COLORS.baseline, borderDash: [6, 4], showLine: true, pointRadius: 0, borderWidth: 1 },
          { label: "baseline ± noise sd", data: [], borderColor: "transparent", backgroundColor: COLORS.band, showLine: true, pointRadius: 0, fill: false },
          { label: "baseline − noise sd", data: [], borderColor: "transparent", backgroundColor: COLORS.band, showLine: true, pointRadius: 0, fill: "-1" },
          // A ring around every extrapolated point (drawn over its keep/discard/baseline marker).
          { label: "extrapolated (outside the measured support)", data: [], borderColor: COLORS.extrapolated, backgroundColor: "transparent", pointStyle: "circle", baseStyle: "circle", pointRadius: 8, borderWidth: 2, showLine: false, clip: false },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { type: "linear", title: { display: true, text: "iteration" }, ticks: { precision: 0 } },
          y: { title: { display: true, text: "val_bpb (lower is better)" }, grace: "5%" },
          flags: { type: "linear", display: false, min: 0, max: 1 },
        },
        plugins: {
          // Only what is drawn: no "± noise sd" entry when no noise sd was measured.
          legend: { labels: { filter: function (item, data) {
            return item.text !== "baseline − noise sd" && data.datasets[item.datasetIndex].data.length > 0;
          } } },
          tooltip: {
            callbacks: {
              label: function (ctx) {
                const it = ctx.raw && ctx.raw.it;
                if (!it) return ctx.dataset.label + ": " + fmt(ctx.parsed.y);
                const head = "#" + it.index + " " + it.status + (it.val_bpb === null ? "" : " " + fmt(it.val_bpb));
                const lines = [head, truncate(it.hypothesis, 90)];
                if (it.extrapolated) lines.push(extrapolationText(it));
                return lines;
              },
            },
          },
        },
      },
    });
  };

  RunPage.prototype.makeCurveChart = function () {
    return new Chart(byId("curve-chart"), {
      type: "scatter",
      data: { datasets: [{ label: "train loss", data: [], borderColor: COLORS.baseline, showLine: true, pointRadius: 0, borderWidth: 1.5 }] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        // From step 0, so that a single early point does not get an axis of 0.94–1.06.
        scales: { x: { type: "linear", min: 0, title: { display: true, text: "step" }, ticks: { precision: 0 } }, y: { title: { display: true, text: "train loss" } } },
        plugins: { legend: { display: false } },
      },
    });
  };

  // --- state ------------------------------------------------------------------------------

  RunPage.prototype.applySnapshot = function (snapshot) {
    this.run = snapshot.run || {};
    // Merge, never drop: an event may have arrived after the snapshot was read.
    (snapshot.iterations || []).forEach((it) => this.iterations.set(it.index, it));
    (snapshot.outer_cycles || []).forEach((c) => this.cycles.set(c.index, c));
    (snapshot.attachments || []).forEach((a) => this.attachments.set(a.id, a));
    this.sessions = snapshot.research_sessions || this.sessions;
    this.setLevel2(snapshot.level2_panel);
    this.live = this.freshestLive(snapshot.live_progress || {});
    const stored = snapshot.last_curve || {};
    if (stored.points && stored.points.length && !(this.lastCurve.iteration > stored.iteration)) this.lastCurve = stored;
    this.renderAll();
  };

  // The database's live_progress is written every few seconds; events may be ahead of it.
  RunPage.prototype.freshestLive = function (stored) {
    const ours = this.live || {};
    const keepOurs = ours.iteration !== undefined && !this.iterations.has(ours.iteration) && !this.run.is_finished
      && (stored.iteration === undefined || stored.iteration === ours.iteration)
      && (ours.points || []).length >= (stored.points || []).length;
    return keepOurs ? ours : stored;
  };

  RunPage.prototype.refreshSnapshot = function (delay) {
    clearTimeout(this.snapshotTimer);
    this.snapshotTimer = setTimeout(() => {
      fetch(this.config.snapshotUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((response) => { if (!response.ok) throw new Error("snapshot " + response.status); return response.json(); })
        .then((snapshot) => this.applySnapshot(snapshot))
        .catch((error) => { byId("live-indicator").textContent = "could not load the run: " + error.message; });
    }, delay || 0);
  };

  RunPage.prototype.refreshTable = function () {
    const container = byId("iteration-table");
    if (!container || !window.htmx) return;
    clearTimeout(this.tableTimer);
    this.tableTimer = setTimeout(() => {
      const inner = container.querySelector(".iteration-table");
      const query = inner ? inner.dataset.query : "";
      window.htmx.ajax("GET", this.config.tableUrl + (query ? "?" + query : ""), { target: "#iteration-table", swap: "innerHTML" });
    }, 150);
  };

  RunPage.prototype.onEvent = function (event) {
    if (!event || event.run !== this.config.run) return;
    switch (event.type) {
      case "progress":
        if (this.live.iteration !== event.iteration) this.live = { iteration: event.iteration, points: [] };
        this.live.points = this.live.points || [];
        if (event.train_loss !== null && event.train_loss !== undefined) this.live.points.push([event.step, event.train_loss]);
        this.live.step = event.step;
        this.live.budget_fraction = event.budget_fraction;
        this.live.elapsed = event.elapsed;
        if (this.run.status === "queued") this.run.status = "running";
        this.renderCurve();
        this.renderProgress();
        break;
      case "iteration": {
        const it = event.iteration;
        this.iterations.set(it.index, it);
        if (this.live.iteration === it.index) {
          // Keep showing the finished training's curve until the next one starts.
          if (this.live.points && this.live.points.length) this.lastCurve = { iteration: it.index, points: this.live.points };
          this.live = {};
        }
        this.renderChart();
        this.renderProgress();
        this.renderLatest();
        this.refreshTable();
        this.refreshSnapshot(300);  // run summary (best, noise sd), the recorded curve
        break;
      }
      case "status":
        this.run.status = event.status;
        this.run.status_detail = event.detail || "";
        this.run.status_display = (event.status.charAt(0).toUpperCase() + event.status.slice(1)).replace("_", " ");
        this.renderStatus();
        this.refreshSnapshot(300);
        break;
      case "outer_cycle":
        this.cycles.set(event.cycle.index, event.cycle);
        this.renderCycles();
        break;
      case "mechanism": {
        const known = this.attachments.get(event.attachment);
        if (known) {
          known.status = event.status;
          known.status_display = event.status;
          known.status_detail = event.note || known.status_detail;
          this.renderAttachments();
        }
        this.refreshSnapshot(300);  // counts and names come from the database
        break;
      }
      case "research":
        this.refreshSnapshot(0);  // a session finished: its outcome and any new mechanism
        break;
      case "level2":
        this.setLevel2(event.panel);
        this.renderLevel2();
        break;
      default:
        break;
    }
  };

  // --- rendering ----------------------------------------------------------------------------

  RunPage.prototype.renderAll = function () {
    this.renderStatus();
    this.renderChart();
    this.renderCurve();
    this.renderProgress();
    this.renderLatest();
    this.renderCycles();
    this.renderAttachments();
    this.renderSessions();
    this.renderLevel2();
  };

  RunPage.prototype.sortedIterations = function () {
    return Array.from(this.iterations.values()).sort((a, b) => a.index - b.index);
  };

  RunPage.prototype.renderStatus = function () {
    const badge = byId("run-status");
    const status = this.run.status || "";
    badge.textContent = this.run.status_display || status;
    badge.className = "status status-" + status;
    byId("run-status-detail").textContent = this.run.status_detail || "";
    this.renderWaiting(status);
    if (this.run.is_finished) {  // nothing more will arrive: say so instead of "live"
      const indicator = byId("live-indicator");
      indicator.textContent = "finished";
      indicator.className = "live done muted";
      indicator.title = "this run has ended; the page shows its record";
    }
    document.querySelectorAll("#run-controls " + CONTROL_WHEN).forEach((button) => {
      button.hidden = button.dataset.when.split(" ").indexOf(status) === -1;
    });
  };

  // Level 2 is a step: while it researches or waits for a reviewer, say so and link the reviews.
  RunPage.prototype.renderWaiting = function (status) {
    const box = byId("run-waiting");
    if (!box) return;
    box.hidden = status !== "researching" && status !== "awaiting_review";
    byId("run-waiting-text").textContent = status === "researching"
      ? "Level 2 is researching a new mechanism; the run continues when the session ends."
      : "The run is waiting for a review decision before its next iteration.";
    const links = byId("run-waiting-links");
    links.textContent = "";
    if (status !== "awaiting_review") return;
    Array.from(this.attachments.values()).filter((a) => a.status === "pending").forEach((a) => {
      const link = document.createElement("a");
      link.href = a.review_url;
      link.textContent = "review " + a.name;
      links.append(" ", link);
    });
  };

  RunPage.prototype.renderChart = function () {
    const sets = this.chart.data.datasets;
    [DS.keep, DS.discard, DS.baseline, DS.failed, DS.best, DS.baseLine, DS.bandHigh, DS.bandLow, DS.extrapolated].forEach((i) => {
      sets[i].data = [];
      if (sets[i].baseStyle) sets[i].pointStyle = sets[i].baseStyle;
    });
    let best = null;
    let failed = 0;
    let maxIndex = Math.max(1, this.run.iterations_planned || 1);
    const baselineValues = [];
    this.sortedIterations().forEach((it) => {
      maxIndex = Math.max(maxIndex, it.index);
      const p = { x: it.index, y: it.val_bpb, it: it };
      if (it.status === "crash" || it.status === "invalid_proposal" || it.val_bpb === null) {
        failed += 1;
        sets[DS.failed].data.push({ x: it.index, y: 0.96, it: it });
        return;
      }
      if (it.status === "keep") sets[DS.keep].data.push(p);
      else if (it.status === "baseline") { sets[DS.baseline].data.push(p); baselineValues.push(it.val_bpb); }
      else sets[DS.discard].data.push(p);
      if (it.extrapolated) sets[DS.extrapolated].data.push(p);
      if ((it.status === "keep" || it.status === "baseline") && (best === null || it.val_bpb < best)) best = it.val_bpb;
      if (best !== null) sets[DS.best].data.push({ x: it.index, y: best });
    });
    let baseline = this.run.baseline_val_bpb;
    if (baseline === null || baseline === undefined) {
      baseline = baselineValues.length ? baselineValues.reduce((a, b) => a + b, 0) / baselineValues.length : null;
    }
    if (baseline !== null) {
      sets[DS.baseLine].data = [{ x: 0, y: baseline }, { x: maxIndex, y: baseline }];
      const sd = this.run.noise_sd;
      if (sd) {
        sets[DS.bandHigh].data = [{ x: 0, y: baseline + sd }, { x: maxIndex, y: baseline + sd }];
        sets[DS.bandLow].data = [{ x: 0, y: baseline - sd }, { x: maxIndex, y: baseline - sd }];
      }
    }
    // One absurd value (a diverged config) would flatten everything else into a line: cap the
    // axis a few "spreads" above the baseline and draw what lies above as triangles at the cap.
    const values = sets[DS.keep].data.concat(sets[DS.discard].data, sets[DS.baseline].data).map((p) => p.y);
    let above = 0;
    this.chart.options.scales.y.max = undefined;
    if (values.length && baseline !== null && best !== null) {
      const spread = Math.max(baseline - best, this.run.noise_sd || 0, 0.02);
      const cap = baseline + 6 * spread;
      if (Math.max.apply(null, values) > cap) {
        this.chart.options.scales.y.max = cap;
        [DS.keep, DS.discard, DS.baseline].forEach((i) => {
          sets[i].data.forEach((p) => { if (p.y > cap) { above += 1; p.y = cap; p.clipped = true; } });
          sets[i].pointStyle = sets[i].data.map((p) => (p.clipped ? "triangle" : sets[i].baseStyle || "circle"));
        });
      }
    }
    this.chart.options.scales.x.max = maxIndex;
    this.chart.options.scales.x.min = 0;
    this.chart.update();
    const notes = [];
    if (above) notes.push(above + " value" + (above === 1 ? "" : "s") + " above the axis (▲ at the top; hover for the value)");
    if (failed) notes.push(failed + " crashed or invalid iteration" + (failed === 1 ? "" : "s") + " (× at the top; no val_bpb)");
    const extrapolated = sets[DS.extrapolated].data.length;
    if (extrapolated) notes.push(extrapolated + " extrapolated (ringed: outside the surrogate's measured support, no better than the nearest measured configs)");
    if (baseline !== null) notes.push("baseline " + fmt(baseline) + (this.run.noise_sd ? " ± " + fmt(this.run.noise_sd) + " (noise sd)" : " (noise sd not measured)"));
    if (best !== null) notes.push("best " + fmt(best));
    byId("chart-note").textContent = notes.join(" · ");
  };

  RunPage.prototype.renderCurve = function () {
    const training = this.live && this.live.points && this.live.points.length;
    const source = training ? this.live : this.lastCurve;
    const points = (source && source.points) || [];
    this.curveChart.data.datasets[0].data = points.map((p) => ({ x: p[0], y: p[1] }));
    this.curveChart.update();
    const title = byId("curve-title");
    if (training) title.textContent = "Training curve · iteration #" + this.live.iteration + " (live)";
    else if (points.length) title.textContent = "Training curve · iteration #" + source.iteration + " (last recorded)";
    else title.textContent = this.config.objective === "surrogate" ? "Training curve (none: the surrogate does not train)" : "Training curve";
  };

  RunPage.prototype.renderProgress = function () {
    const planned = this.run.iterations_planned || 0;
    let done = 0;
    let proposalSeconds = 0;
    this.iterations.forEach((it) => {
      if (it.kind === "proposal") { done += 1; proposalSeconds += it.wall_seconds || 0; }
    });
    done = Math.max(done, this.run.proposals_done || 0);
    byId("progress-proposals-text").textContent = done + " of " + planned;
    byId("progress-proposals").style.width = (planned ? Math.min(100, (100 * done) / planned) : 0) + "%";

    const live = this.live || {};
    const fraction = live.budget_fraction;
    const bar = byId("progress-training");
    const text = byId("progress-training-text");
    const timeText = [];
    if (live.iteration !== undefined && fraction !== undefined && fraction !== null) {
      bar.style.width = Math.min(100, 100 * fraction) + "%";
      text.textContent = "iteration #" + live.iteration + " · step " + (live.step === undefined ? "–" : live.step) + " · " + Math.round(100 * fraction) + "% of budget";
      timeText.push("elapsed " + duration(live.elapsed));
      if (fraction > 0.02 && live.elapsed) timeText.push("this training ≈ " + duration((live.elapsed * (1 - fraction)) / fraction) + " left");
    } else {
      bar.style.width = "0%";
      text.textContent = this.run.status === "running" ? "proposing / evaluating" : "idle";
    }
    if (this.run.started_at && this.run.finished_at) {
      timeText.push("took " + duration((Date.parse(this.run.finished_at) - Date.parse(this.run.started_at)) / 1000));
    } else if (this.run.started_at && this.run.status === "running") {
      timeText.push("running for " + duration((Date.now() - Date.parse(this.run.started_at)) / 1000));
    }
    const waiting = this.run.status === "researching" || this.run.status === "awaiting_review";
    if (waiting && this.run.waiting_since) {
      // No estimate while the run waits: a review takes as long as the person takes.
      timeText.push((this.run.status === "researching" ? "Level 2 research" : "waiting for a review") +
        " for " + duration(Math.max(0, (Date.now() - Date.parse(this.run.waiting_since)) / 1000)));
    } else if (done && planned > done && proposalSeconds > 0 && !this.run.is_finished && this.run.status !== "cancelled") {
      timeText.push("run ≈ " + duration((proposalSeconds / done) * (planned - done)) + " left");
    }
    byId("progress-time").textContent = timeText.join(" · ") || "–";
  };

  RunPage.prototype.renderLatest = function () {
    const all = this.sortedIterations();
    const target = byId("latest-iteration");
    if (!all.length) { target.textContent = "–"; return; }
    const it = all[all.length - 1];
    target.textContent = "#" + it.index + " " + it.status + (it.val_bpb === null ? "" : " · " + fmt(it.val_bpb)) + (it.extrapolated ? " · extrapolated" : "") + (it.hypothesis ? " · " + it.hypothesis : "");
  };

  function chips(cell, names, className) {
    (names || []).forEach((name) => { cell.appendChild(el("span", name, "chip " + (className || ""))); cell.appendChild(document.createTextNode(" ")); });
  }

  RunPage.prototype.renderCycles = function () {
    const body = byId("outer-cycles");
    if (!body) return;
    const cycles = Array.from(this.cycles.values()).sort((a, b) => a.index - b.index);
    if (!cycles.length) return;
    this.renderFrozenGrid(cycles);
    body.replaceChildren();
    cycles.forEach((c) => {
      const row = el("tr");
      row.appendChild(el("td", c.index));
      row.appendChild(el("td", c.after_iteration));
      const frozen = el("td"); chips(frozen, c.frozen); row.appendChild(frozen);
      const added = el("td"); chips(added, c.newly_frozen, "added"); row.appendChild(added);
      const removed = el("td"); chips(removed, c.unfrozen, "removed"); row.appendChild(removed);
      const guidance = el("td", c.guidance, "guidance");
      if (c.strategy) guidance.appendChild(el("div", c.strategy, "muted small"));
      row.appendChild(guidance);
      const reasons = el("td");
      const list = el("ul", null, "plain small");
      Object.entries(c.reasons || {}).forEach(([key, value]) => {
        const item = el("li");
        item.appendChild(el("strong", key + ": "));
        item.appendChild(document.createTextNode(typeof value === "string" ? value : JSON.stringify(value)));
        list.appendChild(item);
      });
      reasons.appendChild(list);
      row.appendChild(reasons);
      body.appendChild(row);
    });
  };

  // Parameters × cycles: which parameters were frozen after each cycle (■), newly (+) or just released (−).
  RunPage.prototype.renderFrozenGrid = function (cycles) {
    const grid = byId("frozen-grid");
    const names = [];
    cycles.forEach((c) => (c.frozen || []).concat(c.unfrozen || []).forEach((n) => { if (names.indexOf(n) === -1) names.push(n); }));
    grid.replaceChildren();
    if (!names.length) {
      grid.appendChild(el("p", this.run.is_finished ? "No parameter was frozen in this run." : "No parameter has been frozen yet.", "muted small"));
      return;
    }
    const table = el("table", null, "frozen-grid");
    const head = el("tr");
    head.appendChild(el("th", "parameter \\ cycle"));
    cycles.forEach((c) => head.appendChild(el("th", c.index)));
    table.appendChild(head);
    names.sort().forEach((name) => {
      const row = el("tr");
      row.appendChild(el("th", name));
      cycles.forEach((c) => {
        const frozen = (c.frozen || []).indexOf(name) !== -1;
        const added = (c.newly_frozen || []).indexOf(name) !== -1;
        const released = (c.unfrozen || []).indexOf(name) !== -1;
        const cell = el("td", added ? "+" : released ? "−" : "", frozen ? "frozen" : released ? "released" : "");
        cell.title = name + " after cycle " + c.index + ": " + (frozen ? "frozen" : released ? "unfrozen" : "free");
        row.appendChild(cell);
      });
      table.appendChild(row);
    });
    grid.appendChild(table);
  };

  RunPage.prototype.renderAttachments = function () {
    const body = byId("attachments");
    const items = Array.from(this.attachments.values());
    if (!items.length) return;
    body.replaceChildren();
    items.forEach((a) => {
      const row = el("tr");
      row.dataset.attachment = a.id;
      const name = el("td");
      const builtin = a.origin === "builtin-catalogue";
      const link = el("a", builtin ? "catalogue pick: " + a.name : a.name);
      link.href = a.review_url;
      name.appendChild(link);
      if (builtin) name.appendChild(el("span", " (built-in, no LLM)", "muted small"));
      else if (a.origin) name.appendChild(el("span", " " + a.origin, "muted small"));
      row.appendChild(name);
      const status = el("td");
      status.appendChild(el("span", a.status_display || a.status, "status status-" + a.status));
      if (a.inert) status.appendChild(el("span", "inert", "tag inert"));
      row.appendChild(status);
      // Sorted: the database may not keep JSON key order (PostgreSQL's jsonb does not).
      const calls = Object.entries(a.hook_calls || {})
        .sort(([first], [second]) => first.localeCompare(second))
        .map(([hook, n]) => hook + " " + n).join(", ");
      row.appendChild(el("td", calls || "none"));
      row.appendChild(el("td", a.decisions_changed, "num"));
      row.appendChild(el("td", a.activated_at_iteration === null || a.activated_at_iteration === undefined ? "–" : "#" + a.activated_at_iteration));
      row.appendChild(el("td", a.status_detail || "", "muted small"));
      body.appendChild(row);
    });
    this.renderWaiting(this.run.status || "");
  };

  RunPage.prototype.renderSessions = function () {
    const list = byId("research-sessions");
    if (!list || !this.sessions.length) return;
    list.replaceChildren();
    this.sessions.forEach((session) => {
      const item = el("li");
      item.appendChild(el("span", "after outer cycle " + session.outer_cycle_index + " "));
      item.appendChild(el("span", session.status_display || session.status, "status status-" + session.status));
      const extra = [session.backend === "builtin" && session.picked
        ? "catalogue pick: " + session.picked + " (built-in, no LLM)"
        : session.backend_label];
      if (session.repair_rounds) extra.push(session.repair_rounds + " repair round" + (session.repair_rounds === 1 ? "" : "s"));
      if (session.status_detail) extra.push(session.status_detail);
      item.appendChild(el("span", " " + extra.join(" · "), "muted"));
      // Every round's reply and refusal, so a failed session can be read here (produced ones also have a review page).
      if (session.rounds && session.rounds.length) {
        const details = el("details", null, "session-rounds");
        details.appendChild(el("summary", session.rounds.length + " round" + (session.rounds.length === 1 ? "" : "s")));
        const rounds = el("ol");
        session.rounds.forEach((round) => {
          const entry = el("li");
          entry.appendChild(el("strong", round.round + (round.attempt ? " (repair " + round.attempt + ")" : "")));
          entry.appendChild(el("span", round.error ? " refused: " + round.error : " accepted", round.error ? "error" : "muted"));
          if (round.reply) entry.appendChild(el("pre", round.reply, "round-reply"));
          rounds.appendChild(entry);
        });
        details.appendChild(rounds);
        item.appendChild(details);
      }
      list.appendChild(item);
    });
  };

  // --- Level 2 in progress: round, elapsed times, each LLM call (pushed like the training curve) ----------

  // Keep the newest panel: a snapshot read before an event must not take the page back.
  RunPage.prototype.setLevel2 = function (panel) {
    if (!panel) return;
    const ours = this.level2;
    if (ours && (ours.session > panel.session || (ours.session === panel.session && ours.server_now > panel.server_now))) return;
    this.level2 = panel;
    this.clockOffset = panel.server_now - Date.now() / 1000;
  };

  RunPage.prototype.serverNow = function () { return Date.now() / 1000 + this.clockOffset; };

  function seconds(value) {
    return (value < 10 ? fmt(value, 1) : Math.round(value)) + " s";
  }

  function roundLabel(round) {
    return round.round + (round.attempt ? " (repair " + round.attempt + ")" : "");
  }

  function ladderText(steps) {
    return (steps || []).map((s) => s.step.replace("_", " ") + (s.ok === null || s.ok === undefined ? " …" : s.ok ? " ✓" : " ✗")).join(", ");
  }

  RunPage.prototype.renderLevel2 = function () {
    const panel = this.level2;
    const body = byId("l2-body");
    if (!body || !panel) return;
    body.hidden = false;
    byId("l2-none").hidden = true;
    const running = panel.status === "running";
    byId("l2-title").textContent = "session after outer cycle " + panel.outer_cycle + " · " + (panel.backend === "builtin" ? "built-in heuristic (no LLM)" : panel.backend);
    const status = byId("l2-status");
    status.textContent = panel.status_display || panel.status;
    status.className = "status status-" + panel.status;
    byId("l2-detail").textContent = running ? "" : panel.detail || "";

    const rounds = byId("l2-rounds");
    rounds.replaceChildren();
    (panel.rounds || []).forEach((round) => {
      const row = el("tr");
      row.dataset.round = round.round;
      row.appendChild(el("td", roundLabel(round)));
      // A session stored before clock times were kept has its rounds' durations only.
      const recorded = round.started_at === null && round.seconds !== null && round.seconds !== undefined;
      const ended = recorded || (round.ended_at !== null && round.ended_at !== undefined);
      const time = el("td", null, "num l2-round-time");
      if (recorded) time.textContent = duration(round.seconds);
      else if (ended) time.textContent = duration(round.ended_at - round.started_at);
      else if (running) time.dataset.since = round.started_at;
      else time.textContent = "interrupted";
      row.appendChild(time);
      const outcome = el("td", null, "small");
      outcome.appendChild(el("span", ended ? (round.error ? "refused: " + truncate(round.error, 160) : "accepted") : running ? "running" : "ended with the session", round.error ? "error" : "muted"));
      if (round.ladder && round.ladder.length) outcome.appendChild(el("div", "ladder: " + ladderText(round.ladder), "muted"));
      row.appendChild(outcome);
      rounds.appendChild(row);
    });

    const calls = byId("l2-calls");
    calls.replaceChildren();
    (panel.calls || []).forEach((call, i) => {
      const row = el("tr", null, "l2-call outcome-" + call.outcome);
      row.appendChild(el("td", i + 1, "num"));
      row.appendChild(el("td", call.purpose));
      row.appendChild(el("td", call.tokens_in + " / " + call.tokens_out, "num"));
      row.appendChild(el("td", fmt(call.seconds, 1), "num"));
      row.appendChild(el("td", call.tokens_per_second === null ? "–" : fmt(call.tokens_per_second, 2), "num"));
      row.appendChild(el("td", call.timeout_seconds ? seconds(call.timeout_seconds) : "–", "num"));
      const labels = { ok: "reply", timeout: "timed out", waiting: "past its timeout: still waiting, not re-sent", error: "failed" };
      const outcome = el("td", labels[call.outcome] || call.outcome, call.outcome === "ok" ? "muted" : "error");
      if (call.error && call.outcome !== "waiting") outcome.title = call.error;
      row.appendChild(outcome);
      calls.appendChild(row);
    });
    const t = panel.totals || {};
    byId("l2-totals").textContent = t.calls
      ? t.calls + " call" + (t.calls === 1 ? "" : "s") + " · " + t.timeouts + " timeout" + (t.timeouts === 1 ? "" : "s") + " · " + t.retries + " retr" + (t.retries === 1 ? "y" : "ies") + " · " + t.tokens_in + " tokens in, " + t.tokens_out + " out"
      : panel.backend === "builtin" ? "no LLM calls (built-in heuristic)" : "no LLM call yet";
    this.renderLevel2Clock();
  };

  // The elapsed times move every second while the session runs (and the run's own waiting time with them).
  RunPage.prototype.renderLevel2Clock = function () {
    const panel = this.level2;
    if (!panel || !byId("l2-body")) return;
    const now = this.serverNow();
    const running = panel.status === "running";
    const end = running ? now : panel.finished_at || now;
    byId("l2-elapsed").textContent = duration(end - panel.started_at);
    const current = panel.current;
    let round = (panel.rounds || []).length ? "between rounds" : "starting";
    if (current) {
      const ladder = (current.ladder || []).filter((s) => s.ok === null || s.ok === undefined);
      round = roundLabel(current) + (ladder.length ? " · ladder step " + ladder[ladder.length - 1].step.replace("_", " ") : "");
    } else if (!running) {
      const all = panel.rounds || [];
      const last = all[all.length - 1];
      round = last ? "last round " + roundLabel(last) : "no round";
    }
    byId("l2-round").textContent = round;
    byId("l2-round-elapsed").textContent = current ? duration(now - current.started_at) + " in this round" : "";
    document.querySelectorAll("#l2-rounds [data-since]").forEach((cell) => { cell.textContent = duration(now - Number(cell.dataset.since)); });
    const flight = panel.in_flight;
    byId("l2-in-flight").textContent = flight
      ? "waiting for the " + flight.purpose + " reply: " + duration(now - flight.started_at) + " so far, timeout " + seconds(flight.timeout_seconds) + (flight.waits ? " (this server cannot cancel: past it, the client keeps waiting instead of asking again)" : "")
      : "";
  };

  function start() {
    const config = JSON.parse(byId("run-config").textContent);
    const snapshot = JSON.parse(byId("run-snapshot").textContent);
    const page = new RunPage(config, snapshot);
    window.bilevelRunPage = page;
    setInterval(function () {
      page.renderLevel2Clock();
      if (page.run.status === "researching" || page.run.status === "awaiting_review") page.renderProgress();
    }, 1000);
    const indicator = byId("live-indicator");
    page.socket = window.bilevel.liveSocket(config.socketPath, {
      onOpen: function () {
        indicator.textContent = "live";
        indicator.className = "live on";
        page.renderStatus();  // a finished run says "finished" instead
        page.refreshSnapshot(0);  // catch up with whatever happened while not connected
        page.refreshTable();
      },
      onClose: function (event) {
        if (page.run.is_finished) return;
        indicator.className = "live off";
        indicator.textContent = event.code === 4401 ? "not logged in: reload the page" : "reconnecting…";
      },
      onEvent: function (event) { page.onEvent(event); },
    });
    // A pause/resume/cancel answer carries the run's new status: show it at once.
    document.body.addEventListener("htmx:afterSettle", function (event) {
      const controls = event.target;
      if (controls.id === "run-controls" && controls.dataset.status) {
        page.run.status = controls.dataset.status;
        page.run.status_display = controls.dataset.statusDisplay;
        page.renderStatus();
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
