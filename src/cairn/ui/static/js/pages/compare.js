// Compare runs: overlaid metric charts (uPlot), a param/metric diff table and parallel
// coordinates (ECharts, loaded on this page only).

import { enc, get } from '../api.js';
import { chartControls, defaultChartState, lineChart, PALETTE, pointsNote } from '../charts.js';
import { clear, errorBox, h, replace } from '../dom.js';
import { fmtNumber } from '../format.js';

const MAX_AXES = 16;
let echartsPromise = null;

// ECharts is 1 MB: load it when a compare page first needs it (same origin, allowed by the CSP).
export function loadECharts() {
  if (window.echarts) return Promise.resolve(window.echarts);
  if (!echartsPromise) {
    echartsPromise = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/static/vendor/echarts.min.js';
      script.onload = () => resolve(window.echarts);
      script.onerror = () => { echartsPromise = null; reject(new Error('could not load the chart library')); };
      document.head.append(script);
    });
  }
  return echartsPromise;
}

function numeric(values) {
  return values.every((v) => v == null || (typeof v === 'number') || (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))));
}

// Axes for the parallel-coordinates chart: params that differ first, then metrics.
export function parallelDimensions(result) {
  const pick = (rows) => {
    const differing = rows.filter((row) => row.differs);
    return (differing.length ? differing : rows).slice(0, MAX_AXES / 2);
  };
  const dims = [];
  for (const [kind, rows] of [['param', pick(result.params)], ['metric', pick(result.metrics)]]) {
    for (const row of rows) {
      const values = row.values.map((v) => (v === 'NaN' || v === 'Infinity' || v === '-Infinity' ? null : v));
      if (numeric(values)) {
        dims.push({ name: row.key, kind, type: 'value', values: values.map((v) => (v == null ? null : Number(v))) });
      } else {
        const shown = values.map((v) => (v == null ? '—' : String(v)));
        dims.push({ name: row.key, kind, type: 'category', values: shown, categories: [...new Set(shown)].sort() });
      }
    }
  }
  return dims;
}

function parallelChart(container, result, echarts) {
  const dims = parallelDimensions(result);
  if (dims.length < 2) {
    replace(container, h('p', { class: 'muted' }, 'Parallel coordinates need at least two params or metrics.'));
    return null;
  }
  const chart = echarts.init(container, null, { renderer: 'canvas' });
  chart.setOption({
    animation: false,
    parallel: { left: 60, right: 110, top: 70, bottom: 30 },
    parallelAxis: dims.map((dim, i) => ({
      dim: i,
      name: dim.name,
      type: dim.type,
      data: dim.type === 'category' ? dim.categories : undefined,
      scale: dim.type === 'value',
      nameRotate: 15,
      nameGap: 18,
      nameTextStyle: { color: dim.kind === 'param' ? '#555' : '#1f4e79', width: 140, overflow: 'truncate' },
    })),
    series: [{
      type: 'parallel',
      lineStyle: { width: 2.5, opacity: 0.9 },
      emphasis: { lineStyle: { width: 4 } },
      data: result.runs.map((run, index) => ({
        name: run.run_name,
        value: dims.map((dim) => dim.values[index]),
        lineStyle: { color: PALETTE[index % PALETTE.length] },
      })),
    }],
  });
  const resize = () => chart.resize();
  window.addEventListener('resize', resize);
  return { chart, destroy: () => { window.removeEventListener('resize', resize); chart.dispose(); } };
}

