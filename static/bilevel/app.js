// Shared client code: a WebSocket that reconnects with backoff and tells the page when it
// (re)connected, so the page can catch up from the server (the database is the record).
"use strict";

window.bilevel = window.bilevel || {};

window.bilevel.liveSocket = function liveSocket(path, handlers) {
  let delay = 500;
  let socket = null;
  let closedByPage = false;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + path);
    socket.onopen = function () {
      delay = 500;
      if (handlers.onOpen) handlers.onOpen();
    };
    socket.onmessage = function (message) {
      handlers.onEvent(JSON.parse(message.data));
    };
    socket.onclose = function (event) {
      if (handlers.onClose) handlers.onClose(event);
      if (closedByPage || event.code === 4401 || event.code === 4404) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
  return { close: function () { closedByPage = true; if (socket) socket.close(); } };
};

// Experiment form: when the budget kind or preset changes and the budget still holds a default,
// replace it with the default of the new choice (a FLOPs number is no valid seconds budget).
document.addEventListener("change", function (event) {
  const form = event.target.form;
  if (!form || (event.target.name !== "budget_kind" && event.target.name !== "preset")) return;
  const input = form.querySelector("[data-budget-defaults]");
  if (!input) return;
  const defaults = JSON.parse(input.dataset.budgetDefaults);
  const current = parseFloat(input.value);
  const isDefault = Object.values(defaults).some(function (d) { return d.flops === current || d.seconds === current; });
  const preset = defaults[form.elements.preset.value];
  const kind = form.querySelector("input[name=budget_kind]:checked");
  if (preset && kind && (isDefault || input.value === "")) input.value = String(preset[kind.value]);
});

// Experiment form: what real confirmation will cost, from the groups, repeats, r and the budget chosen.
// A training is about a minute on cpu-tiny at the default budget (measured; the server states the constant),
// longer in proportion at a larger FLOP budget; a seconds budget maps to the surrogate's fitted FLOP budget.
function showRealConfirmationCost(form) {
  const note = form.querySelector("#real-confirmation-cost");
  if (!note) return;
  const groups = form.querySelectorAll("input[name=groups]:checked").length;
  const repeats = parseInt(form.elements.repeats.value, 10) || 0;
  const field = form.elements.real_confirmation_repeats;
  const r = field.value === "" ? parseInt(note.dataset.defaultRepeats, 10) : parseInt(field.value, 10) || 0;
  const kind = form.querySelector("input[name=budget_kind]:checked");
  const budget = parseFloat(form.elements.budget_value.value);
  const reference = parseFloat(note.dataset.referenceFlops);
  const scale = kind && kind.value === "flops" && budget > 0 ? Math.max(budget / reference, 0.05) : 1;
  const perTraining = parseFloat(note.dataset.secondsPerTraining) * scale / 60;
  const trainings = groups * repeats * 2 * r;
  note.textContent = r === 0 ? "No real confirmation: surrogate results stay unchecked against training."
    : "Cost: " + groups * repeats + " runs × " + 2 * r + " real trainings = " + trainings + " trainings × about "
      + perTraining.toFixed(perTraining < 10 ? 1 : 0) + " min ≈ " + Math.round(trainings * perTraining)
      + " min of training-queue time (at most; a run that kept nothing trains its baseline only).";
}
document.addEventListener("input", function (event) { if (event.target.form) showRealConfirmationCost(event.target.form); });
document.addEventListener("change", function (event) { if (event.target.form) showRealConfirmationCost(event.target.form); });
document.addEventListener("DOMContentLoaded", function () {
  const form = document.querySelector("form.experiment-form");
  if (form) showRealConfirmationCost(form);
});
