// Formatting of times, durations, numbers and sizes for display.

function pad(n) {
  return String(n).padStart(2, '0');
}

export function fmtTime(ms) {
  if (ms == null) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(start, end) {
  if (start == null) return '—';
  const seconds = ((end == null ? Date.now() : end) - start) / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)}min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)}h`;
  return `${(seconds / 86400).toFixed(1)}d`;
}

export function fmtNumber(value) {
  if (value == null) return '';
  if (typeof value === 'string') return value; // "NaN", "Infinity", "-Infinity"
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e9)) return value.toExponential(4);
  return String(Number(value.toPrecision(6)));
}

export function fmtBytes(size) {
  if (size == null) return '';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export function fmtCount(n) {
  return n == null ? '?' : Number(n).toLocaleString('en-US');
}

// A key in the search grammar: backticks unless the key holds one.
export function quoteKey(key) {
  if (!key.includes('`')) return `\`${key}\``;
  return `"${key.replace(/"/g, '""')}"`;
}
