// The sagas list's live update: rows of sagas still in flight are re-read every few
// seconds (one request for all of them) and rewritten in place. No other script runs on
// the console, and none is inline: the Content-Security-Policy allows only this file.
"use strict";

(function () {
  const EVERY_MS = 3000;
  const FINISHED = new Set(["completed", "compensated", "aborted"]);

  function liveRows(table) {
    return Array.from(table.querySelectorAll("tr[data-live]"));
  }

  function setText(row, field, text) {
    const cell = row.querySelector('[data-field="' + field + '"]');
    if (cell !== null) {
      cell.textContent = text;
    }
    return cell;
  }

  function apply(row, saga) {
    const cell = setText(row, "status", "");
    if (cell !== null) {
      const badge = document.createElement("span");
      badge.className = "status status-" + saga.status;
      badge.textContent = saga.status;
      cell.appendChild(badge);
    }
    let step = saga.step || "";
    if (saga.phase === "compensate") {
      step += " (undo)";
    }
    if (saga.waiting_for) {
      step += " waits for " + saga.waiting_for;
    }
    setText(row, "step", step);
    setText(row, "attempt", String(saga.attempt));
    setText(row, "reason", saga.reason || "");
    row.classList.add("updated");
    if (FINISHED.has(saga.status)) {
      row.removeAttribute("data-live");
    }
  }

  async function refresh(table, note) {
    const rows = liveRows(table);
    if (rows.length === 0) {
      return false;
    }
    const ids = rows.map((row) => row.dataset.id).join(",");
    const url = table.dataset.liveUrl + "?ids=" + encodeURIComponent(ids);
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) {
      note.textContent = "Live update paused (" + response.status + "); reload the page.";
      return false;
    }
    const body = await response.json();
    const byId = new Map(body.sagas.map((saga) => [saga.id, saga]));
    for (const row of rows) {
      const saga = byId.get(row.dataset.id);
      if (saga !== undefined) {
        apply(row, saga);
      }
    }
    note.textContent = "In-flight rows updated at " + body.at.slice(11, 19) + " UTC.";
    return true;
  }

  function start() {
    const table = document.getElementById("sagas");
    const note = document.getElementById("live-note");
    if (table === null || note === null || !table.dataset.liveUrl) {
      return;
    }
    const tick = async () => {
      let again = false;
      try {
        again = await refresh(table, note);
      } catch (error) {
        note.textContent = "Live update paused; reload the page.";
      }
      if (again) {
        window.setTimeout(tick, EVERY_MS);
      }
    };
    window.setTimeout(tick, EVERY_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
