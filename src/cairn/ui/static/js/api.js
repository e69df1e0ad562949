// The UI's JSON API client. Writes carry the per-process token from /api/session; the server
// also checks that they come from this origin.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `request failed with status ${status}`);
    this.status = status;
    this.type = error.type;
    this.position = error.position;
    this.text = error.text;
  }
}

let sessionPromise = null;

export function session() {
  if (!sessionPromise) sessionPromise = get('/api/session');
  return sessionPromise;
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

async function send(method, path, params, signal) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Cairn-Token'] = (await session()).token;
  const response = await fetch(url(path, params), { method, headers, signal, credentials: 'same-origin' });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
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
