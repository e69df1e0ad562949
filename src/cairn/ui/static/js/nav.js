// Reading and updating the hash route (#/path?query).

export function parseHash() {
  const raw = window.location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?', 2);
  return { path, query: new URLSearchParams(query) };
}

// Update the hash query without re-rendering the page (the page already shows that state).
export function setQuery(params) {
  const { path } = parseHash();
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value != null && value !== '') query.set(key, value);
  }
  const text = query.toString();
  history.replaceState(null, '', `#${path}${text ? `?${text}` : ''}`);
}
