// Progressive enhancement only: every page works without this file.
// Shows times in the reader's own time zone and language instead of UTC.
(function () {
  "use strict";
  var lang = document.documentElement.lang || "en";
  var format;
  try {
    format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  } catch (e) {
    return;
  }
  // Words such as "5 minutes ago" (data-relative) are right in every zone: only
  // their title, the date, is localized.
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var when = new Date(times[i].getAttribute("datetime"));
    if (isNaN(when.getTime())) continue;
    if (times[i].hasAttribute("data-relative")) {
      times[i].title = format.format(when);
    } else {
      times[i].title = times[i].textContent;
      times[i].textContent = format.format(when);
    }
  }
  // A double click on a submit button would post the form twice; the server
  // copes, but the second click should not look like it did something.
  var forms = document.querySelectorAll("form");
  for (var j = 0; j < forms.length; j++) {
    forms[j].addEventListener("submit", function (event) {
      var form = event.currentTarget;
      if (form.dataset.sent) { event.preventDefault(); return; }
      form.dataset.sent = "1";
    });
  }
})();
// Coming back with the Back button restores the page from cache: allow sending again.
window.addEventListener("pageshow", function () {
  var forms = document.querySelectorAll("form[data-sent]");
  for (var k = 0; k < forms.length; k++) { delete forms[k].dataset.sent; }
});
