// The runs of one experiment: sortable table with chosen params and latest metrics as columns,
// a filter box using search_runs' grammar (errors shown inline with a caret), pagination,
// selection for compare/delete/restore, and live refresh while runs on the page are RUNNING.

import { ApiError, del, get, post } from '../api.js';
import { clear, errorBox, h, replace, toast } from '../dom.js';
import { fmtCount, fmtDuration, fmtNumber, fmtTime, quoteKey } from '../format.js';
import { setQuery } from '../nav.js';
import { mayDelete } from '../perm.js';

const REFRESH_MS = 3000;
const PAGE_SIZES = [25, 50, 100, 200];
const DEFAULT_COLUMNS = 5;

function storedColumns(experimentId) {
  try {
    const saved = JSON.parse(localStorage.getItem(`cairn.columns.${experimentId}`) || 'null');
    if (saved && Array.isArray(saved.params) && Array.isArray(saved.metrics)) {
      return { params: saved.params.map(String), metrics: saved.metrics.map(String) };
    }
  } catch (err) {
    // a damaged entry falls back to the defaults
  }
  return null;
}

// Default columns before the user picks: the first keys logged by the runs on the first page.
function defaultColumns(runs) {
  const sortedKeys = (kind) => [...new Set(runs.flatMap((run) => Object.keys(run[kind])))].sort();
  return { params: sortedKeys('params').slice(0, DEFAULT_COLUMNS), metrics: sortedKeys('metrics').slice(0, DEFAULT_COLUMNS) };
}

function saveColumns(experimentId, columns) {
  try {
    localStorage.setItem(`cairn.columns.${experimentId}`, JSON.stringify(columns));
  } catch (err) {
    // private mode: columns are not remembered
  }
}

function statusBadge(status) {
  return h('span', { class: `badge status-${status.toLowerCase()}` }, status);
}

