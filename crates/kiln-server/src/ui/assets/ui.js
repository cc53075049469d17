// kiln's web UI: the live parts only. Every page works without this file;
// it keeps pages current and makes the log searchable. HTML it inserts was
// rendered and escaped by the server; anything it builds itself uses
// textContent.
"use strict";

(function () {
  // The build's state on a build page (none on the list).
  function stateOf(el) {
    var s = el.querySelector("#build-state");
    return s ? s.dataset.state : "";
  }

  // Pages with live state: re-fetch the fragment when the server says
  // something this user may see has changed.
  function live(el) {
    var src = new EventSource(el.dataset.live);
    var busy = false, again = false;
    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(el.dataset.fragment, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) {
            // Keyboard users keep their place: the focused link (by id or
            // href) is focused again in the new fragment.
            var a = document.activeElement;
            var id = a && el.contains(a) ? a.id : "";
            var href = a && el.contains(a) ? a.getAttribute("href") : null;
            var before = stateOf(el);
            el.innerHTML = html;
            var f = id ? document.getElementById(id)
              : href ? el.querySelector('[href="' + CSS.escape(href) + '"]') : null;
            if (f) { f.focus(); }
            // Screen readers hear what changed, not the whole region again.
            var after = stateOf(el);
            var status = document.getElementById("live-status");
            if (status && after && after !== before) { status.textContent = "Build " + after + "."; }
            else if (status && !after) { status.textContent = "The list of builds was updated."; }
          }
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }
    src.addEventListener("changed", refresh);
  }

  // The log: lines from the stream, each a server-rendered line; the
  // browser's EventSource resumes after a dropped connection by sending
  // Last-Event-ID (the last line it got), so no line is lost or repeated.
  function logView(log) {
    var status = document.getElementById("log-status");
    var search = document.getElementById("log-search");
    var matches = document.getElementById("log-matches");
    var lastKey = log.dataset.lastKey || "";
    var follow = true;

    function atBottom() {
      return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    }
    window.addEventListener("scroll", function () { follow = atBottom(); });

    function filter() {
      var q = search.value.toLowerCase();
      var lines = log.querySelectorAll(".line");
      var n = 0;
      for (var i = 0; i < lines.length; i++) {
        var hit = !q || lines[i].textContent.toLowerCase().indexOf(q) !== -1;
        lines[i].hidden = !hit;
        if (hit && q) { n++; }
      }
      var markers = log.querySelectorAll(".marker");
      for (var j = 0; j < markers.length; j++) { markers[j].hidden = !!q; }
      matches.textContent = q ? n + " matching line" + (n === 1 ? "" : "s") : "";
    }
    search.addEventListener("input", filter);

    if (location.hash) {
      var target = document.getElementById(location.hash.slice(1));
      if (target) { target.scrollIntoView(); follow = false; }
    }
    if (!log.dataset.stream) { return; }

    var src = new EventSource(log.dataset.stream);
    src.addEventListener("line", function (e) {
      var d = JSON.parse(e.data);
      if (document.getElementById("L" + e.lastEventId)) { return; }
      if (d.key !== lastKey) {
        log.insertAdjacentHTML("beforeend", d.marker);
        if (!document.getElementById(d.anchor)) { log.lastElementChild.id = d.anchor; }
        lastKey = d.key;
      }
      log.insertAdjacentHTML("beforeend", d.line);
      if (search.value) { filter(); }
      if (follow) { log.lastElementChild.scrollIntoView({ block: "end" }); }
    });
    src.addEventListener("end", function (e) {
      src.close();
      var d = JSON.parse(e.data);
      status.textContent = "Build " + d.state + ".";
      status.dataset.state = d.state;
    });
    src.addEventListener("error", function () {
      if (src.readyState === EventSource.CONNECTING) { status.textContent = "Reconnecting…"; }
    });
    src.addEventListener("open", function () {
      if (status.dataset.state && status.textContent === "Reconnecting…") { status.textContent = "Live."; }
    });
  }

  function copyButtons() {
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (e) {
        var b = e.currentTarget;
        var text = document.getElementById(b.dataset.copy).textContent;
        var done = function () { b.firstChild.textContent = "Copied"; };
        if (navigator.clipboard) {
          navigator.clipboard.writeText(text).then(done, function () {});
        } else {
          var r = document.createRange();
          r.selectNodeContents(document.getElementById(b.dataset.copy));
          var s = window.getSelection();
          s.removeAllRanges();
          s.addRange(r);
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var l = document.getElementById("live");
    if (l && l.dataset.live) { live(l); }
    var log = document.getElementById("log");
    if (log) { logView(log); }
    copyButtons();
  });
})();
