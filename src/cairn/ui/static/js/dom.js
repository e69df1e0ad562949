// DOM construction without HTML parsing: every string becomes a text node or an attribute value,
// so names, params, tags and file contents logged by users are always shown as text.

const SAFE_HREF = /^(#|\/(?!\/))/;

export function safeHref(value) {
  const text = String(value);
  return SAFE_HREF.test(text) ? text : '#';
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// h('a', {href: '#/x', class: 'link', onclick: fn}, 'text', otherNode)
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) {
      if (typeof value === 'function') el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'href' || key === 'src') el.setAttribute(key, safeHref(value));
    else if (key === 'value') el.value = value;
    else if (key === 'checked') el.checked = Boolean(value);
    else if (key === 'style') Object.assign(el.style, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  return append(el, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

export function toast(message, { action, onAction, timeout = 6000 } = {}) {
  const box = document.getElementById('toasts');
  const item = h('div', { class: 'toast' }, h('span', null, message));
  if (action) {
    item.append(h('button', { type: 'button', onclick: () => { item.remove(); onAction(); } }, action));
  }
  box.append(item);
  setTimeout(() => item.remove(), timeout);
}

export function errorBox(error) {
  return h('div', { class: 'error-box', role: 'alert' }, error && error.message ? error.message : String(error));
}

export function table(headers, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', null, h('tr', null, headers.map((head) => h('th', null, head)))),
    h('tbody', null, rows.map((row) => h('tr', null, row.map((cell) => h('td', null, cell))))));
}

export function keyValueTable(entries, { empty = 'none', cls = 'kv' } = {}) {
  if (!entries.length) return h('p', { class: 'muted' }, empty);
  return h('table', { class: cls },
    h('tbody', null, entries.map(([key, value]) => h('tr', null, h('th', null, key), h('td', null, value)))));
}
