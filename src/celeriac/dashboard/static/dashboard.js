// Live updates: the page's #live part is fetched again every few seconds (the server renders
// only that block when asked with X-Live) and merged in where it changed. No reload, no build.
//
// Merged, not swapped: replacing the whole block (innerHTML) remade every row and button each
// time, even when nothing had changed, so a click landing during an update hit an element that
// was gone. Unchanged nodes are kept; a row keyed by data-letter / data-task / data-worker /
// data-queue / data-entry / id is matched by its key (kept, moved, inserted or removed), never
// rewritten into another row, so a kept button always belongs to the row it was drawn in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var every = Math.max(250, parseFloat(live.dataset.refresh || "1") * 1000);
  // the first a node has is its key (a task can be dead-lettered twice: data-letter first)
  var KEYS = ["data-letter", "data-task", "data-worker", "data-queue", "data-entry", "id"];

  function key(node) {
    if (node.nodeType !== 1) return null;
    for (var i = 0; i < KEYS.length; i++) {
      var value = node.getAttribute(KEYS[i]);
      if (value !== null) return KEYS[i] + "=" + value;
    }
    return null;
  }

  function sameKind(a, b) {
    return a.nodeType === b.nodeType && a.nodeName === b.nodeName && key(a) === key(b);
  }

  function syncAttributes(into, from) {
    var i;
    for (i = into.attributes.length - 1; i >= 0; i--) {
      var name = into.attributes[i].name;
      if (!from.hasAttribute(name)) into.removeAttribute(name);
    }
    for (i = 0; i < from.attributes.length; i++) {
      var attr = from.attributes[i];
      if (into.getAttribute(attr.name) !== attr.value) into.setAttribute(attr.name, attr.value);
    }
  }

  // The first of node and its later siblings that sameKind(_, like), or null.
  function find(node, like) {
    for (; node; node = node.nextSibling) if (sameKind(node, like)) return node;
    return null;
  }

  // Make into's children look like from's, keeping each node that is already right.
  function merge(into, from) {
    var old = into.firstChild;
    var next = from.firstChild;
    while (next) {
      var after = next.nextSibling;
      var match = old && (sameKind(old, next) ? old : key(next) !== null ? find(old, next) : null);
      if (match) {
        if (match !== old) into.insertBefore(match, old);
        else old = old.nextSibling;
        if (match.nodeType === 1) {
          syncAttributes(match, next);
          merge(match, next);
        } else if (match.nodeValue !== next.nodeValue) {
          match.nodeValue = next.nodeValue;
        }
      } else if (old && key(next) === null && key(old) === null) {
        var gone = old;
        old = old.nextSibling;
        into.replaceChild(next, gone);
      } else {
        // new here (or at the end): old is kept, for a later match or removal at the end
        into.insertBefore(next, old);
      }
      next = after;
    }
    while (old) {
      var extra = old;
      old = old.nextSibling;
      into.removeChild(extra);
    }
  }

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
          var parsed = document.createElement("template");
          parsed.innerHTML = html;
          merge(live, parsed.content);
        }
        live.dataset.updated = String(Date.now());
      })
      .catch(function () { /* the dashboard restarts: try again next tick */ })
      .finally(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