export async function comparePage(root, ctx, params, query) {
  const ids = (query.get('runs') || '').split(',').map((s) => s.trim()).filter(Boolean);
  if (ids.length < 1) {
    replace(root, h('h1', null, 'Compare runs'), h('p', { class: 'muted' }, 'Select runs in an experiment\'s table and press Compare.'));
    return;
  }
  const result = await get('/api/compare', { runs: ids }, ctx.signal);
  if (!ctx.alive) return;
  const runs = result.runs;
  const colors = runs.map((_, i) => PALETTE[i % PALETTE.length]);

  const legend = h('ul', { class: 'legend' }, runs.map((run, i) => h('li', null,
    h('span', { class: 'swatch', style: { background: colors[i] } }),
    h('a', { href: `#/runs/${enc(run.run_id)}`, class: 'run-link' }, run.run_name),
    h('span', { class: 'muted small' }, ` ${run.run_id.slice(0, 8)} · ${run.status}`))));

  // -- diff table -------------------------------------------------------------------------------
  const onlyDiff = h('input', { type: 'checkbox', checked: true, class: 'only-diff', onchange: () => renderDiff() });
  const diffBox = h('div');
  function renderDiff() {
    const body = [];
    for (const [label, rows] of [['Params', result.params], ['Metrics', result.metrics]]) {
      const shown = onlyDiff.checked ? rows.filter((r) => r.differs) : rows;
      body.push(h('tr', { class: 'group-row' }, h('th', { colspan: String(runs.length + 1) }, `${label} (${shown.length}${onlyDiff.checked ? ` differing of ${rows.length}` : ''})`)));
      for (const row of shown) {
        body.push(h('tr', { class: row.differs ? 'differs' : '', dataset: { key: row.key, kind: label.toLowerCase() } },
          h('th', null, row.key),
          row.values.map((value) => h('td', { class: label === 'Metrics' ? 'num' : '' }, value == null ? '—' : (label === 'Metrics' ? fmtNumber(value) : value)))));
      }
    }
    replace(diffBox, h('table', { class: 'grid diff' },
      h('thead', null, h('tr', null, h('th', null, ''), runs.map((run, i) => h('th', null, h('span', { class: 'swatch', style: { background: colors[i] } }), run.run_name)))),
      h('tbody', null, body)));
  }
  renderDiff();

  // -- overlaid charts --------------------------------------------------------------------------
  const chartState = defaultChartState();
  const chartsBox = h('div', { class: 'charts' });
  const charts = [];
  const cache = new Map();
  ctx.onCleanup(() => { for (const chart of charts.splice(0)) chart.destroy(); });
  const metricKeys = result.metrics.map((row) => row.key);

  async function seriesFor(run, key) {
    const cacheKey = `${run.run_id}\u0000${key}`;
    if (!cache.has(cacheKey)) {
      cache.set(cacheKey, get(`/api/runs/${enc(run.run_id)}/metric`, { key, max_points: 2000 }, ctx.signal));
    }
    return cache.get(cacheKey);
  }

  async function drawCharts() {
    const loaded = await Promise.all(metricKeys.map(async (key) => {
      const lines = [];
      await Promise.all(runs.map(async (run, i) => {
        if (!(key in run.metrics)) return;
        const series = await seriesFor(run, key);
        lines[i] = { label: run.run_name, color: colors[i], series, startTime: run.start_time };
      }));
      return { key, lines: lines.filter(Boolean) };
    }));
    if (!ctx.alive) return;
    for (const chart of charts.splice(0)) chart.destroy();
    clear(chartsBox);
    for (const { key, lines } of loaded) {
      const plotBox = h('div', { class: 'plot' });
      chartsBox.append(h('div', { class: 'chart-card', dataset: { metric: key } }, h('h3', null, key), plotBox,
        pointsNote(lines.map((line) => ({ label: line.label, series: line.series })))));
      charts.push(lineChart(plotBox, { title: '', lines, state: chartState }));
    }
  }

  const parallelBox = h('div', { class: 'parallel', role: 'img', 'aria-label': 'parallel coordinates of params and metrics' });
  replace(root,
    h('div', { class: 'page-head' }, h('h1', null, `Compare ${runs.length} runs`)),
    h('section', { class: 'card' }, legend),
    h('section', { class: 'card' }, h('h2', null, 'Metric charts'),
      metricKeys.length ? [chartControls(chartState, () => drawCharts()), chartsBox] : h('p', { class: 'muted' }, 'No metrics.')),
    h('section', { class: 'card' }, h('h2', null, 'Parallel coordinates'), parallelBox),
    h('section', { class: 'card' }, h('h2', null, 'Params and metrics'), h('label', { class: 'inline' }, onlyDiff, ' Only differences'), diffBox));

  const drawn = drawCharts().catch((err) => { if (ctx.alive) replace(chartsBox, errorBox(err)); });
  try {
    const echarts = await loadECharts();
    if (ctx.alive) {
      const parallel = parallelChart(parallelBox, result, echarts);
      if (parallel) ctx.onCleanup(parallel.destroy);
    }
  } catch (err) {
    if (ctx.alive) replace(parallelBox, errorBox(err));
  }
  await drawn;
}
