// The console works without script; this adds the copy button and takes the keyboard to the
// first field a server answer marked in error.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var field = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById("copy-status");
    field.select();
    var done = function () { if (status) status.textContent = "Copied."; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () {
        if (status) status.textContent = "Select the key and copy it.";
      });
    } else {
      document.execCommand("copy");
      done();
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var errors = document.querySelectorAll("form .field-error");
    for (var i = 0; i < errors.length; i++) {
      if (!errors[i].textContent.trim()) continue;
      var input = document.querySelector("[aria-describedby~='" + errors[i].id + "']");
      if (input) { input.focus(); return; }
    }
  });
})();
