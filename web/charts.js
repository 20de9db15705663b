// Small inline SVG charts, no library. Colours come from CSS (currentColor and classes), so they follow the theme.
import { h, s } from './ui.js';

/**
 * Horizontal bar chart: items [{label, value, title?}]; unit is a word or n => word (for plurals).
 * Each bar is labelled with its value as text, so nothing depends on colour.
 */
export function barChart(items, {title, unit = ''} = {}) {
  const withUnit = (n) => {
    const u = typeof unit === 'function' ? unit(n) : unit;
    return u ? `${n} ${u}` : String(n);
  };
  const rowH = 26;
  const labelW = 150;
  const width = 560;
  const barW = width - labelW - 70;
  const max = Math.max(1, ...items.map((i) => i.value));
  const height = items.length * rowH + 4;
  const summary = items.map((i) => `${i.label}: ${withUnit(i.value)}`).join('; ');
  const svg = s('svg', {class: 'chart bar', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `${title ? title + '. ' : ''}${summary}`, preserveAspectRatio: 'xMinYMin meet'});
  items.forEach((item, n) => {
    const y = n * rowH + 2;
    const w = Math.max(2, Math.round((item.value / max) * barW));
    const label = item.label.length > 22 ? item.label.slice(0, 21) + '…' : item.label;
    svg.append(s('g', {},
      s('title', {}, `${item.title || item.label}: ${withUnit(item.value)}`),
      s('text', {x: labelW - 8, y: y + rowH / 2, 'text-anchor': 'end', 'dominant-baseline': 'middle',
        class: 'label'}, label),
      s('rect', {x: labelW, y: y + 3, width: w, height: rowH - 8, rx: 3, class: `bar c${n % 6}`}),
      s('text', {x: labelW + w + 6, y: y + rowH / 2, 'dominant-baseline': 'middle', class: 'value'},
        withUnit(item.value))));
  });
  return h('figure', {class: 'chart-fig'}, title ? h('figcaption', {}, title) : null, svg);
}

function niceTicks(lo, hi, count = 4) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step / 1e6; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

function timeLabel(ms, span) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  if (span > 2 * 86400e3) return `${d.getMonth() + 1}/${d.getDate()} ${p(d.getHours())}h`;
  return `${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * Line chart of a telemetry series: points [{t: ms, avg, min, max}]; draws the min–max band and the average.
 */
export function lineChart(points, {title, start, end} = {}) {
  const width = 640;
  const height = 220;
  const pad = {l: 52, r: 12, t: 10, b: 26};
  const t0 = start ?? Math.min(...points.map((p) => p.t));
  const t1 = end ?? Math.max(...points.map((p) => p.t));
  const lo = Math.min(...points.map((p) => p.min ?? p.avg));
  const hi = Math.max(...points.map((p) => p.max ?? p.avg));
  const yt = niceTicks(lo, hi);
  const y0 = Math.min(lo, yt[0]);
  const y1 = Math.max(hi, yt[yt.length - 1]);
  const X = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * (width - pad.l - pad.r);
  const Y = (v) => height - pad.b - ((v - y0) / Math.max(1e-9, y1 - y0)) * (height - pad.t - pad.b);
  const svg = s('svg', {class: 'chart line', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `${title || 'Chart'}: ${points.length} points from ${lo.toFixed(2)} to ${hi.toFixed(2)}`});
  for (const v of yt) {
    svg.append(s('line', {x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v), class: 'grid'}),
      s('text', {x: pad.l - 6, y: Y(v), 'text-anchor': 'end', 'dominant-baseline': 'middle', class: 'label'},
        String(+v.toFixed(2))));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    svg.append(s('text', {x: X(t), y: height - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle',
      class: 'label'}, timeLabel(t, t1 - t0)));
  }
  const sorted = [...points].sort((a, b) => a.t - b.t);
  if (sorted.some((p) => p.min !== undefined && p.max !== undefined && p.min !== p.max)) {
    const top = sorted.map((p) => `${X(p.t).toFixed(1)},${Y(p.max ?? p.avg).toFixed(1)}`);
    const bottom = sorted.map((p) => `${X(p.t).toFixed(1)},${Y(p.min ?? p.avg).toFixed(1)}`).reverse();
    svg.append(s('polygon', {points: [...top, ...bottom].join(' '), class: 'band'}));
  }
  const d = sorted.map((p, i) => `${i ? 'L' : 'M'}${X(p.t).toFixed(1)},${Y(p.avg).toFixed(1)}`).join('');
  svg.append(s('path', {d, class: 'avg'}));
  if (sorted.length === 1) svg.append(s('circle', {cx: X(sorted[0].t), cy: Y(sorted[0].avg), r: 3, class: 'dot'}));
  return h('figure', {class: 'chart-fig'}, title ? h('figcaption', {}, title) : null, svg);
}
