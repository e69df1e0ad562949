// The single-page app: hash routes -> page modules. Each page gets a context whose cleanup runs
// when the user navigates away (timers for live refresh, charts, pending requests).

import { errorBox, h, replace } from './dom.js';
import { session } from './api.js';
import { parseHash } from './nav.js';
import { experimentsPage } from './pages/experiments.js';
import { runsPage } from './pages/runs.js';
import { runPage } from './pages/run.js';
import { comparePage } from './pages/compare.js';
import { modelPage, modelsPage, versionPage } from './pages/models.js';

const ROUTES = [
  [/^\/?$/, experimentsPage, 'experiments'],
  [/^\/experiments$/, experimentsPage, 'experiments'],
  [/^\/experiments\/([^/]+)$/, runsPage, 'experiments'],
  [/^\/runs\/([^/]+)$/, runPage, 'experiments'],
  [/^\/compare$/, comparePage, 'experiments'],
  [/^\/models$/, modelsPage, 'models'],
  [/^\/models\/(.+)\/versions\/([^/]+)$/, versionPage, 'models'],
  [/^\/models\/(.+)$/, modelPage, 'models'],
];

class PageContext {
  constructor() {
    this.controller = new AbortController();
    this.cleanups = [];
  }

  get signal() {
    return this.controller.signal;
  }

  get alive() {
    return !this.controller.signal.aborted;
  }

  onCleanup(fn) {
    this.cleanups.push(fn);
  }

  timeout(fn, ms) {
    const id = setTimeout(() => { if (this.alive) fn(); }, ms);
    this.onCleanup(() => clearTimeout(id));
    return id;
  }

  close() {
    this.controller.abort();
    for (const fn of this.cleanups.splice(0)) {
      try { fn(); } catch (err) { console.warn('cleanup failed', err); }
    }
  }
}

let current = null;

async function route() {
  if (current) current.close();
  const ctx = new PageContext();
  current = ctx;
  const root = document.getElementById('app');
  const { path, query } = parseHash();
  for (const [pattern, page, nav] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.dataset.nav === nav);
    }
    const params = match.slice(1).map((part) => decodeURIComponent(part));
    replace(root, h('p', { class: 'muted loading' }, 'Loading…'));
    try {
      await page(root, ctx, params, query);
    } catch (err) {
      if (ctx.alive) replace(root, errorBox(err));
    }
    return;
  }
  replace(root, errorBox(new Error(`no page at ${path}`)));
}

window.addEventListener('hashchange', route);
session().then((info) => {
  document.getElementById('store-label').textContent = `${info.store} · cairn ${info.version}`;
}).catch(() => {});
route();
