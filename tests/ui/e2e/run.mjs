// End-to-end test of `cairn ui` in Debian's headless Chromium (never a downloaded browser).
//
//   node run.mjs <base url> <output dir> [scenario.json]
//
// Drives the UI like a user over the store prepared by tests/ui/test_e2e.py, and prints one JSON
// object on the last line of stdout: {checks: [{name, ok, detail}], console_errors, dialogs,
// screenshots}. The pytest side asserts on it; screenshots land in <output dir>.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, outdir, scenarioPath] = process.argv.slice(2);
if (!base || !outdir) {
  console.error('usage: node run.mjs <base url> <output dir> [scenario.json]');
  process.exit(2);
}
const scenario = scenarioPath ? JSON.parse(readFileSync(scenarioPath, 'utf8')) : {};
const XSS_NAME = '<script>alert(1)</script>';
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c'];
const TIMEOUT = 15000;

mkdirSync(outdir, { recursive: true });
const result = { checks: [], console_errors: [], dialogs: [], screenshots: [] };


function check(name, ok, detail = '') {
  result.checks.push({ name, ok: Boolean(ok), detail: String(detail) });
}

async function step(name, fn) {
  try {
    await fn();
  } catch (err) {
    check(name, false, `${err && err.stack ? err.stack.split('\n').slice(0, 3).join(' | ') : err}`);
  }
}

async function shot(page, name, locator) {
  const path = join(outdir, `${name}.png`);
  if (locator) await locator.screenshot({ path });
  else await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
}

// Pixels of a canvas drawn in a colour (within a tolerance), and pixels drawn at all.
async function canvasPixels(locator, colors) {
  return locator.evaluate((canvas, hexes) => {
    const ctx = canvas.getContext('2d');
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const targets = hexes.map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
    const byColor = targets.map(() => 0);
    let painted = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] < 100) continue;
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (r < 245 || g < 245 || b < 245) painted += 1;
      targets.forEach(([tr, tg, tb], k) => {
        if (Math.abs(r - tr) + Math.abs(g - tg) + Math.abs(b - tb) < 60) byColor[k] += 1;
      });
    }
    return { painted, byColor, width: canvas.width, height: canvas.height };
  }, colors);
}

const browser = await chromium.launch({
  executablePath: process.env.CAIRN_E2E_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
const page = await context.newPage();
page.setDefaultTimeout(TIMEOUT);
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  const where = msg.location().url || '';
  // The invalid-filter step expects its 400 answer; anything else is a failure.
  if (msg.text().includes('status of 400') && /\/runs\?.*filter=/.test(where)) return;
  result.console_errors.push(`${msg.text()} (${where})`);
});
page.on('pageerror', (err) => result.console_errors.push(`pageerror: ${err.message}`));
page.on('dialog', async (dialog) => { result.dialogs.push(dialog.message()); await dialog.dismiss(); });
// Nothing but the app itself may be contacted: the UI must work offline.
await context.route('**/*', (route) => {
  const url = route.request().url();
  if (url.startsWith(base) || url.startsWith('data:')) return route.continue();
  result.console_errors.push(`external request blocked: ${url}`);
  return route.abort();
});

const runRows = () => page.locator('table.runs tbody tr[data-run-id]');
const rowOf = (name) => page.locator('table.runs tbody tr[data-run-id]', { has: page.locator('a.run-link', { hasText: name }) });

async function openRuns() {
  await page.goto(`${base}/#/experiments`);
  await page.locator('a.exp-link', { hasText: 'vision' }).click();
  await page.waitForSelector('table.runs tbody tr[data-run-id]');
}

