// The single-page app: hash routes -> page modules. Each page gets a context whose cleanup runs
// when the user navigates away (timers for live refresh, charts, pending requests). With
// `cairn server --auth` every page but the login view needs a logged-in user; the header shows who
// it is and a logout button.

import { errorBox, h, replace, toast } from './dom.js';
import { loginHash, logout, session } from './api.js';
import { parseHash } from './nav.js';
import { experimentsPage } from './pages/experiments.js';
import { runsPage } from './pages/runs.js';
import { runPage } from './pages/run.js';
import { comparePage } from './pages/compare.js';
import { modelPage, modelsPage, versionPage } from './pages/models.js';
import { loginPage } from './pages/login.js';

// MLflow's run links (#/experiments/<experiment id>/runs/<run id>, printed by its client) open the run page.
function mlflowRunPage(root, ctx, [, runId], query) {
  return runPage(root, ctx, [runId], query);
}

const ROUTES = [
  [/^\/?$/, experimentsPage, 'experiments'],
  [/^\/login$/, loginPage, ''],
  [/^\/experiments$/, experimentsPage, 'experiments'],
  [/^\/experiments\/([^/]+)$/, runsPage, 'experiments'],
  [/^\/experiments\/([^/]+)\/runs\/([^/]+)$/, mlflowRunPage, 'experiments'],
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
  if (path !== '/login') {
    let info;
    try {
      info = await session();
    } catch (err) {
      if (ctx.alive) replace(root, errorBox(err));
      return;
    }
    if (!ctx.alive) return;
    if (info.auth && !info.user) {
      window.location.hash = loginHash();
      return;
    }
  }
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

async function renderHeader() {
  const box = document.getElementById('user-box');
  let info;
  try {
    info = await session();
  } catch (err) {
    toast(`cannot reach the server: ${err.message}`);
    return;
  }
  document.getElementById('store-label').textContent = `${info.store} · cairn ${info.version}`;
  if (!info.user) {
    replace(box);
    return;
  }
  const logoutButton = h('button', {
    type: 'button', class: 'logout',
    onclick: async () => {
      try {
        await logout();
      } catch (err) {
        toast(`logout failed: ${err.message}`);
        return;
      }
      await renderHeader();
      window.location.hash = '#/login';
    },
  }, 'Log out');
  replace(box, h('span', { class: 'user-name' }, info.user.name), info.user.is_admin ? h('span', { class: 'badge' }, 'admin') : null, logoutButton);
}

window.addEventListener('hashchange', route);
document.addEventListener('cairn:session-changed', renderHeader);
renderHeader();
route();
