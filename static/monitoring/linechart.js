/* A tiny dependency-free SVG line chart, so the dashboard works with no internet.
   lineChart(element, times (epoch seconds), [{name, values, color}], {unit}) draws into element. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmtTime(t, span) {
    var d = new Date(t * 1000);
    var hm = ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
    if (span < 600) hm += ":" + ("0" + d.getSeconds()).slice(-2);
    return span > 2 * 86400 ? (d.getMonth() + 1) + "/" + d.getDate() + " " + hm : hm;
  }

  function fmtValue(v) {
    if (Math.abs(v) >= 1000) return Math.round(v).toString();
    return (Math.round(v * 10) / 10).toString();
  }

  function lineChart(container, times, series, opts) {
    opts = opts || {};
    container.innerHTML = "";
    var values = [];
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v !== undefined) values.push(v); }); });
    if (!times.length || !values.length) {
      var empty = document.createElement("div");
      empty.className = "lc-empty";
      empty.textContent = "No data in this range";
      container.appendChild(empty);
      return;
    }
    var W = container.clientWidth || 460, H = (container.clientHeight || 220) - 20;
    var m = {l: 48, r: 10, t: 8, b: 22};
    var t0 = times[0], t1 = times[times.length - 1];
    if (t1 === t0) { t0 -= 30; t1 += 30; }
    var lo = Math.min(0, Math.min.apply(null, values)), hi = Math.max.apply(null, values);
    if (opts.max !== undefined) hi = Math.max(hi, opts.max);
    if (hi === lo) hi = lo + 1;
    hi += (hi - lo) * 0.05;
    var x = function (t) { return m.l + (t - t0) / (t1 - t0) * (W - m.l - m.r); };
    var y = function (v) { return m.t + (1 - (v - lo) / (hi - lo)) * (H - m.t - m.b); };
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "lc-svg", role: "img"}, container);
    for (var i = 0; i <= 4; i++) {
      var v = lo + (hi - lo) * i / 4, yy = y(v);
      el("line", {x1: m.l, x2: W - m.r, y1: yy, y2: yy, stroke: "#ddd", "stroke-width": 1}, svg);
      el("text", {x: m.l - 4, y: yy + 4, "text-anchor": "end", "font-size": 10, fill: "#666"}, svg).textContent = fmtValue(v);
    }
    for (var j = 0; j <= 4; j++) {
      var tt = t0 + (t1 - t0) * j / 4;
      el("text", {x: x(tt), y: H - 6, "text-anchor": j === 0 ? "start" : j === 4 ? "end" : "middle", "font-size": 10, fill: "#666"}, svg)
        .textContent = fmtTime(tt, t1 - t0);
    }
    var legend = document.createElement("div");
    legend.className = "lc-legend";
    series.forEach(function (s, n) {
      var color = s.color || COLORS[n % COLORS.length], d = "", pen = false;
      s.values.forEach(function (v, k) {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? "L" : "M") + x(times[k]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = true;
      });
      if (d) el("path", {d: d, fill: "none", stroke: color, "stroke-width": 1.6, "class": "lc-line", "data-series": s.name}, svg);
      s.values.forEach(function (v, k) {
        if (v === null || v === undefined) return;
        var dot = el("circle", {cx: x(times[k]), cy: y(v), r: s.values.length > 120 ? 0 : 2, fill: color}, svg);
        el("title", {}, dot).textContent = s.name + " " + fmtValue(v) + (opts.unit || "") + " @ " + new Date(times[k] * 1000).toLocaleString();
      });
      var item = document.createElement("span");
      item.style.setProperty("--lc-color", color);
      item.textContent = s.name;
      legend.appendChild(item);
    });
    container.appendChild(legend);
  }

  window.lineChart = lineChart;
})();
