// The model registry: models, their versions (stages, aliases), and each version's lineage back
// to the run that made it.

import { enc, get } from '../api.js';
import { h, keyValueTable, replace } from '../dom.js';
import { fmtNumber, fmtTime } from '../format.js';

function stageBadge(stage) {
  return h('span', { class: `badge stage-${String(stage).toLowerCase()}` }, stage);
}

function aliasBadges(aliases) {
  return aliases.map((alias) => h('span', { class: 'badge alias' }, `@${alias}`));
}

function modelHref(name) {
  return `#/models/${enc(name)}`;
}

export async function modelsPage(root, ctx) {
  const data = await get('/api/models', {}, ctx.signal);
  if (!ctx.alive) return;
  const rows = data.models.map((model) => h('tr', { dataset: { model: model.name } },
    h('td', null, h('a', { href: modelHref(model.name), class: 'model-link' }, model.name)),
    h('td', null, model.latest_versions.map((v) => h('span', { class: 'latest' },
      h('a', { href: `${modelHref(model.name)}/versions/${enc(v.version)}` }, `v${v.version}`), ' ', stageBadge(v.current_stage), ' '))),
    h('td', null, Object.entries(model.aliases).map(([alias, version]) => h('span', { class: 'badge alias' }, `@${alias} → v${version}`))),
    h('td', null, model.description || ''),
    h('td', { class: 'nowrap' }, fmtTime(model.last_updated_timestamp))));
  replace(root,
    h('div', { class: 'page-head' }, h('h1', null, 'Registered models')),
    rows.length
      ? h('table', { class: 'grid models' },
        h('thead', null, h('tr', null, ['Name', 'Latest versions', 'Aliases', 'Description', 'Updated'].map((t) => h('th', null, t)))),
        h('tbody', null, rows))
      : h('p', { class: 'muted' }, 'No registered models. Register one with cairn.register_model(model_uri, name).'));
}

export async function modelPage(root, ctx, [name]) {
  const data = await get('/api/model', { name }, ctx.signal);
  if (!ctx.alive) return;
  const { model, versions } = data;
  const rows = versions.map((v) => h('tr', { dataset: { version: v.version } },
    h('td', null, h('a', { href: `${modelHref(model.name)}/versions/${enc(v.version)}`, class: 'version-link' }, `Version ${v.version}`)),
    h('td', null, stageBadge(v.current_stage)),
    h('td', null, aliasBadges(v.aliases)),
    h('td', { class: 'nowrap' }, fmtTime(v.creation_timestamp)),
    h('td', null, v.run_id
      ? (v.run_exists ? h('a', { href: `#/runs/${enc(v.run_id)}`, class: 'run-link' }, v.run_id.slice(0, 12))
        : h('span', { class: 'muted', title: v.run_id }, 'run gone'))
      : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'mono small' }, v.source),
    h('td', null, v.description || '')));
  replace(root,
    h('div', { class: 'page-head' },
      h('div', null, h('div', { class: 'crumbs' }, h('a', { href: '#/models' }, 'Models')), h('h1', null, model.name))),
    model.description ? h('p', null, model.description) : null,
    h('section', { class: 'card' }, h('h2', null, 'Aliases'),
      keyValueTable(Object.entries(model.aliases).map(([alias, version]) => [`@${alias}`,
        h('a', { href: `${modelHref(model.name)}/versions/${enc(version)}` }, `Version ${version}`)]), { empty: 'No aliases.' })),
    h('section', { class: 'card' }, h('h2', null, 'Versions'),
      h('table', { class: 'grid versions' },
        h('thead', null, h('tr', null, ['Version', 'Stage', 'Aliases', 'Registered', 'Run', 'Source', 'Description'].map((t) => h('th', null, t)))),
        h('tbody', null, rows))),
    h('section', { class: 'card' }, h('h2', null, 'Tags'),
      keyValueTable(Object.entries(model.tags), { empty: 'No tags.' })));
}

export async function versionPage(root, ctx, [name, version]) {
  const data = await get('/api/model-version', { name, version }, ctx.signal);
  if (!ctx.alive) return;
  const v = data.version;
  const lineage = data.lineage;
  let runCell;
  if (lineage.run) runCell = h('a', { href: `#/runs/${enc(lineage.run.run_id)}`, class: 'lineage-run' }, `${lineage.run.run_name} (${lineage.run.run_id})`);
  else if (lineage.run_hidden) runCell = h('span', { class: 'muted run-hidden' }, `run ${lineage.run_id} (you have no permission to read its experiment)`);
  else if (lineage.run_missing) runCell = h('span', { class: 'warning' }, `run ${lineage.run_id} no longer exists in this store`);
  else runCell = h('span', { class: 'muted' }, 'not logged from a run');
  replace(root,
    h('div', { class: 'page-head' },
      h('div', null,
        h('div', { class: 'crumbs' }, h('a', { href: '#/models' }, 'Models'), ' / ', h('a', { href: modelHref(v.name) }, v.name)),
        h('h1', null, `${v.name} · version ${v.version}`)),
      stageBadge(v.current_stage), aliasBadges(v.aliases)),
    h('section', { class: 'card' }, h('h2', null, 'Lineage'), keyValueTable([
      ['Run', runCell],
      ['Source', h('code', null, lineage.source)],
      ['Model URI', h('code', null, `models:/${v.name}/${v.version}`)],
      ['Code', lineage.code_source ? h('code', null, lineage.code_source) : '—'],
      ['Git commit', lineage.git_commit ? h('code', null, lineage.git_commit + (lineage.git_dirty ? ' (uncommitted changes)' : '')) : '—'],
      ['Git branch', lineage.git_branch || '—'],
      ['Git repository', lineage.git_repo_url || '—'],
      ['Registered', fmtTime(v.creation_timestamp)],
      ['Registered by', v.user_id || '—'],
      ['Description', v.description || '—'],
    ], { cls: 'kv lineage' })),
    h('div', { class: 'columns' },
      h('section', { class: 'card' }, h('h2', null, 'Run parameters'),
        keyValueTable(Object.entries(lineage.params).sort(([a], [b]) => a.localeCompare(b)), { empty: 'No params.' })),
      h('section', { class: 'card' }, h('h2', null, 'Run metrics'),
        keyValueTable(Object.entries(lineage.metrics).sort(([a], [b]) => a.localeCompare(b)).map(([k, val]) => [k, fmtNumber(val)]), { empty: 'No metrics.' }))),
    h('section', { class: 'card' }, h('h2', null, 'Version tags'), keyValueTable(Object.entries(v.tags), { empty: 'No tags.' })));
}
