import { get } from '../api.js';
import { h, replace } from '../dom.js';
import { fmtCount, fmtTime } from '../format.js';

export async function experimentsPage(root, ctx, params, query) {
  const showDeleted = query.get('view') === 'all';
  const data = await get('/api/experiments', { view: showDeleted ? 'all' : 'active' }, ctx.signal);
  if (!ctx.alive) return;
  const toggle = h('input', {
    type: 'checkbox', checked: showDeleted,
    onchange: () => { window.location.hash = toggle.checked ? '#/experiments?view=all' : '#/experiments'; },
  });
  const rows = data.experiments.map((exp) => h('tr', { dataset: { experimentId: exp.experiment_id } },
    h('td', null, h('a', { href: `#/experiments/${encodeURIComponent(exp.experiment_id)}`, class: 'exp-link' }, exp.name)),
    h('td', { class: 'mono' }, exp.experiment_id),
    h('td', { class: 'num' }, fmtCount(exp.run_count || 0)),
    h('td', { class: 'num' }, fmtCount(exp.deleted_run_count || 0)),
    h('td', null, fmtTime(exp.creation_time)),
    h('td', null, exp.lifecycle_stage === 'deleted' ? h('span', { class: 'badge deleted' }, 'deleted') : ''),
    h('td', { class: 'mono small' }, exp.artifact_location)));
  replace(root,
    h('div', { class: 'page-head' }, h('h1', null, 'Experiments'),
      h('label', { class: 'inline' }, toggle, ' Show deleted experiments')),
    rows.length
      ? h('table', { class: 'grid experiments' },
        h('thead', null, h('tr', null, ['Name', 'ID', 'Runs', 'Deleted runs', 'Created', '', 'Artifact location'].map((t) => h('th', null, t)))),
        h('tbody', null, rows))
      : h('p', { class: 'muted' }, 'No experiments yet. Log a run with cairn.start_run() and reload.'));
}
