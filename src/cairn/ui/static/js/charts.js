// Metric charts drawn by uPlot (vendored, global `uPlot`): x axis by step, wall time or time
// relative to the run's start; exponential smoothing; linear or log y scale. The data arrives
// already down-sampled by the server (at most a few thousand points per series).

import { h } from './dom.js';
import { fmtNumber } from './format.js';

export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];

export const X_MODES = [
  ['step', 'Step'],
  ['wall', 'Wall time'],
  ['relative', 'Relative time (s)'],
];

export function defaultChartState() {
  return { x: 'step', smoothing: 0, log: false };
}

// The controls shared by every chart of a page; onChange(state) after each edit.
export function chartControls(state, onChangeNow) {
  let pending = false;
  const onChange = () => {
    // a dragged slider fires many events: redraw once per frame
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; onChangeNow(state); });
  };
  const xSelect = h('select', { 'aria-label': 'x axis', class: 'x-axis', onchange: () => { state.x = xSelect.value; onChange(state); } },
    X_MODES.map(([value, label]) => h('option', { value }, label)));
  xSelect.value = state.x;
  const shown = h('output', null, state.smoothing.toFixed(2));
  const slider = h('input', {
    type: 'range', min: '0', max: '0.99', step: '0.01', value: String(state.smoothing), 'aria-label': 'smoothing', class: 'smoothing',
    oninput: () => { state.smoothing = Number(slider.value); shown.textContent = state.smoothing.toFixed(2); onChange(state); },
  });
  const log = h('input', { type: 'checkbox', class: 'log-scale', checked: state.log, onchange: () => { state.log = log.checked; onChange(state); } });
  return h('div', { class: 'chart-controls' },
    h('label', null, 'X axis ', xSelect),
    h('label', null, 'Smoothing ', slider, ' ', shown),
    h('label', null, log, ' Log scale'));
}

// TensorBoard's debiased exponential moving average; gaps (null) stay gaps.
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = 0;
  let count = 0;
  for (let i = 0; i < values.length; i += 1) {
    const y = values[i];
    if (y == null || !Number.isFinite(y)) {
      out[i] = null;
      continue;
    }
    last = last * weight + (1 - weight) * y;
    count += 1;
    out[i] = last / (1 - weight ** count);
  }
  return out;
}

// [xs, ys] of one series for an x mode, sorted by x. series = {steps, timestamps, values}.
export function seriesXY(series, mode, startTime) {
  const n = series.values.length;
  const xs = new Array(n);
  for (let i = 0; i < n; i += 1) {
    if (mode === 'step') xs[i] = series.steps[i];
    else if (mode === 'wall') xs[i] = series.timestamps[i] / 1000;
    else xs[i] = (series.timestamps[i] - startTime) / 1000;
  }
  const order = [...xs.keys()];
  let sorted = true;
  for (let i = 1; i < n; i += 1) if (xs[i] < xs[i - 1]) { sorted = false; break; }
  if (!sorted) order.sort((a, b) => xs[a] - xs[b] || a - b);
  return [order.map((i) => xs[i]), order.map((i) => series.values[i])];
}

function dedupe(xs, ys) {
  // uPlot.join needs strictly increasing x within each table: keep the last y of a repeated x.
  const outX = [];
  const outY = [];
  for (let i = 0; i < xs.length; i += 1) {
    if (outX.length && outX[outX.length - 1] === xs[i]) outY[outY.length - 1] = ys[i];
    else { outX.push(xs[i]); outY.push(ys[i]); }
  }
  return [outX, outY];
}

function withAlpha(hex, alpha) {
  const a = Math.round(alpha * 255).toString(16).padStart(2, '0');
  return `${hex}${a}`;
}

// lines: [{label, color, series: {steps, timestamps, values}, startTime}]
export function lineChart(container, { title, lines, state, height = 240 }) {
  const tables = [];
  const opts = {
    title,
    width: Math.max(320, container.clientWidth || 600),
    height,
    scales: {
      x: { time: state.x === 'wall' },
      y: state.log ? { distr: 3, log: 10 } : {},
    },
    axes: [
      { label: state.x === 'step' ? 'step' : state.x === 'wall' ? '' : 'seconds since start' },
      { values: (u, ticks) => ticks.map((v) => fmtNumber(v)), size: 64 },
    ],
    series: [{ label: state.x === 'step' ? 'step' : 'time' }],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
  };
  for (const line of lines) {
    let [xs, ys] = seriesXY(line.series, state.x, line.startTime);
    [xs, ys] = dedupe(xs, ys);
    if (state.log) ys = ys.map((y) => (y != null && y > 0 ? y : null));
    if (state.smoothing > 0) {
      tables.push([xs, ys]);
      opts.series.push({ label: `${line.label} (raw)`, stroke: withAlpha(line.color, 0.25), width: 1, spanGaps: true, points: { show: false } });
      tables.push([xs, smooth(ys, state.smoothing)]);
      opts.series.push({ label: line.label, stroke: line.color, width: 2, spanGaps: true, points: { show: false } });
    } else {
      tables.push([xs, ys]);
      opts.series.push({ label: line.label, stroke: line.color, width: 1.5, spanGaps: true, points: { show: false } });
    }
  }
  const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
  const plot = new uPlot(opts, data, container);
  const resize = () => plot.setSize({ width: Math.max(320, container.clientWidth || 600), height });
  window.addEventListener('resize', resize);
  return {
    plot,
    destroy() {
      window.removeEventListener('resize', resize);
      plot.destroy();
    },
  };
}

// A note under a chart: how many points were stored and how many were drawn.
export function pointsNote(seriesList) {
  const parts = seriesList.map(({ label, series }) => (series.downsampled
    ? `${label}: ${series.values.length.toLocaleString('en-US')} of ${series.total.toLocaleString('en-US')} points (min/max per bucket)`
    : `${label}: ${series.values.length.toLocaleString('en-US')} points`));
  return h('p', { class: 'muted points-note' }, parts.join(' · '));
}
