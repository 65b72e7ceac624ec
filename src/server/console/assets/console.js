// wgmesh console: keeps the live part of a page current and asks before destructive
// actions. No inline script anywhere (the Content-Security-Policy forbids it).
"use strict";

// Live updates: one long-poll per tab on /console/events, parked on the server until the
// mesh version moves; then the page's #live part is fetched again and swapped in place,
// so filters, scroll position and anything typed elsewhere stay as they are.
function followMesh() {
  const live = document.getElementById("live");
  if (!live) return;
  // The version the page was rendered at: a change between rendering and the first poll
  // is caught, not lost.
  let version = live.dataset.live === "" ? null : Number(live.dataset.live);
  let failures = 0;
  async function refresh() {
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok) return;
    const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = doc.getElementById("live");
    if (fresh) live.replaceChildren(...fresh.childNodes);
    live.dataset.updated = String(Date.now());
  }
  async function poll() {
    try {
      const since = version === null ? "" : "&since=" + version;
      const answer = await fetch("/console/events?wait=25" + since, { credentials: "same-origin" });
      if (answer.status === 401) { location.reload(); return; }
      if (!answer.ok) throw new Error(String(answer.status));
      const body = await answer.json();
      if (version !== null && body.version !== version) await refresh();
      version = body.version;
      failures = 0;
      setTimeout(poll, 0);
    } catch (e) {
      failures += 1;
      setTimeout(poll, Math.min(30000, 1000 * failures));
    }
  }
  poll();
}

// Copy buttons: data-copy names the element whose text is copied.
function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (e) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
}

// Forms with data-confirm ask first.
function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  followMesh();
  copyButtons();
  confirmations();
});
