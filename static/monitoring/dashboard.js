/* Fetches snapshot series for the chosen range and draws the dashboard charts. */
(function () {
  "use strict";
  var root = document.getElementById("monitoring-dashboard");
  var status = document.getElementById("status");
  var range = document.getElementById("range");

  function draw(data) {
    var s = data.series, t = s.t;
    lineChart(document.getElementById("chart-ttfa"), t,
      [{name: "TTFA p50", values: s.ttfa_p50_ms}, {name: "TTFA p95", values: s.ttfa_p95_ms}], {unit: " ms"});
    lineChart(document.getElementById("chart-stages"), t, Object.keys(s.stages_p95).map(function (k) {
      return {name: k.replace(/_ms$/, ""), values: s.stages_p95[k]};
    }), {unit: " ms"});
    lineChart(document.getElementById("chart-devices"), t, [{name: "connected", values: s.connected_devices}]);
    lineChart(document.getElementById("chart-system"), t,
      [{name: "CPU", values: s.cpu_percent}, {name: "memory", values: s.memory_percent}], {unit: " %", max: 100});
    lineChart(document.getElementById("chart-queues"), t, Object.keys(s.queues).map(function (k) {
      return {name: k, values: s.queues[k]};
    }));
    lineChart(document.getElementById("chart-errors"), t, [{name: "error rate", values: s.error_rate}], {unit: " %"});
    status.textContent = data.snapshots + " snapshots, " + new Date(data.start).toLocaleString() + " – " + new Date(data.end).toLocaleString();
    root.setAttribute("data-loaded", String(data.snapshots));
  }

  function load() {
    status.textContent = "Loading…";
    var start = document.getElementById("range-start").value, end = document.getElementById("range-end").value;
    var query = "?hours=" + encodeURIComponent(range.value);
    if (start) {  // a custom range, in the browser's time zone, sent as UTC
      query = "?start=" + encodeURIComponent(new Date(start).toISOString()) +
        (end ? "&end=" + encodeURIComponent(new Date(end).toISOString()) : "");
    }
    fetch(root.dataset.url + query, {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(draw)
      .catch(function (e) { status.textContent = "Could not load: " + e.message; });
  }

  document.getElementById("range-form").addEventListener("submit", function (e) { e.preventDefault(); load(); });
  range.addEventListener("change", load);
  load();
  setInterval(load, 60000);
})();
