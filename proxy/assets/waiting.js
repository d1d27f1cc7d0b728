(function () {
"use strict";
var $ = function (id) { return document.getElementById(id); };
var url = $("app").getAttribute("data-status-url");
var statusEl = $("status"), detailEl = $("detail"), bar = $("bar");
var start = Date.now(), failures = 0, stopped = false, slow = false, timer = 0;
var TEXT = {
  sleeping: "Your workspace is asleep — sending a wake-up call…",
  waking: "Waking up your workspace…",
  starting: "Starting the editor…",
  running: "Almost there — connecting…",
  stopping: "Finishing going to sleep, then waking up…",
  resizing: "Applying new resources, then waking up…",
  backing_up: "Finishing a backup, then waking up…",
  backup_failed: "The last backup didn't finish — waking up anyway…",
  deleting: "This workspace is being deleted…",
  deleted: "This workspace was deleted.",
  failed: "Your workspace couldn't start."
};
function text(el, t) { if (el.textContent !== t) el.textContent = t; }
function tick() {
  var s = Math.floor((Date.now() - start) / 1000);
  text($("elapsed"), s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s");
  if (!slow && !stopped && s >= 90) { slow = true; $("slow").hidden = false; }
}
var clock = setInterval(tick, 1000);
function schedule(ms) { clearTimeout(timer); if (!stopped) timer = setTimeout(poll, ms); }
function retry() {
  failures++;
  text(statusEl, "Still trying…");
  text(detailEl, "");
  schedule(Math.min(5000, 500 * Math.pow(2, failures)));
}
function finish() {
  stopped = true;
  clearTimeout(timer);
  clearInterval(clock);
  $("badge").className = "badge";
  $("slow").hidden = true;
}
function handle(d) {
  if (!d || typeof d !== "object") return retry();
  failures = 0;
  var st = String(d.state || ""), msg = typeof d.message === "string" ? d.message : "";
  if (d.ready === true) {
    finish();
    bar.className = "bar done";
    text(statusEl, "Ready — opening…");
    text(detailEl, "");
    document.title = "Ready · wakeway";
    setTimeout(function () { location.reload(); }, 120);
    return;
  }
  if (st === "deleted" || st === "failed") {
    finish();
    document.body.className = "t-gone";
    text($("h"), st === "deleted" ? "This workspace was deleted" : "Couldn't wake your workspace");
    ["bar", "status", "detail", "meta", "foot"].forEach(function (id) { $(id).hidden = true; });
    $("fail").hidden = false;
    text($("failmsg"), msg || TEXT[st]);
    return;
  }
  text(statusEl, TEXT[st] || msg || "Working on it…");
  text(detailEl, TEXT[st] && msg !== TEXT[st] ? msg : "");
  schedule(500);
}
function poll() {
  var opts = { cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" } };
  if (window.AbortSignal && AbortSignal.timeout) opts.signal = AbortSignal.timeout(8000);
  fetch(url, opts)
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(handle)
    .catch(function () { if (!stopped) retry(); });
}
document.addEventListener("click", function (e) {
  if (e.target.closest && e.target.closest("[data-reload]")) location.reload();
});
poll();
})();
