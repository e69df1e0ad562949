// One run: overview, metric charts, params, latest metrics, tags, registered versions,
// artifact browser with previews, checkpoints with their resume command; delete / restore.

import { del, enc, get, post, url } from '../api.js';
import { chartControls, defaultChartState, lineChart, PALETTE, pointsNote } from '../charts.js';
import { clear, errorBox, h, keyValueTable, replace, toast } from '../dom.js';
import { fmtBytes, fmtDuration, fmtNumber, fmtTime } from '../format.js';
import { mayDelete } from '../perm.js';

const REFRESH_MS = 5000;
const MAX_INITIAL_CHARTS = 24;

function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', null, title), ...children);
}

export async function runPage(root, ctx, [runId]) {
  const data = await get(`/api/runs/${enc(runId)}`, {}, ctx.signal);
  if (!ctx.alive) return;
  const { run, experiment } = data;
  const canDelete = mayDelete(data.permission);

  const header = h('div', { class: 'page-head' });
  const overview = h('div');
  const chartsBox = h('div', { class: 'charts' });
  const chartState = defaultChartState();
  const charts = new Map(); // key -> {box, chart}
  const seriesCache = new Map();
  let showAll = false;
  ctx.onCleanup(() => { for (const entry of charts.values()) if (entry.chart) entry.chart.destroy(); });

  function renderHeader(current) {
    const deleted = current.lifecycle_stage === 'deleted';
    const action = !canDelete ? null : deleted
      ? h('button', { type: 'button', class: 'restore-run', onclick: () => lifecycle('restore') }, 'Restore run')
      : h('button', { type: 'button', class: 'delete-run danger', onclick: () => lifecycle('delete') }, 'Delete run');
    replace(header,
      h('div', null,
        h('div', { class: 'crumbs' }, h('a', { href: '#/experiments' }, 'Experiments'), ' / ',
          h('a', { href: `#/experiments/${enc(experiment.experiment_id)}`, class: 'experiment-link' }, experiment.name)),
        h('h1', { class: 'run-name' }, current.run_name)),
      h('span', { class: `badge status-${current.status.toLowerCase()}` }, current.status),
      deleted ? h('span', { class: 'badge deleted lifecycle' }, 'deleted') : null,
      h('span', { class: 'spacer' }),
      action);
  }

  function renderOverview(current) {
    replace(overview, keyValueTable([
      ['Run ID', h('code', { class: 'run-id' }, current.run_id)],
      ['Experiment', h('a', { href: `#/experiments/${enc(experiment.experiment_id)}` }, `${experiment.name} (${experiment.experiment_id})`)],
      ['User', current.user_id],
      ['Started', fmtTime(current.start_time)],
      ['Ended', fmtTime(current.end_time)],
      ['Duration', fmtDuration(current.start_time, current.end_time)],
      ['Artifact URI', h('code', null, current.artifact_uri)],
      ...(current.tags['mlflow.parentRunId'] ? [['Parent run', h('a', { href: `#/runs/${enc(current.tags['mlflow.parentRunId'])}` }, current.tags['mlflow.parentRunId'])]] : []),
      ...(current.tags['mlflow.source.name'] ? [['Source', h('code', null, current.tags['mlflow.source.name'])]] : []),
      ...(current.tags['mlflow.source.git.commit'] ? [['Git commit', h('code', null, current.tags['mlflow.source.git.commit'])]] : []),
    ], { cls: 'kv overview' }));
  }

  async function lifecycle(action) {
    try {
      if (action === 'delete') await del(`/api/runs/${enc(runId)}`);
      else await post(`/api/runs/${enc(runId)}/restore`);
    } catch (err) {
      toast(`${action} failed: ${err.message}`, { timeout: 12000 });
      return;
    }
    toast(action === 'delete' ? 'Run deleted (restore it from this page or the Deleted runs view)' : 'Run restored');
    const fresh = await get(`/api/runs/${enc(runId)}`, {}, ctx.signal);
    if (ctx.alive) renderHeader(fresh.run);
  }

  // -- charts -----------------------------------------------------------------------------------
  async function series(key, force) {
    const cacheKey = key;
    if (!force && seriesCache.has(cacheKey)) return seriesCache.get(cacheKey);
    const result = await get(`/api/runs/${enc(runId)}/metric`, { key, max_points: 2000 }, ctx.signal);
    seriesCache.set(cacheKey, result);
    return result;
  }

  async function drawChart(key, force = false) {
    let entry = charts.get(key);
    if (!entry) {
      const plotBox = h('div', { class: 'plot' });
      const note = h('div');
      entry = { box: h('div', { class: 'chart-card', dataset: { metric: key } }, h('h3', null, key), plotBox, note), plotBox, note, chart: null };
      charts.set(key, entry);
      chartsBox.append(entry.box);
    }
    try {
      const points = await series(key, force);
      if (!ctx.alive) return;
      if (entry.chart) entry.chart.destroy();
      clear(entry.plotBox);
      entry.chart = lineChart(entry.plotBox, {
        title: '',
        lines: [{ label: key, color: PALETTE[0], series: points, startTime: run.start_time }],
        state: chartState,
      });
      replace(entry.note, pointsNote([{ label: key, series: points }]));
    } catch (err) {
      if (ctx.alive) replace(entry.plotBox, errorBox(err));
    }
  }

  function drawCharts(force = false) {
    const keys = showAll ? data.metric_keys : data.metric_keys.slice(0, MAX_INITIAL_CHARTS);
    return Promise.all(keys.map((key) => drawChart(key, force)));
  }

  const moreCharts = data.metric_keys.length > MAX_INITIAL_CHARTS
    ? h('button', { type: 'button', onclick: () => { showAll = true; moreCharts.remove(); drawCharts(); } },
      `Show all ${data.metric_keys.length} metrics`)
    : null;

  // -- artifacts --------------------------------------------------------------------------------
  const artifactTree = h('ul', { class: 'tree' });
  const previewPane = h('div', { class: 'preview' }, h('p', { class: 'muted' }, 'Select a file to preview it.'));

  function rawUrl(path, download) {
    return url(`/api/runs/${enc(runId)}/artifacts/raw`, { path, download: download ? '1' : null });
  }

  async function listInto(list, path) {
    let listing;
    try {
      listing = await get(`/api/runs/${enc(runId)}/artifacts`, { path }, ctx.signal);
    } catch (err) {
      replace(list, h('li', null, errorBox(err)));
      return;
    }
    if (!ctx.alive) return;
    if (!listing.entries.length && !path) {
      replace(list, h('li', { class: 'muted' }, 'No artifacts.'));
      return;
    }
    replace(list, listing.entries.map((entry) => {
      if (entry.is_dir) {
        const children = h('ul', { class: 'tree', hidden: true });
        const toggle = h('button', {
          type: 'button', class: 'dir', dataset: { path: entry.path }, 'aria-expanded': 'false',
          onclick: async () => {
            const open = children.hidden;
            children.hidden = !open;
            toggle.setAttribute('aria-expanded', String(open));
            toggle.classList.toggle('open', open);
            if (open && !children.dataset.loaded) {
              children.dataset.loaded = '1';
              await listInto(children, entry.path);
            }
          },
        }, entry.name);
        return h('li', null, toggle, children);
      }
      return h('li', null, h('button', {
        type: 'button', class: 'file', dataset: { path: entry.path },
        onclick: (event) => {
          for (const el of artifactTree.querySelectorAll('.file.selected')) el.classList.remove('selected');
          event.currentTarget.classList.add('selected');
          showPreview(entry.path);
        },
      }, entry.name, h('span', { class: 'muted small' }, ` ${fmtBytes(entry.size)}`)));
    }));
  }

  function signatureTable(title, spec) {
    if (spec == null) return null;
    if (!Array.isArray(spec)) return h('div', null, h('h4', null, title), h('pre', null, JSON.stringify(spec, null, 2)));
    const rows = spec.map((col) => {
      const tensor = col['tensor-spec'];
      return [
        col.name ?? '—',
        tensor ? `tensor ${tensor.dtype}` : (col.type ?? ''),
        tensor ? JSON.stringify(tensor.shape) : (col.shape ? JSON.stringify(col.shape) : ''),
        col.required === false ? 'optional' : '',
        col.default !== undefined ? JSON.stringify(col.default) : '',
      ];
    });
    return h('div', { class: 'signature-part' }, h('h4', null, title),
      h('table', { class: 'grid small' },
        h('thead', null, h('tr', null, ['name', 'type', 'shape', '', 'default'].map((t) => h('th', null, t)))),
        h('tbody', null, rows.map((row) => h('tr', null, row.map((cell) => h('td', null, cell)))))));
  }

  function renderModel(model) {
    if (model.error) return errorBox(model.error);
    const flavors = Object.entries(model.flavors || {}).map(([name, spec]) => h('li', null, h('strong', null, name),
      Object.keys(spec).length ? ` — ${Object.entries(spec).map(([k, v]) => `${k}: ${v}`).join(', ')}` : ''));
    const sig = model.signature || {};
    const example = model.input_example;
    return h('div', { class: 'mlmodel' },
      h('h4', null, 'Flavors'), h('ul', null, flavors),
      model.run_id ? h('p', null, 'Logged by run ', h('a', { href: `#/runs/${enc(model.run_id)}` }, model.run_id)) : null,
      h('h3', null, 'Signature'),
      sig.inputs == null && sig.outputs == null ? h('p', { class: 'muted' }, 'No signature.') : null,
      signatureTable('Inputs', sig.inputs),
      signatureTable('Outputs', sig.outputs),
      signatureTable('Params', sig.params),
      h('h3', null, 'Input example'),
      example == null ? h('p', { class: 'muted' }, 'No input example.')
        : example.error ? errorBox(example.error)
          : h('div', { class: 'input-example' }, h('p', { class: 'muted small' }, `${example.path} (${example.type || 'json'})${example.truncated ? ', truncated' : ''}`),
            exampleTable(example), h('pre', null, example.text)));
  }

  // A DataFrame example saved in pandas' split orient ({columns, data}) also shows as a table.
  function exampleTable(example) {
    let parsed;
    try {
      parsed = JSON.parse(example.text);
    } catch (err) {
      return null;
    }
    if (!parsed || !Array.isArray(parsed.columns) || !Array.isArray(parsed.data)) return null;
    const rows = parsed.data.slice(0, 20).filter(Array.isArray);
    return h('table', { class: 'grid small example-table' },
      h('thead', null, h('tr', null, parsed.columns.map((c) => h('th', null, String(c))))),
      h('tbody', null, rows.map((row) => h('tr', null, row.map((cell) => h('td', null, cell == null ? '' : typeof cell === 'object' ? JSON.stringify(cell) : String(cell)))))));
  }

  async function showPreview(path) {
    replace(previewPane, h('p', { class: 'muted' }, 'Loading…'));
    let result;
    try {
      result = await get(`/api/runs/${enc(runId)}/artifacts/preview`, { path }, ctx.signal);
    } catch (err) {
      if (ctx.alive) replace(previewPane, errorBox(err));
      return;
    }
    if (!ctx.alive) return;
    const links = h('div', { class: 'preview-links' },
      h('code', null, result.path), ' ', h('span', { class: 'muted' }, fmtBytes(result.size)), ' ',
      h('a', { href: rawUrl(result.path, false), target: '_blank', rel: 'noopener' }, 'open raw'), ' · ',
      h('a', { href: rawUrl(result.path, true), class: 'download' }, 'download'));
    let body;
    if (result.kind === 'image') body = h('img', { src: rawUrl(result.path, false), alt: result.path, class: 'artifact-image' });
    else if (result.kind === 'mlmodel') {
      body = h('div', null, renderModel(result.model),
        h('details', null, h('summary', null, 'MLmodel file'), h('pre', null, result.text)));
    } else if (result.kind === 'binary') body = h('p', { class: 'muted' }, 'Binary file: no preview. Use download.');
    else body = h('pre', { class: `text-preview kind-${result.kind}` }, result.text);
    replace(previewPane, links,
      result.error ? h('div', { class: 'warning' }, result.error) : null,
      result.truncated ? h('div', { class: 'warning' }, 'Preview truncated: download the file to see all of it.') : null,
      h('div', { class: 'preview-body', dataset: { kind: result.kind } }, body));
  }

  // -- checkpoints ------------------------------------------------------------------------------
  const checkpointsBox = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  async function loadCheckpoints() {
    try {
      const result = await get(`/api/runs/${enc(runId)}/checkpoints`, {}, ctx.signal);
      if (!ctx.alive) return;
      if (!result.checkpoints.length) {
        replace(checkpointsBox, h('p', { class: 'muted' }, 'No checkpoints (they appear under checkpoints/step-<N>/).'));
        return;
      }
      replace(checkpointsBox, h('table', { class: 'grid checkpoints' },
        h('thead', null, h('tr', null, ['Step', 'Epoch', 'Created', 'Metrics', 'Files', 'Resume'].map((t) => h('th', null, t)))),
        h('tbody', null, result.checkpoints.map((cp) => {
          const command = cp.resume_command;
          const code = command ? h('code', { class: 'resume-command' }, command) : null;
          return h('tr', { dataset: { step: String(cp.step) } },
            h('td', { class: 'num' }, String(cp.step)),
            h('td', { class: 'num' }, cp.epoch == null ? '' : String(cp.epoch)),
            h('td', { class: 'nowrap' }, cp.created_at ? fmtTime(Date.parse(cp.created_at)) : ''),
            h('td', null, Object.entries(cp.metrics).map(([k, v]) => `${k}=${fmtNumber(v)}`).join(', ')),
            h('td', { class: 'nowrap' }, cp.files == null ? '' : `${cp.files} files, ${fmtBytes(cp.size)}`),
            h('td', null, cp.valid
              ? [code, ' ', h('button', {
                type: 'button', class: 'copy small',
                onclick: () => navigator.clipboard.writeText(command).then(() => toast('Copied'), () => toast('Copy failed: select the text')),
              }, 'Copy')]
              : h('span', { class: 'warning' }, `incomplete: ${cp.problem}`)));
        }))));
    } catch (err) {
      if (ctx.alive) replace(checkpointsBox, errorBox(err));
    }
  }

  // -- registered versions ----------------------------------------------------------------------
  const versions = data.model_versions.length
    ? section('Registered model versions', h('ul', null, data.model_versions.map((v) => h('li', null,
      h('a', { href: `#/models/${enc(v.name)}/versions/${enc(v.version)}` }, `${v.name} v${v.version}`),
      ` · ${v.current_stage}`, v.aliases.length ? ` · @${v.aliases.join(', @')}` : ''))))
    : null;

  const paramsBox = h('div');
  const metricsBox = h('div');
  const tagsBox = h('div');
  function renderData(current) {
    replace(paramsBox, keyValueTable(Object.entries(current.params).sort(([a], [b]) => a.localeCompare(b)), { empty: 'No params.', cls: 'kv params' }));
    replace(metricsBox, keyValueTable(Object.entries(current.metrics).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, fmtNumber(v)]), { empty: 'No metrics.', cls: 'kv metrics' }));
    replace(tagsBox, keyValueTable(Object.entries(current.tags).sort(([a], [b]) => a.localeCompare(b)), { empty: 'No tags.', cls: 'kv tags' }));
  }

  renderHeader(run);
  renderOverview(run);
  renderData(run);
  replace(root,
    header,
    section('Overview', overview),
    section('Metric charts',
      data.metric_keys.length
        ? [chartControls(chartState, () => drawCharts()), chartsBox, moreCharts]
        : h('p', { class: 'muted' }, 'No metrics logged.')),
    h('div', { class: 'columns' },
      section('Parameters', paramsBox),
      section('Latest metrics', metricsBox)),
    section('Tags', tagsBox),
    versions,
    section('Artifacts', h('div', { class: 'artifacts' }, h('div', { class: 'tree-box' }, artifactTree), previewPane)),
    section('Checkpoints', checkpointsBox));

  await Promise.all([drawCharts(), listInto(artifactTree, ''), loadCheckpoints()]);

  // Live refresh while the run is RUNNING: status, latest values and charts.
  async function refresh() {
    let fresh;
    try {
      fresh = await get(`/api/runs/${enc(runId)}`, {}, ctx.signal);
    } catch (err) {
      return;
    }
    if (!ctx.alive) return;
    Object.assign(run, fresh.run);
    data.metric_keys = fresh.metric_keys;
    renderHeader(fresh.run);
    renderOverview(fresh.run);
    renderData(fresh.run);
    await drawCharts(true);
    if (fresh.run.status === 'RUNNING') ctx.timeout(refresh, REFRESH_MS);
  }
  if (run.status === 'RUNNING') ctx.timeout(refresh, REFRESH_MS);
}
