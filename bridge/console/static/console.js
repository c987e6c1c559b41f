// voxys-bridge console: progressive enhancement only. Every page works without this file.
"use strict";

// The overview (main[data-refresh]) replaces itself with a fresh copy every few seconds
// while the tab is visible. The copy is parsed, never executed: DOMParser runs no script.
function startRefresh(main) {
  const seconds = Number(main.dataset.refresh);
  if (!(seconds > 0)) return;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (response.redirected || !response.ok) {
        // Signed out (the token changed, the session expired): show the sign-in page.
        if (response.redirected) window.location.assign(response.url);
        return;
      }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("main");
      const current = document.getElementById("main");
      if (fresh && current) current.replaceWith(fresh);
    } catch (error) {
      // The server restarting: try again at the next tick.
    } finally {
      busy = false;
    }
  }, seconds * 1000);
}

// "Select all" on the dead-letter list ticks every row's checkbox of its form.
function enableSelectAll(box) {
  box.addEventListener("change", () => {
    for (const row of box.form.querySelectorAll('input[type="checkbox"][name="ids"]')) {
      row.checked = box.checked;
    }
  });
}

document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  const main = document.querySelector("main[data-refresh]");
  if (main) startRefresh(main);
  for (const box of document.querySelectorAll("input[data-select-all]")) enableSelectAll(box);
});
