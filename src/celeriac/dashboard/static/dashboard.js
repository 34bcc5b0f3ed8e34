// Live updates: the page's #live part is fetched again every few seconds (the server renders
// only that block when asked with X-Live) and swapped in when it changed. No reload, no build.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var every = Math.max(250, parseFloat(live.dataset.refresh || "1") * 1000);
  var last = null;
  function tick() {
    fetch(window.location.href, {
      headers: { "X-Live": "1" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null && html !== last) {
          last = html;
          live.innerHTML = html;
        }
        live.dataset.updated = String(Date.now());
      })
      .catch(function () { /* the dashboard restarts: try again next tick */ })
      .finally(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
