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
