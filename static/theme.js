"use strict";
// The theme: the system's (light or dark) unless the reader picked one with the Theme button; the
// choice is remembered in this browser. Loaded in <head>, before the page paints, so a chosen dark
// theme never flashes light. No inline script: the Content-Security-Policy forbids it.
(function () {
  const root = document.documentElement;
  const order = ["auto", "dark", "light"];
  let chosen = "auto";
  try { chosen = localStorage.getItem("theme") || "auto"; } catch (e) { /* storage off: follow the system */ }
  if (order.indexOf(chosen) < 0) chosen = "auto";
  function apply() {
    if (chosen === "auto") delete root.dataset.theme; else root.dataset.theme = chosen;
  }
  apply();
  document.addEventListener("DOMContentLoaded", function () {
    const button = document.getElementById("theme");
    if (!button) return;
    function label() { button.textContent = "Theme: " + chosen; }
    label();
    button.hidden = false;
    button.addEventListener("click", function () {
      chosen = order[(order.indexOf(chosen) + 1) % order.length];
      try { localStorage.setItem("theme", chosen); } catch (e) { /* remembered for this page only */ }
      apply();
      label();
    });
  });
})();
