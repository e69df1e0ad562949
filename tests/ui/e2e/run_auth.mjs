// End-to-end test of the UI behind `cairn server --auth` in Debian's headless Chromium.
//
//   node run_auth.mjs <base url> <output dir> <scenario.json>
//
// scenario: {password, reader, manager, experiment_id, hidden_experiment_id, run_id, run_name}.
// The reader has READ on the experiment, the manager MANAGE; neither has a grant on the hidden one.
// Prints one JSON object on the last line of stdout: {checks: [{name, ok, detail}], console_errors, dialogs}.

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, outdir, scenarioPath] = process.argv.slice(2);
if (!base || !outdir || !scenarioPath) {
  console.error('usage: node run_auth.mjs <base url> <output dir> <scenario.json>');
  process.exit(2);
}
const scenario = JSON.parse(readFileSync(scenarioPath, 'utf8'));
const TIMEOUT = 15000;
mkdirSync(outdir, { recursive: true });
const result = { checks: [], console_errors: [], dialogs: [] };
// Answers the scenario provokes on purpose: 401 before login, 403 for the hidden experiment.
const expected = [/status of 401/, /status of 403/];

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

const browser = await chromium.launch({
  executablePath: process.env.CAIRN_E2E_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1300, height: 850 } });
const page = await context.newPage();
page.setDefaultTimeout(TIMEOUT);
page.on('console', (msg) => {
  if (msg.type() !== 'error' || expected.some((re) => re.test(msg.text()))) return;
  result.console_errors.push(`${msg.text()} (${msg.location().url || ''})`);
});
page.on('pageerror', (err) => result.console_errors.push(`pageerror: ${err.message}`));
page.on('dialog', async (dialog) => { result.dialogs.push(dialog.message()); await dialog.dismiss(); });
await context.route('**/*', (route) => {
  const url = route.request().url();
  if (url.startsWith(base) || url.startsWith('data:')) return route.continue();
  result.console_errors.push(`external request blocked: ${url}`);
  return route.abort();
});

async function logIn(name, password) {
  await page.waitForSelector('form.login-form');
  await page.locator('input.login-name').fill(name);
  await page.locator('input.login-password').fill(password);
  await page.locator('button.login-submit').click();
  await page.waitForFunction((user) => document.querySelector('#user-box .user-name')?.textContent === user, name);
}

const runLink = () => page.locator('table.runs a.run-link', { hasText: scenario.run_name });

try {
  await step('login page', async () => {
    await page.goto(`${base}/#/experiments/${scenario.experiment_id}`);
    await page.waitForSelector('form.login-form');
    check('an anonymous visitor gets the login page', page.url().includes('#/login'), page.url());
    await page.locator('input.login-name').fill(scenario.reader);
    await page.locator('input.login-password').fill('wrong password');
    await page.locator('button.login-submit').click();
    await page.waitForSelector('.login-error .error-box');
    const message = await page.locator('.login-error .error-box').textContent();
    check('a wrong password shows why the login failed', message.includes('wrong user name or password'), message);
  });

  await step('read user', async () => {
    await logIn(scenario.reader, scenario.password);
    await page.waitForSelector('table.runs tbody tr[data-run-id]');
    check('after login the page the visitor asked for opens', page.url().includes(`#/experiments/${scenario.experiment_id}`), page.url());
    await page.waitForTimeout(300);
    const toasts = await page.locator('#toasts').textContent();
    check('the runs page loads without an error toast', toasts === '', toasts);
    const deleteButtons = await page.locator('button.delete-selected, button.restore-selected').count();
    check('a READ user sees no delete or restore button in the runs table', deleteButtons === 0, `buttons=${deleteButtons}`);
    await runLink().click();
    await page.waitForSelector('h1.run-name');
    const runButtons = await page.locator('button.delete-run, button.restore-run').count();
    check('a READ user sees no delete button on the run page', runButtons === 0, `buttons=${runButtons}`);
    await page.goto(`${base}/#/experiments`);
    await page.waitForSelector('table.experiments');
    const names = await page.locator('a.exp-link').allTextContents();
    check('a READ user sees only the experiments granted to it', names.join(',') === 'vision', names.join(','));
    await page.goto(`${base}/#/experiments/${scenario.hidden_experiment_id}`);
    await page.waitForSelector('#app .error-box');
    const error = await page.locator('#app .error-box').textContent();
    check('a 403 is shown as an error', /permission denied/i.test(error), error);
    await page.locator('button.logout').click();
    await page.waitForSelector('form.login-form');
    const session = await page.evaluate(async () => (await fetch('/api/session')).json());
    check('logout ends the session', session.user === null && await page.locator('#user-box .user-name').count() === 0, JSON.stringify(session.user));
  });

  await step('manage user', async () => {
    await logIn(scenario.manager, scenario.password);
    await page.goto(`${base}/#/experiments/${scenario.experiment_id}`);
    await page.waitForSelector('table.runs tbody tr[data-run-id]');
    check('a MANAGE user sees the delete button', await page.locator('button.delete-selected').count() === 1);
    // MLflow's run URL, as its client prints it, opens the run page.
    await page.goto(`${base}/#/experiments/${scenario.experiment_id}/runs/${scenario.run_id}`);
    await page.waitForSelector('h1.run-name');
    check("MLflow's #/experiments/<id>/runs/<id> link opens the run page",
      await page.locator('h1.run-name').textContent() === scenario.run_name);
    await page.locator('button.delete-run').click();
    await page.waitForSelector('.badge.lifecycle');
    const stage = await page.evaluate(async (runId) => (await (await fetch(`/api/runs/${runId}`)).json()).run.lifecycle_stage, scenario.run_id);
    check('a MANAGE user deletes a run', stage === 'deleted', stage);
    await page.screenshot({ path: join(outdir, 'auth-run-deleted.png'), fullPage: true });
  });

  await step('session ends while the page is open', async () => {
    await context.clearCookies();
    await page.goto(`${base}/#/experiments/${scenario.experiment_id}`);
    await page.waitForSelector('form.login-form');
    await page.waitForFunction(() => !document.querySelector('#user-box .user-name'));
    check('a 401 from any call brings the login view back and clears the header', page.url().includes('#/login?next='), page.url());
  });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
