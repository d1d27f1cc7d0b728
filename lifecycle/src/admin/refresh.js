(function () {
  // Live refresh of the sessions table; the page works without it (reload, or the filter form).
  var rows = document.getElementById('rows');
  if (!rows || !window.fetch) return;
  var url = '/admin/sessions.json' + location.search;
  setInterval(function () {
    if (document.hidden || rows.contains(document.activeElement)) return;
    fetch(url, { credentials: 'same-origin', headers: { accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) { if (j && typeof j.rows === 'string') rows.innerHTML = j.rows; })
      .catch(function () {});
  }, 5000);
})();
