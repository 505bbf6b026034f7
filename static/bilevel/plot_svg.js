// Small helpers shared by the plain-SVG plots above the iteration tables (parcoords.js, slices.js).
"use strict";

window.bilevelSvg = (function () {
  const SVG = "http://www.w3.org/2000/svg";

  function node(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (key) { el.setAttribute(key, attrs[key]); });
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // An axis label: exponent notation for the very large and very small, else up to 4 decimals.
  function fmt(v) { return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(2) : String(+v.toFixed(4)); }

  // A tick label, shorter: 524288 -> 524k, 0.0004 -> 4e-4, 2.6512 -> 2.651.
  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toPrecision(3) + "G";
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
    if (v !== 0 && a < 0.01) return (+v.toPrecision(2)).toExponential().replace("e-", "e\u2212");
    return String(+v.toPrecision(4));
  }

  // Round numbers between low and high, about `count` of them (1, 2 or 5 times a power of ten apart).
  function ticks(low, high, count) {
    const span = high - low;
    if (!(span > 0)) return [low];
    const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    const step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
    const out = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  return { node: node, fmt: fmt, short: short, ticks: ticks };
})();
