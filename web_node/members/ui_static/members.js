// Refreshes the members table every few seconds from members.json (same origin, read-only).
(function () {
  "use strict";
  var table = document.getElementById("members");
  var state = document.getElementById("members-state");
  if (!table || !window.fetch) {
    return;
  }
  var url = table.dataset.url;
  var every = parseInt(table.dataset.refreshMs, 10) || 3000;
  var body = table.tBodies[0];

  function age(seconds) {
    if (seconds === null || seconds === undefined) {
      return "—";
    }
    if (seconds < 10) {
      return seconds.toFixed(1) + " s ago";
    }
    if (seconds < 120) {
      return Math.round(seconds) + " s ago";
    }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 120) {
      return minutes + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s ago";
    }
    return Math.floor(minutes / 60) + "h" + String(minutes % 60).padStart(2, "0") + "m ago";
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function badge(row, text, status) {
    var td = document.createElement("td");
    var span = document.createElement("span");
    span.className = "status status-" + status;
    span.textContent = text;
    td.appendChild(span);
    row.appendChild(td);
  }

  function render(doc) {
    var rows = document.createDocumentFragment();
    doc.components.forEach(function (c) {
      var row = document.createElement("tr");
      if (c.stale) {
        row.className = "stale";
      }
      cell(row, c.name);
      cell(row, c.group);
      cell(row, c.host);
      cell(row, String(c.pid));
      cell(row, age(c.heartbeat_age_s));
      cell(row, age(c.last_run_age_s));
      if (c.stale) {
        badge(row, "stale", "errored");
      } else if (c.paused) {
        badge(row, "paused", "pending");
      } else {
        badge(row, "running", "succeeded");
      }
      rows.appendChild(row);
    });
    if (!doc.components.length) {
      var none = document.createElement("tr");
      none.className = "none";
      var td = cell(none, "No member has registered yet.");
      td.colSpan = 7;
      td.className = "muted";
      rows.appendChild(none);
    }
    body.replaceChildren(rows);
    table.dataset.refreshedAt = String(doc.now);
    state.textContent = "updated " + new Date(doc.now * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    state.className = "log-state";
  }

  function refresh() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(render)
      .catch(function (e) {
        state.textContent = "cannot refresh (" + e.message + "); retrying";
        state.className = "log-state broken";
      })
      .finally(function () {
        window.setTimeout(refresh, every);
      });
  }

  refresh();
})();
