// The UI's JSON API client. Writes carry the CSRF token from /api/session (the server compares it
// with the cookie it set there, and checks that writes come from this origin). A 401 from any call
// sends the page to the login view (cairn server --auth), which comes back afterwards.

export class ApiError extends Error {
  constructor(status, body) {
    // The UI's API answers {error: {type, message}}; the server's auth layer answers MLflow's {error_code, message}.
    const error = (body && body.error) || {};
    const message = error.message || (body && typeof body.message === 'string' ? body.message : null);
    super(message || `request failed with status ${status}`);
    this.status = status;
    this.type = error.type || (body && body.error_code);
    this.position = error.position;
    this.text = error.text;
  }
}

let sessionPromise = null;

export function session() {
  if (!sessionPromise) {
    sessionPromise = get('/api/session');
    sessionPromise.catch(() => { sessionPromise = null; });
  }
  return sessionPromise;
}

// Forget the cached session (after login or logout, or when the server says we are logged out).
export function resetSession() {
  sessionPromise = null;
}

export function loginHash() {
  const here = window.location.hash;
  if (here.startsWith('#/login')) return here;
  return `#/login?next=${encodeURIComponent(here || '#/experiments')}`;
}

// Log in (name + password or token); resolves to the new session.
export async function login(name, password) {
  const body = await sendJson('POST', '/login', { name, password });
  resetSession();
  await session();
  return body;
}

export async function logout() {
  await sendJson('POST', '/logout', {});
  resetSession();
}

export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value == null || value === '') continue;
    for (const item of Array.isArray(value) ? value : [value]) query.append(key, item);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function answer(response, path) {
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (response.status === 401 && path !== '/login') {
    resetSession();
    document.dispatchEvent(new CustomEvent('cairn:session-changed'));
    window.location.hash = loginHash();
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

async function send(method, path, params, signal) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Cairn-Token'] = (await session()).csrf;
  const response = await fetch(url(path, params), { method, headers, signal, credentials: 'same-origin' });
  return answer(response, path);
}

async function sendJson(method, path, data) {
  const headers = { Accept: 'application/json', 'Content-Type': 'application/json', 'X-Cairn-Token': (await session()).csrf };
  const response = await fetch(path, { method, headers, body: JSON.stringify(data), credentials: 'same-origin' });
  return answer(response, path);
}

export function get(path, params, signal) {
  return send('GET', path, params, signal);
}

export function post(path, params) {
  return send('POST', path, params);
}

export function del(path, params) {
  return send('DELETE', path, params);
}

export const enc = encodeURIComponent;
