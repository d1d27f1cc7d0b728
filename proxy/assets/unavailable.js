(function () {
  "use strict";
  var n = parseInt(document.getElementById("app").getAttribute("data-retry"), 10);
  if (!(n >= 1)) n = 5;
  if (n > 3600) n = 3600;
  var total = n, left = n, fill = document.getElementById("fill"), num = document.getElementById("n");
  function go() { document.getElementById("live").textContent = "Trying again now…"; location.reload(); }
  function show() {
    num.textContent = left < 60 ? left + " s" : Math.floor(left / 60) + " min " + (left % 60) + " s";
    fill.style.width = (100 * left / total) + "%";
  }
  document.getElementById("again").addEventListener("click", function (e) { e.preventDefault(); go(); });
  document.getElementById("cd").hidden = false;
  document.getElementById("live").textContent = "Trying again automatically in " + n + " seconds.";
  show();
  var t = setInterval(function () {
    left--;
    if (left <= 0) { clearInterval(t); left = 0; show(); go(); return; }
    show();
  }, 1000);
})();
