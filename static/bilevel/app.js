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
