// A small SVG chart (no chart library): series of numbers over time, as lines or bars, with
// a y axis scale, time labels, and a text alternative for screen readers.

const NS = 'http://www.w3.org/2000/svg';

/** One series: its name, values (one per x), the CSS class that colours it, and how drawn. */
export interface Series {
  name: string;
  values: number[];
  cls: string;
  kind: 'line' | 'bar';
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, text?: string): SVGElementTagNameMap[K] {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const W = 640;
const H = 200;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function axes(root: SVGSVGElement, max: number, labels: string[]): void {
  const plotH = H - PAD.top - PAD.bottom;
  for (const f of [0, 0.5, 1]) {
    const y = PAD.top + plotH * (1 - f);
    root.appendChild(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid-line' }));
    root.appendChild(svg('text', { x: PAD.left - 6, y: y + 4, class: 'axis-label', 'text-anchor': 'end' }, formatNumber(max * f)));
  }
  const n = labels.length;
  if (n === 0) return;
  const ticks: [number, string][] = [[0, 'start'], [Math.floor((n - 1) / 2), 'middle'], [n - 1, 'end']];
  for (const [i, anchor] of ticks) {
    const x = PAD.left + ((W - PAD.left - PAD.right) * (i + 0.5)) / n;
    root.appendChild(svg('text', { x, y: H - 8, class: 'axis-label', 'text-anchor': anchor }, labels[i]));
  }
}

/** The smallest of 1, 2, 5 times a power of ten at or above `v` (and at least 1). */
function niceCeiling(v: number): number {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v)!;
}

function formatNumber(v: number): string {
  return v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
}

function draw(root: SVGSVGElement, s: Series, max: number, n: number, slot: number, slots: number): void {
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const step = plotW / Math.max(n, 1);
  const y = (v: number) => PAD.top + plotH * (1 - v / max);
  if (s.kind === 'bar') {
    const bw = Math.max(1, (step * 0.8) / slots);
    s.values.forEach((v, i) => {
      if (v <= 0) return;
      root.appendChild(svg('rect', { x: PAD.left + i * step + step * 0.1 + slot * bw, y: y(v), width: bw, height: PAD.top + plotH - y(v), class: s.cls }));
    });
    return;
  }
  const points = s.values.map((v, i) => `${(PAD.left + (i + 0.5) * step).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  root.appendChild(svg('polyline', { points, class: `${s.cls} line` }));
}

/** An SVG chart of `series` over the x `labels`, with a title and a legend. */
export function chart(title: string, labels: string[], series: Series[], unit: string): HTMLElement {
  const max = niceCeiling(Math.max(...series.flatMap((s) => s.values), 0));
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img' });
  const totals = series.map((s) => `${s.name}: max ${formatNumber(Math.max(0, ...s.values))}${unit}`).join('; ');
  root.setAttribute('aria-label', `${title}. ${totals}`);
  root.appendChild(svg('title', {}, title));
  axes(root, max, labels);
  const bars = series.filter((s) => s.kind === 'bar');
  series.forEach((s) => draw(root, s, max, labels.length, bars.indexOf(s), bars.length));
  const figure = document.createElement('figure');
  figure.className = 'chart-figure';
  const caption = document.createElement('figcaption');
  caption.textContent = title;
  const legend = document.createElement('ul');
  legend.className = 'legend';
  for (const s of series) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = `swatch ${s.cls}`;
    li.append(swatch, `${s.name}`);
    legend.appendChild(li);
  }
  figure.append(caption, root, legend);
  return figure;
}
