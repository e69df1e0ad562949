// The login view of `cairn server --auth`: user name + password (or the user's token). After a
// successful login the page goes back to where the user was sent from (?next=#/...).

import { ApiError, login, session } from '../api.js';
import { errorBox, h, replace } from '../dom.js';

function nextHash(query) {
  const next = query.get('next') || '';
  return next.startsWith('#/') && !next.startsWith('#/login') ? next : '#/experiments';
}

export async function loginPage(root, ctx, params, query) {
  const info = await session();
  if (!ctx.alive) return;
  if (!info.auth) {
    replace(root, h('div', { class: 'card login' }, h('h1', null, 'No login needed'),
      h('p', null, 'This server runs without --auth: everyone who can reach it may use it.'),
      h('a', { href: '#/experiments' }, 'Go to the experiments')));
    return;
  }
  if (info.user) {
    window.location.hash = nextHash(query);
    return;
  }
  const name = h('input', { type: 'text', name: 'name', class: 'login-name', autocomplete: 'username', required: true, 'aria-label': 'user name' });
  const password = h('input', { type: 'password', name: 'password', class: 'login-password', autocomplete: 'current-password', required: true, 'aria-label': 'password or token' });
  const problem = h('div', { class: 'login-error' });
  const submit = h('button', { type: 'submit', class: 'login-submit' }, 'Log in');
  const form = h('form', {
    class: 'login-form',
    onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      replace(problem);
      try {
        await login(name.value.trim(), password.value);
      } catch (err) {
        submit.disabled = false;
        password.value = '';
        password.focus();
        replace(problem, errorBox(err instanceof ApiError && err.status === 401 ? err.message : `login failed: ${err.message}`));
        return;
      }
      document.dispatchEvent(new CustomEvent('cairn:session-changed'));
      window.location.hash = nextHash(query);
    },
  },
  h('label', null, 'User name', name),
  h('label', null, 'Password or token', password),
  submit,
  problem);
  replace(root, h('div', { class: 'card login' }, h('h1', null, 'Log in to cairn'), form));
  name.focus();
}
