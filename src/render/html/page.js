// The refresh control of hogwatch's page. It holds no data from the report: it fetches this page
// again and moves the new <main> in, keeping the opened rows open. The control is hidden until
// this script shows it, so a page whose script cannot run (no JavaScript, or a
// Content-Security-Policy that does not match this file) offers no control that does nothing.
(function () {
  "use strict";
  var controls = document.getElementById("hw-controls");
  var box = document.getElementById("hw-refresh");
  var status = document.getElementById("hw-status");
  var timer = null;
  var inFlight = false;
  box.checked = false;
  function refresh() {
    if (inFlight || document.hidden) return;
    inFlight = true;
    fetch(location.pathname + "?format=html", {
      headers: { Accept: "text/html" },
      cache: "no-store",
      credentials: "same-origin"
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (text) {
      var page = new DOMParser().parseFromString(text, "text/html");
      var fresh = page.getElementById("hw-main");
      var main = document.getElementById("hw-main");
      if (!fresh || !main) throw new Error("not a hogwatch page");
      var open = new Set();
      main.querySelectorAll("details[open]").forEach(function (row) {
        open.add(row.getAttribute("data-key"));
      });
      var scroller = main.querySelector(".scroll");
      var left = scroller ? scroller.scrollLeft : 0;
      main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
      main.querySelectorAll("details").forEach(function (row) {
        if (open.has(row.getAttribute("data-key"))) row.open = true;
      });
      scroller = main.querySelector(".scroll");
      if (scroller) scroller.scrollLeft = left;
      document.title = page.title;
      status.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (error) {
      status.textContent = "refresh failed: " + error.message;
    }).then(function () {
      inFlight = false;
    });
  }
  box.addEventListener("change", function () {
    clearInterval(timer);
    timer = null;
    if (box.checked) {
      refresh();
      timer = setInterval(refresh, 2000);
    } else {
      status.textContent = "";
    }
  });
  controls.hidden = false;
})();
