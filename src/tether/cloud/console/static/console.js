/* tether console: progressive enhancement only. Every page works without this script.
 *
 * - live regions: a page whose <main> has data-live-url polls it every few seconds (while
 *   visible) and swaps each [data-region] with the server-rendered HTML it returns;
 *   a region with data-live-every="N" is refreshed on every Nth poll only; a details[data-keep]
 *   opened by the reader stays open, and a focused link keeps the focus;
 * - filters: an input with data-filter="ID" hides rows of #ID whose data-search (or text)
 *   lacks every word typed; a select with data-filter-status="ID" keeps rows of one state;
 *   when every row is hidden the target says so, and [data-filter-count="ID"] tells how many show;
 * - a table's sort links (a[data-sort-link]) keep the filters typed since the page came;
 * - forms with data-confirm ask first; buttons with data-copy copy a field;
 * - "/" focuses the page's filter box (the field with aria-keyshortcuts="/").
 */
(function () {
  "use strict";

  var POLL_MS = 3000;
  document.documentElement.classList.add("js");

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  /* --- filters --- */

  function applyFilters() {
    $all("[data-filter]").forEach(function (input) {
      var target = document.getElementById(input.getAttribute("data-filter"));
      if (!target) { return; }
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      var statusSelect = $('[data-filter-status="' + target.id + '"]');
      var status = statusSelect ? statusSelect.value : "";
      $all("tr[data-search]", target).forEach(function (row) {
        var text = row.getAttribute("data-search") || row.textContent.toLowerCase();
        var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
        if (ok && status) { ok = row.getAttribute("data-status") === status; }
        row.hidden = !ok;
      });
      $all("[data-filter-group]", target).forEach(function (group) {
        var rows = $all("tr[data-search]", group);
        group.hidden = rows.length > 0 && rows.every(function (r) { return r.hidden; });
      });
      var rows = $all("tr[data-search]", target);
      var shown = rows.filter(function (r) { return !r.hidden; }).length;
      filterOutcome(target, rows.length > 0 && shown === 0);
      var count = $('[data-filter-count="' + target.id + '"]');
      if (count) {
        count.textContent = words.length || status ? shown + " of " + rows.length + " shown" : "";
      }
    });
  }

  /* Say so when a filter hides every row (an empty table reads as "no data"). */
  function filterOutcome(target, none) {
    var note = $("[data-filter-empty]", target);
    if (!none) { if (note) { note.remove(); } return; }
    if (note) { return; }
    if (target.tagName === "TBODY") {
      var head = target.parentNode.querySelector("thead tr");
      note = document.createElement("tr");
      note.className = "empty-row";
      var cell = document.createElement("td");
      cell.colSpan = head ? head.children.length : 1;
      cell.textContent = "Nothing matches this filter.";
      note.appendChild(cell);
    } else {
      note = document.createElement("p");
      note.className = "empty";
      note.textContent = "Nothing matches this filter.";
    }
    note.setAttribute("data-filter-empty", "");
    target.appendChild(note);
  }

  /* Keep a filter in the page's address (a reload or a live refresh keeps it) and in the
   * sort links of its table's headers (sorting keeps it). */
  function remember(input) {
    if (!input.name || !window.history.replaceState) { return; }
    var keep = function (url) {
      if (input.value) { url.searchParams.set(input.name, input.value); } else { url.searchParams.delete(input.name); }
      return url;
    };
    window.history.replaceState(null, "", keep(new URL(window.location.href)).toString());
    $all("a[data-sort-link]").forEach(function (a) {
      var url = keep(new URL(a.getAttribute("href"), window.location.href));
      a.setAttribute("href", url.pathname + url.search);
    });
  }

  $all("[data-filter], [data-filter-status]").forEach(function (el) {
    el.addEventListener("input", function () { applyFilters(); remember(el); });
    el.addEventListener("change", function () { applyFilters(); remember(el); });
  });
  /* A search form of rows already on the page filters them here; one without (the audit
   * log's, which searches the whole log) is sent to the server. */
  $all("form[role=search]").forEach(function (form) {
    if (!$("[data-filter]", form)) { return; }
    form.addEventListener("submit", function (ev) { ev.preventDefault(); applyFilters(); });
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.key !== "/" || ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    var tag = (document.activeElement && document.activeElement.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
    var box = $('[aria-keyshortcuts="/"]') || $("[data-filter]");
    if (box) { ev.preventDefault(); box.focus(); box.select(); }
  });

  /* --- confirmations, copying --- */

  $all("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });

  $all("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) { return; }
      field.select();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {});
      }
    });
  });
  $all("[data-select-on-focus]").forEach(function (field) {
    field.addEventListener("focus", function () { field.select(); });
  });

  /* --- live regions --- */

  var main = $("main[data-live-url]");
  if (!main) { applyFilters(); return; }
  var url = main.getAttribute("data-live-url");
  var stamp = $("[data-live-stamp]");
  var banner = document.getElementById("live-banner");
  var tick = 0;
  var timer = null;
  var stopped = false;
  var failures = 0;

  function regionsDue() {
    var names = [];
    $all("[data-region]").forEach(function (el) {
      var every = parseInt(el.getAttribute("data-live-every") || "1", 10);
      if (tick % every === 0) { names.push(el.getAttribute("data-region")); }
    });
    return names;
  }

  function showStamp(ok) {
    if (!stamp) { return; }
    var now = new Date();
    stamp.textContent = ok ? "live · " + now.toLocaleTimeString() : "reconnecting…";
    stamp.classList.toggle("stale", !ok);
  }

  function sessionEnded() {
    stopped = true;
    if (banner) {
      banner.hidden = false;
      banner.textContent = "";
      var text = document.createTextNode("Your session ended. ");
      var link = document.createElement("a");
      link.href = "/console/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
      link.textContent = "Log in again";
      banner.appendChild(text);
      banner.appendChild(link);
    }
    showStamp(false);
  }

  /* Replace a region's HTML, keeping what the reader opened (details[data-keep] stay open)
   * and where the keyboard was (a focused link is focused again by its address). */
  function swap(el, html) {
    var open = $all("details[data-keep][open]", el).map(function (d) { return d.getAttribute("data-keep"); });
    var active = document.activeElement;
    var href = active && active.tagName === "A" && el.contains(active) ? active.getAttribute("href") : null;
    el.innerHTML = html;
    $all("details[data-keep]", el).forEach(function (d) {
      if (open.indexOf(d.getAttribute("data-keep")) !== -1) { d.open = true; }
    });
    if (href !== null) {
      var again = $all("a[href]", el).filter(function (a) { return a.getAttribute("href") === href; })[0];
      if (again) { again.focus({ preventScroll: true }); }
    }
  }

  function poll() {
    timer = null;
    if (stopped || document.hidden) { return; }
    var names = regionsDue();
    var query = new URLSearchParams(window.location.search);
    query.set("regions", names.join(","));
    fetch(url + "?" + query.toString(), {
      headers: { "X-Tether-Live": "1", "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) { sessionEnded(); return null; }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (data) {
      if (!data) { return; }
      failures = 0;
      Object.keys(data.regions || {}).forEach(function (name) {
        var el = $('[data-region="' + name + '"]');
        if (!el) { return; }
        var active = document.activeElement;
        if (active && el.contains(active) && active.tagName !== "A") { return; }  // do not yank a field in use
        if (el.innerHTML !== data.regions[name]) { swap(el, data.regions[name]); }
      });
      applyFilters();
      showStamp(true);
    }).catch(function () {
      failures += 1;
      showStamp(false);
    }).then(function () {
      tick += 1;
      schedule();
    });
  }

  function schedule() {
    if (stopped || timer !== null) { return; }
    var delay = failures ? Math.min(POLL_MS * Math.pow(2, failures), 60000) : POLL_MS;
    timer = window.setTimeout(poll, delay);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null) { schedule(); }
  });

  applyFilters();
  showStamp(true);
  schedule();
})();
