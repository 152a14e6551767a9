// Live updates without reloading: every element with data-live is replaced, every two
// seconds, by the fragment its URL renders (server-side, escaped). The console's only script.
"use strict";
(function () {
  function refresh() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      fetch(el.dataset.live, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var box = document.createElement("div");
          box.innerHTML = html;
          var fresh = box.firstElementChild;
          if (fresh) el.replaceWith(fresh);
        })
        .catch(function () {});
    });
  }
  setInterval(refresh, 2000);
})();
