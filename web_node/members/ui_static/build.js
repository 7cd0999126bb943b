// The live log of one build: follows the ui's own event stream (same origin, no token)
// and appends each log event's output to the <pre>. No framework, no build step.
(function () {
  "use strict";
  var log = document.getElementById("log");
  var state = document.getElementById("log-state");
  var badge = document.getElementById("build-status");
  var worker = document.getElementById("build-worker");
  var ended = document.getElementById("build-ended");
  if (!log || log.dataset.live !== "yes" || !window.EventSource) {
    return;
  }
  // Colour codes of terminals mean nothing here; drop them rather than show escape soup.
  var ANSI = /\u001b\[[0-9;?]*[ -\/]*[@-~]/g;
  var finished = false;

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }

  function append(text, cls) {
    var follow = atBottom();
    if (cls) {
      var span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      log.appendChild(span);
    } else {
      log.appendChild(document.createTextNode(text));
    }
    if (follow) {
      window.scrollTo(0, document.body.scrollHeight);
    }
  }

  function setStatus(status) {
    if (!badge || !status) {
      return;
    }
    badge.textContent = status;
    badge.className = "status status-" + status;
  }

  function setState(text, cls) {
    state.textContent = text;
    state.className = "log-state" + (cls ? " " + cls : "");
  }

  var source = new EventSource(log.dataset.eventsUrl);
  source.onopen = function () {
    if (!finished) {
      setState("live");
    }
  };
  source.onmessage = function (message) {
    var event;
    try {
      event = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    var payload = event.payload || {};
    if (event.type === "log") {
      append(String(payload.output || "").replace(ANSI, ""));
    } else if (event.type === "status") {
      setStatus(payload.status);
      if (payload.worker && worker) {
        worker.textContent = payload.worker;
      }
    } else if (event.type === "error" || event.type === "truncated") {
      append("\n" + String(payload.message || "error") + "\n", "log-error");
    } else if (event.type === "finish" || event.type === "deleted") {
      finished = true;
      source.close();
      if (event.type === "finish") {
        setStatus(payload.status);
        if (ended && event.time) {
          ended.textContent = new Date(event.time * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
        }
        append("\nbuild " + payload.status + "\n", "log-end log-end-" + payload.status);
        setState("finished: " + payload.status, "done");
      } else {
        append("\n" + String(payload.message || "build deleted") + "\n", "log-error");
        setState("build deleted", "broken");
      }
    }
  };
  source.onerror = function () {
    if (finished) {
      return;
    }
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (build gone, or the endpoint switched off): no retry.
      setState("the live log is unavailable; reload the page to try again", "broken");
    } else {
      setState("connection lost; reconnecting…", "broken");
    }
  };
})();