export async function runsPage(root, ctx, [experimentId], query) {
  const state = {
    filter: query.get('filter') || '',
    order: query.get('order') || '',
    view: query.get('view') || 'active',
    size: Number(query.get('size')) || 50,
    tokens: [null], // page tokens of the pages seen so far; the last one is the current page
    selected: new Set(),
    runs: [],
  };
  const meta = await get(`/api/experiments/${encodeURIComponent(experimentId)}`, {}, ctx.signal);
  if (!ctx.alive) return;
  const { experiment } = meta;
  const canDelete = mayDelete(experiment.permission);
  // Every key of the experiment, for the column picker; the table does not wait for it.
  let keys = null;
  let columns = storedColumns(experimentId);

  // -- filter box -------------------------------------------------------------------------------
  const filterInput = h('input', {
    type: 'search', class: 'filter-input', value: state.filter, spellcheck: 'false', autocomplete: 'off',
    placeholder: "metrics.loss < 0.5 and params.lr = '0.01'", 'aria-label': 'filter runs',
    onkeydown: (event) => { if (event.key === 'Enter') applyFilter(); },
  });
  const filterError = h('div', { class: 'filter-error', role: 'alert', hidden: true });
  function applyFilter() {
    state.filter = filterInput.value.trim();
    state.tokens = [null];
    load();
  }
  function showFilterError(error) {
    filterInput.classList.add('invalid');
    filterError.hidden = false;
    const pointer = error.text != null && error.position != null
      ? h('pre', { class: 'caret' }, `${error.text}\n${' '.repeat(error.position)}^`)
      : null;
    replace(filterError, h('div', { class: 'message' }, error.message), pointer,
      error.position != null ? h('div', { class: 'muted small' }, `at character ${error.position + 1}`) : null);
    if (error.position != null) {
      filterInput.focus();
      filterInput.setSelectionRange(error.position, Math.min(error.position + 1, filterInput.value.length));
    }
  }
  function hideFilterError() {
    filterInput.classList.remove('invalid');
    filterError.hidden = true;
    clear(filterError);
  }

  // -- toolbar ----------------------------------------------------------------------------------
  const viewSelect = h('select', {
    'aria-label': 'lifecycle', class: 'view-select',
    onchange: () => { state.view = viewSelect.value; state.tokens = [null]; state.selected.clear(); load(); },
  }, [['active', 'Active runs'], ['deleted', 'Deleted runs'], ['all', 'All runs']].map(([v, label]) => h('option', { value: v }, label)));
  viewSelect.value = state.view;
  const sizeSelect = h('select', {
    'aria-label': 'page size',
    onchange: () => { state.size = Number(sizeSelect.value); state.tokens = [null]; load(); },
  }, PAGE_SIZES.map((n) => h('option', { value: String(n) }, `${n} per page`)));
  sizeSelect.value = String(state.size);

  const compareButton = h('button', { type: 'button', class: 'compare-selected', onclick: () => {
    const ids = [...state.selected];
    window.location.hash = `#/compare?runs=${ids.map(encodeURIComponent).join(',')}`;
  } }, 'Compare');
  const deleteButton = h('button', { type: 'button', class: 'delete-selected danger', onclick: () => lifecycle('delete') }, 'Delete');
  const restoreButton = h('button', { type: 'button', class: 'restore-selected', onclick: () => lifecycle('restore') }, 'Restore');
  const selectionInfo = h('span', { class: 'muted selection-info' });

  function updateSelectionButtons() {
    const selectedRuns = state.runs.filter((r) => state.selected.has(r.run_id));
    compareButton.disabled = state.selected.size < 2;
    deleteButton.disabled = !selectedRuns.some((r) => r.lifecycle_stage === 'active');
    restoreButton.disabled = !selectedRuns.some((r) => r.lifecycle_stage === 'deleted');
    selectionInfo.textContent = state.selected.size ? `${state.selected.size} selected` : '';
  }

  async function apply(action, ids) {
    const done = [];
    try {
      for (const id of ids) {
        if (action === 'delete') await del(`/api/runs/${encodeURIComponent(id)}`);
        else await post(`/api/runs/${encodeURIComponent(id)}/restore`);
        done.push(id);
      }
    } catch (err) {
      toast(`${action} failed: ${err.message}`, { timeout: 12000 });
    }
    return done;
  }

  async function lifecycle(action) {
    const targets = state.runs.filter((r) => state.selected.has(r.run_id)
      && r.lifecycle_stage === (action === 'delete' ? 'active' : 'deleted'));
    const ids = await apply(action, targets.map((r) => r.run_id));
    state.selected.clear();
    await load();
    if (ids.length) {
      toast(`${action === 'delete' ? 'Deleted' : 'Restored'} ${ids.length} run(s)`, {
        action: 'Undo',
        onAction: async () => {
          await apply(action === 'delete' ? 'restore' : 'delete', ids);
          load();
        },
      });
    }
  }

  // -- column picker ----------------------------------------------------------------------------
  function picker(kind, label, available) {
    const listed = [...new Set([...available[kind], ...columns[kind]])].sort();
    const boxes = listed.map((key) => h('label', { class: 'pick' },
      h('input', {
        type: 'checkbox', checked: columns[kind].includes(key), dataset: { kind, key },
        onchange: (event) => {
          const chosen = new Set(columns[kind]);
          if (event.target.checked) chosen.add(key); else chosen.delete(key);
          columns = { ...columns, [kind]: listed.filter((k) => chosen.has(k)) };
          saveColumns(experimentId, columns);
          renderTable();
        },
      }), ' ', key));
    return h('fieldset', null, h('legend', null, label), boxes.length ? boxes : h('span', { class: 'muted' }, 'none logged'));
  }
  const pickGrid = h('div', { class: 'pick-grid' });
  const columnPicker = h('details', { class: 'column-picker' }, h('summary', null, 'Columns'), pickGrid);
  function renderPicker() {
    const available = keys || defaultColumns(state.runs);
    replace(pickGrid, picker('params', 'Params', available), picker('metrics', 'Metrics', available));
  }

  // -- table ------------------------------------------------------------------------------------
  const tableBox = h('div', { class: 'table-box' });
  const pager = h('div', { class: 'pager' });
  const liveBadge = h('span', { class: 'live', hidden: true, title: `refreshing every ${REFRESH_MS / 1000}s` }, '● live');
  let total = null;
  let nextToken = null;

  function orderState(identifier) {
    const match = /^(.*?)(?:\s+(ASC|DESC))?$/i.exec(state.order || '');
    if (!match || match[1] !== identifier) return null;
    return (match[2] || 'ASC').toUpperCase();
  }

  function sortHeader(label, identifier, cls) {
    const direction = orderState(identifier);
    const arrow = direction === 'ASC' ? ' ▲' : direction === 'DESC' ? ' ▼' : '';
    return h('th', {
      class: `sortable ${cls || ''}`, title: `sort by ${identifier}`, dataset: { order: identifier },
      'aria-sort': direction === 'ASC' ? 'ascending' : direction === 'DESC' ? 'descending' : 'none',
      onclick: () => {
        state.order = direction === 'DESC' ? `${identifier} ASC` : `${identifier} DESC`;
        state.tokens = [null];
        load();
      },
    }, label, arrow);
  }

  function renderTable() {
    const all = h('input', {
      type: 'checkbox', 'aria-label': 'select all',
      checked: state.runs.length > 0 && state.runs.every((r) => state.selected.has(r.run_id)),
      onchange: () => {
        for (const run of state.runs) {
          if (all.checked) state.selected.add(run.run_id); else state.selected.delete(run.run_id);
        }
        renderTable();
      },
    });
    const groupRow = h('tr', { class: 'group-row' },
      h('th', { colspan: '5' }),
      columns.params.length ? h('th', { colspan: String(columns.params.length), class: 'group' }, 'Params') : null,
      columns.metrics.length ? h('th', { colspan: String(columns.metrics.length), class: 'group' }, 'Metrics') : null);
    const headRow = h('tr', null,
      h('th', { class: 'check' }, all),
      sortHeader('Name', 'attributes.run_name'),
      sortHeader('Status', 'attributes.status'),
      sortHeader('Started', 'attributes.start_time'),
      h('th', null, 'Duration'),
      columns.params.map((key) => sortHeader(key, `params.${quoteKey(key)}`, 'param')),
      columns.metrics.map((key) => sortHeader(key, `metrics.${quoteKey(key)}`, 'metric')));
    const rows = state.runs.map((run) => {
      const box = h('input', {
        type: 'checkbox', 'aria-label': `select ${run.run_name}`, checked: state.selected.has(run.run_id),
        onchange: () => {
          if (box.checked) state.selected.add(run.run_id); else state.selected.delete(run.run_id);
          updateSelectionButtons();
        },
      });
      return h('tr', { dataset: { runId: run.run_id }, class: run.lifecycle_stage === 'deleted' ? 'deleted' : '' },
        h('td', { class: 'check' }, box),
        h('td', { class: 'name' }, h('a', { href: `#/runs/${encodeURIComponent(run.run_id)}`, class: 'run-link' }, run.run_name),
          run.lifecycle_stage === 'deleted' ? h('span', { class: 'badge deleted' }, 'deleted') : null),
        h('td', { class: 'status' }, statusBadge(run.status)),
        h('td', { class: 'nowrap' }, fmtTime(run.start_time)),
        h('td', { class: 'num' }, fmtDuration(run.start_time, run.end_time)),
        columns.params.map((key) => h('td', { class: 'param', dataset: { key } }, run.params[key] ?? '')),
        columns.metrics.map((key) => h('td', { class: 'num metric', dataset: { key } }, fmtNumber(run.metrics[key]))));
    });
    replace(tableBox, h('table', { class: 'grid runs' },
      h('thead', null, groupRow, headRow),
      h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: String(5 + columns.params.length + columns.metrics.length), class: 'muted empty' },
        state.filter ? 'No run matches this filter.' : 'No runs.')))));
    updateSelectionButtons();
  }

  function renderPager() {
    const pageIndex = state.tokens.length - 1;
    const first = pageIndex * state.size + 1;
    const last = pageIndex * state.size + state.runs.length;
    replace(pager,
      h('button', { type: 'button', class: 'prev', disabled: pageIndex === 0, onclick: () => { state.tokens.pop(); load(); } }, '‹ Prev'),
      h('span', { class: 'page-info' }, state.runs.length
        ? `Page ${pageIndex + 1} · runs ${fmtCount(first)}–${fmtCount(last)} of ${fmtCount(total)}`
        : `Page ${pageIndex + 1} · ${fmtCount(total)} runs`),
      h('button', { type: 'button', class: 'next', disabled: !nextToken, onclick: () => { state.tokens.push(nextToken); load(); } }, 'Next ›'));
  }

  let refreshTimer = null;
  let loadSeq = 0;
  async function load({ quiet = false } = {}) {
    const seq = ++loadSeq;
    if (refreshTimer) clearTimeout(refreshTimer);
    setQuery({ filter: state.filter, order: state.order, view: state.view !== 'active' ? state.view : '', size: state.size !== 50 ? state.size : '' });
    let page;
    try {
      page = await get(`/api/experiments/${encodeURIComponent(experimentId)}/runs`, {
        filter: state.filter,
        order_by: state.order || null,
        view: state.view,
        max_results: state.size,
        page_token: state.tokens[state.tokens.length - 1],
      }, ctx.signal);
    } catch (err) {
      if (!ctx.alive || seq !== loadSeq) return;
      if (err instanceof ApiError && err.type === 'FilterSyntaxError') {
        showFilterError(err);
        return;
      }
      if (!quiet) replace(tableBox, errorBox(err));
      return;
    }
    if (!ctx.alive || seq !== loadSeq) return;
    hideFilterError();
    state.runs = page.runs;
    if (!columns) {
      columns = defaultColumns(state.runs);
      renderPicker();
    }
    total = page.total;
    nextToken = page.next_page_token;
    renderTable();
    renderPager();
    const running = state.runs.some((r) => r.status === 'RUNNING');
    liveBadge.hidden = !running;
    if (running) refreshTimer = ctx.timeout(() => load({ quiet: true }), REFRESH_MS);
  }

  replace(root,
    h('div', { class: 'page-head' },
      h('h1', null, experiment.name),
      h('span', { class: 'muted' }, `experiment ${experiment.experiment_id} · ${fmtCount(experiment.run_count || 0)} runs`),
      liveBadge),
    h('div', { class: 'filter-row' }, filterInput,
      h('button', { type: 'button', class: 'apply-filter', onclick: applyFilter }, 'Filter'),
      h('button', { type: 'button', class: 'clear-filter', onclick: () => { filterInput.value = ''; applyFilter(); } }, 'Clear')),
    filterError,
    h('div', { class: 'toolbar' }, viewSelect, columnPicker, compareButton,
      canDelete ? deleteButton : null, canDelete ? restoreButton : null, selectionInfo, h('span', { class: 'spacer' }), sizeSelect),
    tableBox,
    pager);
  if (columns) renderPicker();
  get(`/api/experiments/${encodeURIComponent(experimentId)}/keys`, { view: 'all' }, ctx.signal).then((found) => {
    if (!ctx.alive) return;
    keys = found.keys;
    if (columns) renderPicker(); // otherwise the first page of runs sets the columns and draws it
  }, (err) => { if (ctx.alive) toast(`the column picker could not load every key: ${err.message}`); });
  await load();
}