try {
  // -- experiments -> runs table ----------------------------------------------------------------
  await step('experiments page', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('table.experiments');
    const names = await page.locator('a.exp-link').allTextContents();
    check('experiments page lists the experiments', names.includes('vision') && names.includes('empty experiment'), names.join(', '));
  });

  await step('runs table', async () => {
    await openRuns();
    const count = await runRows().count();
    check('runs table shows every run', count === 4, `rows: ${count}`);
    const headers = await page.locator('table.runs thead th.sortable').allTextContents();
    check('chosen params and latest metrics are columns',
      ['lr', 'batch_size', 'optimizer', 'loss', 'accuracy'].every((k) => headers.some((h) => h.startsWith(k))), headers.join('|'));
    const hostile = rowOf(XSS_NAME);
    const text = await hostile.locator('a.run-link').textContent();
    const injected = await page.locator('#app script, #app img').count();
    check('a run named <script> shows as text', text === XSS_NAME && injected === 0, `text=${text} injected=${injected}`);
    await shot(page, 'runs-table', page.locator('main'));
  });

  await step('sorting', async () => {
    await page.locator('table.runs th.sortable[data-order="metrics.`loss`"]').click();
    await page.waitForSelector('th[data-order="metrics.`loss`"][aria-sort="descending"]');
    const desc = (await page.locator('table.runs td.metric[data-key="loss"]').allTextContents()).map(Number);
    await page.locator('table.runs th.sortable[data-order="metrics.`loss`"]').click();
    await page.waitForSelector('th[data-order="metrics.`loss`"][aria-sort="ascending"]');
    const asc = (await page.locator('table.runs td.metric[data-key="loss"]').allTextContents()).map(Number);
    const sortedDesc = [...desc].sort((a, b) => b - a);
    check('clicking a metric header sorts descending then ascending',
      JSON.stringify(desc) === JSON.stringify(sortedDesc) && JSON.stringify(asc) === JSON.stringify([...desc].reverse()),
      `desc=${desc} asc=${asc}`);
  });

  await step('filter box', async () => {
    const input = page.locator('input.filter-input');
    await input.fill('metrics.loss < 0.1');
    await input.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 2);
    const names = await page.locator('table.runs a.run-link').allTextContents();
    check('a valid filter narrows the table', names.sort().join(',') === 'baseline,wider', names.join(','));

    const bad = 'metrics.loss <<< 1';
    await input.fill(bad);
    await input.press('Enter');
    await page.waitForSelector('.filter-error:not([hidden]) pre.caret');
    const caret = await page.locator('.filter-error pre.caret').textContent();
    const [echo, pointer] = caret.split('\n');
    const position = pointer.indexOf('^');
    const message = await page.locator('.filter-error .message').textContent();
    const invalid = await input.evaluate((el) => el.classList.contains('invalid'));
    check('an invalid filter shows an inline error with a caret at the position',
      echo === bad && position >= 13 && bad[position] === '<' && invalid && message.length > 5,
      `position=${position} message=${message}`);
    await shot(page, 'filter-error', page.locator('main'));
    await page.locator('button.clear-filter').click();
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 4);
    check('clearing the filter restores the table and hides the error', await page.locator('.filter-error').isHidden());
  });

  await step('live refresh', async () => {
    await openRuns();
    const live = rowOf('live-run');
    const before = await live.locator('td.status').textContent();
    check('the live badge shows while a run is RUNNING', before === 'RUNNING' && await page.locator('.live').isVisible(), before);
    if (scenario.live_command) {
      execFileSync(scenario.live_command[0], scenario.live_command.slice(1), { stdio: 'inherit' });
      await page.waitForFunction(() => {
        const row = [...document.querySelectorAll('table.runs tbody tr')].find((tr) => tr.textContent.includes('live-run'));
        return row && row.querySelector('td.status').textContent === 'FINISHED';
      }, null, { timeout: 12000 });
      const loss = await rowOf('live-run').locator('td.metric[data-key="loss"]').textContent();
      check('the table refreshes by itself when a running run ends', loss === '0.01', `loss=${loss}`);
    }
  });

  // -- run page ---------------------------------------------------------------------------------
  await step('run page charts', async () => {
    await openRuns();
    await rowOf('baseline').locator('a.run-link').click();
    await page.waitForSelector('.chart-card[data-metric="loss"] canvas');
    await page.waitForTimeout(200);
    const loss = await canvasPixels(page.locator('.chart-card[data-metric="loss"] canvas'), [PALETTE[0]]);
    check('the loss chart draws its line (canvas not blank)', loss.byColor[0] > 150 && loss.painted > 300, JSON.stringify(loss));
    const title = await page.locator('h1.run-name').textContent();
    check('run page shows the run', title === 'baseline', title);
    await shot(page, 'metric-chart', page.locator('.chart-card[data-metric="loss"]'));

    for (const mode of ['wall', 'relative']) {
      await page.locator('select.x-axis').selectOption(mode);
      await page.waitForTimeout(400);
      const pixels = await canvasPixels(page.locator('.chart-card[data-metric="loss"] canvas'), [PALETTE[0]]);
      const label = await page.locator('.chart-card[data-metric="loss"] .u-axis').first().textContent();
      check(`x axis ${mode} redraws the chart`, pixels.byColor[0] > 150, `${JSON.stringify(pixels)} axis=${label.slice(0, 60)}`);
    }
    await page.locator('select.x-axis').selectOption('step');
    await page.locator('input.log-scale').check();
    await page.waitForTimeout(300);
    const log = await canvasPixels(page.locator('.chart-card[data-metric="loss"] canvas'), [PALETTE[0]]);
    const ticks = await page.locator('.chart-card[data-metric="loss"] .u-axis').nth(1).textContent();
    check('log scale redraws the chart', log.byColor[0] > 150, `${JSON.stringify(log)} ticks=${ticks}`);
    await page.locator('input.log-scale').uncheck();
    await page.locator('input.smoothing').fill('0.9');
    await page.waitForTimeout(300);
    const series = await page.locator('.chart-card[data-metric="loss"] .u-legend .u-series').count();
    const smooth = await canvasPixels(page.locator('.chart-card[data-metric="loss"] canvas'), [PALETTE[0]]);
    check('smoothing adds a smoothed line over the faint raw one', series === 3 && smooth.byColor[0] > 150, `legend entries=${series}`);
    await shot(page, 'run-page');
  });

  await step('artifact browser', async () => {
    const file = (path) => page.locator(`ul.tree button.file[data-path="${path}"]`);
    const dir = (path) => page.locator(`ul.tree button.dir[data-path="${path}"]`);
    await file('notes.txt').click();
    await page.waitForSelector('.preview-body[data-kind="text"] pre');
    check('text preview', (await page.locator('.preview-body pre').textContent()).includes('epoch 2 done'));

    await file('config.json').click();
    await page.waitForSelector('.preview-body[data-kind="json"] pre');
    const json = await page.locator('.preview-body pre').textContent();
    check('JSON preview is pretty-printed and escaped', json.includes('  "layers": [') && json.includes(XSS_NAME), json.slice(0, 80));

    await file('config.yaml').click();
    await page.waitForSelector('.preview-body[data-kind="yaml"] pre');
    check('YAML preview', (await page.locator('.preview-body pre').textContent()).includes('layers:'));

    await dir('images').click();
    await file('images/sample.png').click();
    await page.waitForSelector('.preview-body[data-kind="image"] img');
    await page.waitForFunction(() => document.querySelector('.preview-body img').complete);
    const width = await page.locator('.preview-body img').evaluate((img) => img.naturalWidth);
    check('image preview loads the image', width === 48, `naturalWidth=${width}`);

    await dir('model').click();
    await file('model/MLmodel').click();
    await page.waitForSelector('.preview-body[data-kind="mlmodel"] .signature-part');
    const inputs = await page.locator('.signature-part').first().locator('tbody td:first-child').allTextContents();
    const example = await page.locator('.input-example pre').textContent();
    const exampleCells = await page.locator('.example-table tbody td').allTextContents();
    check('MLmodel preview shows the signature and the input example',
      inputs.join(',') === 'age,plan' && example.includes('"pro"') && exampleCells.join(',') === '42,pro,31.5,free',
      `inputs=${inputs} example=${example.slice(0, 60)} cells=${exampleCells}`);
    await shot(page, 'mlmodel-preview', page.locator('.artifacts'));

    await file('report.html').click();
    await page.waitForSelector('.preview-body[data-kind="text"] pre');
    const html = await page.locator('.preview-body pre').textContent();
    check('an HTML artifact is shown as text, never rendered', html.includes(XSS_NAME) && result.dialogs.length === 0, html);

    const raw = await page.evaluate(async () => {
      const link = document.querySelector('.preview-links a');
      const response = await fetch(link.href);
      return { type: response.headers.get('content-type'), nosniff: response.headers.get('x-content-type-options'), csp: response.headers.get('content-security-policy') };
    });
    check('the raw HTML artifact is text/plain, nosniff, sandboxed',
      raw.type.startsWith('text/plain') && raw.nosniff === 'nosniff' && raw.csp.startsWith('sandbox'), JSON.stringify(raw));
  });

  await step('checkpoints', async () => {
    const rows = await page.locator('table.checkpoints tbody tr').count();
    const command = await page.locator('table.checkpoints tr[data-step="200"] code.resume-command').textContent();
    const broken = await page.locator('table.checkpoints tr[data-step="250"] .warning').textContent();
    check('checkpoints list with the resume command',
      rows === 3 && command.includes('cairn.pytorch.resume(run_id="') && command.includes('step=200') && broken.includes('incomplete'),
      `${rows} rows; ${command}`);
  });

  // -- compare ----------------------------------------------------------------------------------
  await step('compare two runs', async () => {
    await openRuns();
    await rowOf('baseline').locator('td.check input').check();
    await rowOf('wider').locator('td.check input').check();
    await page.locator('button.compare-selected').click();
    await page.waitForSelector('.chart-card[data-metric="loss"] canvas');
    await page.waitForSelector('.parallel canvas');
    await page.waitForTimeout(500);
    const legend = await page.locator('.legend a.run-link').allTextContents();
    check('compare page shows the two selected runs', legend.length === 2 && legend.includes('baseline') && legend.includes('wider'), legend.join(','));
    const overlay = await canvasPixels(page.locator('.chart-card[data-metric="loss"] canvas'), PALETTE.slice(0, 2));
    check('overlaid chart draws one line per run', overlay.byColor[0] > 100 && overlay.byColor[1] > 100, JSON.stringify(overlay));
    const diff = await page.locator('table.diff tr.differs th').allTextContents();
    check('diff table lists the differing params and metrics',
      ['lr', 'batch_size', 'optimizer', 'loss', 'accuracy'].every((k) => diff.includes(k)), diff.join(','));
    const parallel = await canvasPixels(page.locator('.parallel canvas').first(), PALETTE.slice(0, 2));
    check('parallel coordinates draw one polyline per run', parallel.byColor[0] > 50 && parallel.byColor[1] > 50, JSON.stringify(parallel));
    await shot(page, 'compare');
  });

  // -- delete and restore -----------------------------------------------------------------------
  await step('delete and restore from the table', async () => {
    await openRuns();
    await rowOf(XSS_NAME).locator('td.check input').check();
    await page.locator('button.delete-selected').click();
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 3);
    check('a deleted run leaves the active table', await rowOf(XSS_NAME).count() === 0);
    await page.locator('select.view-select').selectOption('deleted');
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 1);
    check('it is listed under Deleted runs', await rowOf(XSS_NAME).count() === 1);
    await rowOf(XSS_NAME).locator('td.check input').check();
    await page.locator('button.restore-selected').click();
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 0);
    await page.locator('select.view-select').selectOption('active');
    await page.waitForFunction(() => document.querySelectorAll('table.runs tbody tr[data-run-id]').length === 4);
    check('restore brings it back', await rowOf(XSS_NAME).count() === 1);
  });

  await step('delete and restore from the run page', async () => {
    await rowOf('wider').locator('a.run-link').click();
    await page.locator('button.delete-run').click();
    await page.waitForSelector('.badge.lifecycle');
    const deleted = await page.locator('.badge.lifecycle').textContent();
    await page.locator('button.restore-run').click();
    await page.waitForSelector('button.delete-run');
    check('the run page deletes and restores its run', deleted === 'deleted' && await page.locator('.badge.lifecycle').count() === 0);
  });

  // -- registry ---------------------------------------------------------------------------------
  await step('registry pages', async () => {
    await page.goto(`${base}/#/models`);
    await page.waitForSelector('table.models');
    const aliases = await page.locator('table.models .badge.alias').allTextContents();
    check('models page lists models with aliases', aliases.includes('@champion → v1') && aliases.includes('@challenger → v2'), aliases.join(','));
    await page.locator('a.model-link', { hasText: 'classifier' }).click();
    await page.waitForSelector('table.versions');
    const stage = await page.locator('table.versions tr[data-version="1"] .badge').first().textContent();
    const versionAliases = await page.locator('table.versions tr[data-version="1"] .badge.alias').allTextContents();
    check('versions show stages and aliases', stage === 'Production' && versionAliases.join() === '@champion', `${stage} ${versionAliases}`);
    await page.locator('table.versions tr[data-version="1"] a.version-link').click();
    await page.waitForSelector('a.lineage-run');
    await page.locator('a.lineage-run').click();
    await page.waitForSelector('h1.run-name');
    check('lineage links to the source run', await page.locator('h1.run-name').textContent() === 'baseline');
  });

  check('no XSS dialog ever opened', result.dialogs.length === 0, result.dialogs.join(' | '));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
