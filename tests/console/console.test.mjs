// End-to-end test of the admin web console: starts a real servente (the binary in
// $SERVENTE_BIN, default target/debug/servente; this script builds nothing), drives the console
// in headless Chromium and saves screenshots to target/console-screenshots/.
// Prints one line per check (`ok - ...` / `not ok - ...`); exits 1 when any check fails.
// Run it with tests/console/run, which installs what is missing first.
// SPDX-License-Identifier: Apache-2.0

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.resolve(ROOT, process.env.SERVENTE_BIN || 'target/debug/servente');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'target/console-screenshots');
const WAIT = 15_000; // every single wait
const DEADLINE = 110_000; // the whole run
const ADMIN_PASSWORD = 'e2e-admin-pass-7Qx9';
const USER = 'carol';
const USER_PASSWORD = 'e2e-carol-pass-3Kd2';
const DESKTOP = { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 };
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true };
const APP = 'hello'; // the supervised app of the test config (a tiny Python HTTP server)

/* ---------------------------------------------------------------- checks */

let passed = 0, failed = 0;
function check(ok, what, detail = '') {
  if (ok) passed++; else failed++;
  console.log(`${ok ? 'ok' : 'not ok'} - ${what}${!ok && detail ? ` (${detail})` : ''}`);
  return ok;
}
/** Runs one step; an exception (a timeout, a missing element) fails it instead of the run. */
async function step(what, fn) {
  try {
    const r = await fn();
    if (r === false) return false;
    return check(true, what);
  } catch (e) {
    return check(false, what, String((e && e.message) || e).split('\n')[0]);
  }
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for timeouts raced against an event). */
const idle = ms => new Promise(r => setTimeout(r, ms).unref());

/* ---------------------------------------------------------------- the server */

let server = null, serverLog = '', tmpDir = null;
const stripAnsi = s => s.replace(/\x1b\[[0-9;]*m/g, '');

function writeConfig(dir) {
  const site = path.join(dir, 'site');
  fs.mkdirSync(site);
  fs.writeFileSync(path.join(site, 'index.html'),
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>e2e</title></head>\n' +
    '<body><p>hello from the console test</p></body></html>\n');
  // The app: answers every GET with its instance number and prints a line per request.
  const app = path.join(dir, 'app.py');
  fs.writeFileSync(app, `# Written by tests/console/console.test.mjs: an app servente supervises.
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("SERVENTE_INSTANCE", "?")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hi from {INSTANCE}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"{self.command} {self.path} 200", flush=True)

    def log_message(self, format, *args):
        pass  # the default writes to stderr; the line above is the log


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print(f"instance {INSTANCE} listening on 127.0.0.1:{os.environ['PORT']}", flush=True)
server.serve_forever()
`);
  const config = path.join(dir, 'servente.toml');
  fs.writeFileSync(config, `# Written by tests/console/console.test.mjs
[server]
data_dir = ${JSON.stringify(path.join(dir, 'data'))}
shutdown_grace = "1s"

[access_log]
output = "off"

[[listener]]
name = "web"
address = "127.0.0.1:0"
role = "web"

[[listener]]
name = "admin"
address = "127.0.0.1:0"
role = "admin"

[[site]]
name = "e2e"
root = ${JSON.stringify(site)}

[[site.proxy]]
path = "/app/"
upstream = "${APP}"

[[app]]
name = "${APP}"
command = "python3"
args = [${JSON.stringify(app)}]
instances = 2
stop_grace = "2s"
`);
  return config;
}

/** Starts servente; resolves to {web, admin} base URLs once both listeners are announced. */
function startServer(config, dir) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, SERVENTE_ADMIN_PASSWORD: ADMIN_PASSWORD, NO_COLOR: '1' };
    delete env.RUST_LOG;
    server = spawn(BIN, ['serve', '--config', config], { cwd: dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
    const urls = {};
    const timer = setTimeout(() => reject(new Error(`no "listening on" lines within ${WAIT / 1000} s`)), WAIT);
    let pending = '';
    // Read stderr for the whole run: a full pipe would block the server's logging.
    server.stderr.setEncoding('utf8');
    server.stderr.on('data', chunk => {
      serverLog += chunk;
      if (serverLog.length > 200_000) serverLog = serverLog.slice(-100_000);
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        const m = /^servente: listening on (http:\/\/127\.0\.0\.1:\d+) \(listener "(\w+)", role (\w+)\)/.exec(stripAnsi(line));
        if (m) urls[m[3]] = m[1];
      }
      if (urls.web && urls.admin) { clearTimeout(timer); resolve(urls); }
    });
    server.on('error', e => { clearTimeout(timer); reject(e); });
    server.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`servente exited early (${code ?? sig})`)); });
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise(r => server.once('exit', r));
  server.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), idle(5000).then(() => false)])) return;
  server.kill('SIGKILL');
  await Promise.race([exited, idle(2000)]);
}
process.on('exit', () => {
  if (server && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/* ---------------------------------------------------------------- the browser */

/**
 * A new browser context and page. Every JavaScript error, CSP violation and console error is
 * a failure, except the console's note about an HTTP status this test causes on purpose
 * (`allowStatus`); any 5xx answer is a failure too.
 */
async function openPage(browser, label, options, allowStatus = [401]) {
  const ctx = await browser.newContext({ ...options, colorScheme: 'light', locale: 'en-US', timezoneId: 'UTC' });
  ctx.setDefaultTimeout(WAIT);
  // CSP violations also show as console errors; listening to the event catches every one.
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', e => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} in ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = await ctx.newPage();
  const problems = [];
  const allowed = new RegExp(`^Failed to load resource: the server responded with a status of (${allowStatus.join('|')})\\b`);
  page.on('pageerror', e => problems.push(`JavaScript error: ${e.message}`));
  page.on('console', m => {
    if (m.type() === 'error' && !allowed.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('response', r => { if (r.status() >= 500) problems.push(`${r.status()} from ${r.request().method()} ${r.url()}`); });
  pages.push({ label, page, problems });
  return page;
}
const pages = [];

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

async function signIn(page, user, password) {
  await page.fill('#signin-user', user);
  await page.fill('#signin-password', password);
  await page.click('#signin-submit');
}

const text = async (page, sel) => ((await page.textContent(sel)) || '').trim();

/** Waits until a view has finished loading: no table or list still says "Loading…". */
async function loaded(page, view) {
  await page.waitForSelector(`#view[data-view="${view}"]`);
  await page.waitForFunction(() => !/Loading…/.test(document.querySelector('#view').textContent));
}

/* ---------------------------------------------------------------- traffic */

/** `total` GETs of the site's index page, in batches of `batch` every `every` ms. */
async function traffic(base, total = 300, batch = 10, every = 100) {
  let good = 0, bad = 0;
  const one = async () => {
    try {
      const r = await fetch(`${base}/`, { signal: AbortSignal.timeout(5000) });
      const body = await r.text();
      if (r.status === 200 && body.includes('hello from the console test')) good++; else bad++;
    } catch { bad++; }
  };
  const all = [];
  for (let sent = 0; sent < total; sent += batch) {
    for (let i = 0; i < batch && sent + i < total; i++) all.push(one());
    await sleep(every);
  }
  await Promise.all(all);
  return { good, bad };
}

/** `n` GETs of /app/ on the web listener, one after another; resolves to the bodies (throws on a non-200). */
async function appRequests(base, n) {
  const bodies = [];
  for (let i = 0; i < n; i++) {
    const r = await fetch(`${base}/app/?n=${i}`, { signal: AbortSignal.timeout(5000) });
    const body = (await r.text()).trim();
    if (r.status !== 200) throw new Error(`GET /app/ answered ${r.status}: ${body.slice(0, 120)}`);
    bodies.push(body);
  }
  return bodies;
}

/** The instances of the app as the Apps page shows them: [{id, pid, ready}]. */
const appRows = page => page.$$eval(`[data-app="${APP}"] tr[data-instance]`, rs => rs.map(r => ({
  id: r.dataset.instance, pid: r.dataset.pid, ready: /^ready$/.test(r.cells[3].textContent.trim()),
})));

/** Waits until the app's card says running with `n` ready instances. */
async function appRunning(page, n = 2) {
  await page.waitForFunction(([app, n]) => {
    const card = document.querySelector(`[data-app="${app}"]`);
    if (!card || card.querySelector('.app-status')?.textContent !== 'running') return false;
    const rows = [...card.querySelectorAll('tr[data-instance]')];
    return rows.length === n && rows.every(r => r.cells[3].textContent.trim() === 'ready' && r.dataset.pid);
  }, [APP, n]);
}

/* ---------------------------------------------------------------- the test */

async function run() {
  check(fs.existsSync(BIN), `servente binary exists: ${path.relative(ROOT, BIN) || BIN}`);
  if (!fs.existsSync(BIN)) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.rmSync(path.join(SHOTS, f));

  const dir = tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'servente-console-'));
  let browser = null;
  try {
    const urls = await startServer(writeConfig(dir), dir);
    check(true, `servente started (web ${urls.web}, admin ${urls.admin})`);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // playwright-core adds a fresh, temporary user data dir of its own.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
      timeout: WAIT,
    });

    await adminSession(browser, urls);
    await nonAdminSession(browser, urls);
    await failedLoads(browser, urls);
    await phone(browser, urls);
  } finally {
    for (const { label, problems } of pages) {
      check(problems.length === 0, `no JavaScript error or CSP violation (${label})`, problems.slice(0, 5).join(' | '));
    }
    if (browser) await browser.close().catch(() => {});
    await stopServer();
    fs.rmSync(dir, { recursive: true, force: true });
    tmpDir = null;
  }
}

async function adminSession(browser, urls) {
  const page = await openPage(browser, 'desktop, admin', DESKTOP);
  const admin = urls.admin;

  await step('sign-in page shows', async () => {
    const r = await page.goto(`${admin}/`);
    if (!check(r && r.status() === 200, 'console page answers 200')) return false;
    const csp = (r.headers()['content-security-policy'] || '');
    check(/script-src 'self'/.test(csp), 'console page has a strict Content-Security-Policy', csp);
    await page.waitForSelector('#signin-form', { state: 'visible' });
    if (!await page.isHidden('#app')) throw new Error('the app shell is visible before signing in');
    await shot(page, 'signin');
  });

  await step('wrong password is refused with a visible error', async () => {
    await signIn(page, 'admin', 'not-the-password');
    await page.waitForFunction(() => document.querySelector('#signin-error').textContent.trim().length > 0);
    const err = await text(page, '#signin-error');
    if (!/wrong user name or password/i.test(err)) throw new Error(`error text: ${JSON.stringify(err)}`);
    if (!await page.isVisible('#signin-error')) throw new Error('the error is not visible');
    if (!await page.isHidden('#app')) throw new Error('the app shell is visible after a refused sign-in');
  });

  await step('admin signs in and the dashboard appears', async () => {
    await signIn(page, 'admin', ADMIN_PASSWORD);
    await page.waitForSelector('#app', { state: 'visible' });
    await page.waitForSelector('#view[data-view="dashboard"] #chart-requests');
    if (!page.url().endsWith('#/dashboard')) throw new Error(`url ${page.url()}`);
    const who = await text(page, '#whoami');
    if (!/admin/i.test(who)) throw new Error(`whoami: ${who}`);
    await page.waitForFunction(() => document.querySelector('#dash-state').textContent.startsWith('live'));
    await page.waitForFunction(() => document.querySelector('#stat-version').textContent !== '—');
    await page.waitForSelector('#sites-table tbody tr:not(.empty)');
    const sites = await text(page, '#sites-table');
    if (!sites.includes('e2e')) throw new Error(`sites table: ${sites}`);
  });

  await step('traffic on the web listener shows on the dashboard (#rate-requests > 0, chart moves)', async () => {
    const before = await page.$eval('#chart-requests', c => c.toDataURL());
    let maxRate = 0;
    const load = traffic(urls.web);
    // The console's own polling adds about 1 request/s; 300 requests in about 3 s add ~100/s.
    const seen = page.waitForFunction(() => parseFloat(document.querySelector('#rate-requests').textContent) > 5,
      null, { timeout: WAIT, polling: 100 });
    seen.catch(() => {}); // awaited below, after the traffic
    const { good, bad } = await load;
    check(good === 300 && bad === 0, 'web listener served 300 requests from Node', `${good} ok, ${bad} failed`);
    await seen;
    maxRate = parseFloat(await text(page, '#rate-requests'));
    if (!(maxRate > 0)) throw new Error(`#rate-requests = ${maxRate}`);
    await page.waitForFunction(() => {
      const row = [...document.querySelectorAll('#site-rates tbody tr')].find(r => r.cells[0]?.textContent === 'e2e');
      return row && parseInt(row.cells[4].textContent.replace(/\D/g, ''), 10) >= 300;
    });
    const after = await page.$eval('#chart-requests', c => c.toDataURL());
    if (after === before) throw new Error('the requests chart did not change');
    await sleep(1200); // one more reading, so the screenshot shows the spike and the way down
    await shot(page, 'dashboard');
  });

  await step(`create user ${USER} through #user-create and find them in #users-table`, async () => {
    await page.click('#nav-users');
    await loaded(page, 'users');
    await page.waitForSelector('#users-table tr[data-user="admin"]');
    await page.fill('#user-create input[name=name]', USER);
    await page.fill('#user-create input[name=display_name]', 'Carol E2E');
    await page.fill('#user-create input[name=email]', 'carol@example.org');
    await page.fill('#user-create input[name=password]', USER_PASSWORD);
    await page.click('#user-create-submit');
    await page.waitForSelector(`#users-table tr[data-user="${USER}"]`);
    const row = await text(page, `#users-table tr[data-user="${USER}"]`);
    if (!row.includes('Carol E2E') || !row.includes('carol@example.org') || !row.includes('active')) {
      throw new Error(`row: ${row}`);
    }
    // A chosen password is not echoed back as a "generated password" box.
    if (await page.$('#user-secret-value')) throw new Error('a generated password was shown though one was given');
    await page.waitForSelector('.toast.ok');
    await shot(page, 'users');
  });

  await step('groups page lists the admins group with admin as member', async () => {
    await page.click('#nav-groups');
    await loaded(page, 'groups');
    await page.waitForSelector('#groups-list [data-group="admins"]');
    const g = await text(page, '#groups-list [data-group="admins"] .chips');
    if (!g.includes('admin')) throw new Error(`admins members: ${g}`);
    await page.waitForSelector('#group-create');
    await shot(page, 'groups');
  });

  await step('tokens page: create a read-only token and see its secret once', async () => {
    await page.click('#nav-tokens');
    await loaded(page, 'tokens');
    await page.fill('#token-create input[name=name]', 'e2e read');
    await page.check('#token-create input[value="admin:read"]');
    await page.fill('#token-create input[name=expires_in_days]', '1');
    await page.click('#token-create button[type=submit]');
    await page.waitForSelector('#token-secret-value');
    const secret = await page.inputValue('#token-secret-value');
    if (!/^st_/.test(secret)) throw new Error(`secret: ${secret}`);
    await page.waitForSelector('#tokens-table tr[data-token]');
    const row = await text(page, '#tokens-table tr[data-token]');
    if (!row.includes('e2e read') || !row.includes('admin:read')) throw new Error(`row: ${row}`);
    if (row.includes(secret)) throw new Error('the token list shows the secret');
    await shot(page, 'tokens');
  });

  await step('config page shows the running config; Validate gives a success banner', async () => {
    await page.click('#nav-config');
    await page.waitForFunction(() => document.querySelector('#config-text')?.value.includes('[[listener]]'));
    const source = await text(page, '#config-source');
    if (!source.includes('servente.toml')) throw new Error(`source: ${source}`);
    await page.click('#config-validate');
    await page.waitForSelector('#config-result .banner.ok');
    const r = await text(page, '#config-result');
    if (!/valid/i.test(r)) throw new Error(`result: ${r}`);
    await shot(page, 'config');
  });

  await step(`apps page lists ${APP} as running with 2 ready instances`, async () => {
    await page.click('#nav-apps');
    await loaded(page, 'apps');
    if (page.url().split('#')[1] !== '/apps') throw new Error(`url ${page.url()}`);
    await appRunning(page, 2);
    await page.waitForFunction(() => document.querySelector('#apps-state').textContent.startsWith('live'));
    const summary = await text(page, `[data-app="${APP}"] .app-summary`);
    if (summary !== '2 of 2 instances ready') throw new Error(`summary: ${summary}`);
    const heads = await page.$$eval(`[data-app="${APP}"] table thead th`, ths => ths.map(t => t.textContent));
    if (heads.join() !== 'ID,PID,Address,Ready,Started,Restarts') throw new Error(`columns: ${heads}`);
    const rows = await page.$$eval(`[data-app="${APP}"] tr[data-instance]`, rs => rs.map(r => r.cells[2].textContent));
    if (!rows.every(a => /^127\.0\.0\.1:\d+$/.test(a))) throw new Error(`addresses: ${rows}`);
  });

  await step(`requests through [[site.proxy]] reach both instances and show in the app's logs`, async () => {
    const bodies = await appRequests(urls.web, 6);
    const from = new Set(bodies.map(b => (/^hi from (\d+)$/.exec(b) || [])[1]));
    if (from.has(undefined)) throw new Error(`bodies: ${bodies.join(' | ')}`);
    check(from.size === 2, 'both instances answered (round robin)', [...from].join(', '));
    // The page polls the logs every 2 s by itself; no click on Refresh needed.
    await page.waitForFunction(app => {
      const log = document.querySelector(`[data-app="${app}"] .app-log`);
      return [...log.querySelectorAll('.line')].filter(l => /GET \/app\/\?n=\d+ 200/.test(l.textContent)).length >= 6;
    }, APP);
    const lines = await page.$$eval(`[data-app="${APP}"] .app-log .line`, ls => ls.map(l => l.textContent));
    if (!lines.some(l => new RegExp(`^${APP}#\\d+ stdout: instance \\d+ listening on`).test(l))) {
      throw new Error(`no "listening" line: ${lines.slice(0, 5).join(' | ')}`);
    }
    await page.click(`[data-app="${APP}"] .app-logs-refresh`);
  });

  await step(`Rolling restart of ${APP} (confirmed) shows progress, then success, with new instances`, async () => {
    const before = await appRows(page);
    if (before.length !== 2) throw new Error(`instances before: ${JSON.stringify(before)}`);
    await page.click(`[data-app="${APP}"] .app-restart`);
    await page.waitForSelector('#dialog[open]');
    const title = await text(page, '#dialog-title');
    if (!title.includes(APP)) throw new Error(`dialog title: ${title}`);
    await page.click('#dialog-ok');
    await page.waitForSelector(`[data-app="${APP}"] .app-progress`);
    if (!await page.isDisabled(`[data-app="${APP}"] .app-restart`)) throw new Error('the button is enabled during the restart');
    await page.waitForSelector(`[data-app="${APP}"] .app-done`, { timeout: 45_000 });
    const msg = await text(page, `[data-app="${APP}"] .app-result`);
    if (!new RegExp(`Rolling restart of ${APP} done`).test(msg)) throw new Error(`result: ${msg}`);
    if (await page.isDisabled(`[data-app="${APP}"] .app-restart`)) throw new Error('the button stays disabled');
    const after = await appRows(page);
    const oldIds = new Set(before.map(i => i.id)), oldPids = new Set(before.map(i => i.pid));
    if (after.length !== 2 || !after.every(i => i.ready)) throw new Error(`instances after: ${JSON.stringify(after)}`);
    if (after.some(i => oldIds.has(i.id))) throw new Error(`ids did not change: ${JSON.stringify(before)} → ${JSON.stringify(after)}`);
    if (after.some(i => !i.pid || oldPids.has(i.pid))) throw new Error(`pids did not change: ${JSON.stringify(before)} → ${JSON.stringify(after)}`);
    check(true, `instances ${before.map(i => `#${i.id}/${i.pid}`).join(', ')} replaced by ${after.map(i => `#${i.id}/${i.pid}`).join(', ')}`);
    const bodies = await appRequests(urls.web, 4);
    const newIds = new Set(after.map(i => i.id));
    if (!bodies.every(b => newIds.has((/^hi from (\d+)$/.exec(b) || [])[1]))) throw new Error(`after the restart: ${bodies.join(' | ')}`);
    await appRunning(page, 2);
    // The new instances' own request lines arrive in the logs (tagged with their new ids).
    await page.waitForFunction(([app, ids]) => [...document.querySelectorAll(`[data-app="${app}"] .app-log .line`)]
      .some(l => ids.some(id => l.textContent.startsWith(`${app}#${id} stdout: GET /app/`))), [APP, [...newIds]]);
    await shot(page, 'apps');
  });

  await step('log page shows live application log lines', async () => {
    await page.click('#nav-log');
    await page.waitForSelector('#log-view .line');
    await page.waitForFunction(() => document.querySelector('#log-state').textContent.startsWith('live'));
    const log = await text(page, '#log-view');
    if (!log.includes('servente started')) throw new Error('"servente started" is not in the log view');
    await shot(page, 'log');
  });

  await step(`audit page lists the sign-ins and the creation of ${USER}`, async () => {
    await page.click('#nav-audit');
    await page.waitForSelector('#audit-table tbody tr:not(.empty) td time');
    const rows = await page.$$eval('#audit-table tbody tr', rs => rs.map(r => r.textContent));
    if (!rows.some(r => r.includes('user.add') && r.includes(USER))) throw new Error('no user.add entry for the new user');
    if (!rows.some(r => r.includes('token.') && r.includes('admin'))) throw new Error('no token entry');
    if (!rows.some(r => r.includes('app.restart') && r.includes(APP) && r.includes('ok'))) throw new Error('no app.restart entry');
    await shot(page, 'audit');
  });

  await step('sign out returns to the sign-in page', async () => {
    await page.click('#signout');
    await page.waitForSelector('#signin-form', { state: 'visible' });
    if (!await page.isHidden('#app')) throw new Error('the app shell is still visible');
    const msg = await text(page, '#signin-error');
    if (!/signed out/i.test(msg)) throw new Error(`message: ${msg}`);
    // The session is really gone: a reload does not sign in again.
    await page.reload();
    await page.waitForSelector('#signin-form', { state: 'visible' });
    if (!await page.isHidden('#app')) throw new Error('a reload after signing out shows the app again');
  });
}

/**
 * A signed-in user who is not in `admins`: the API answers 403 to everything but the session.
 * The console shows one calm "administrators only" screen with a way to sign out: no admin
 * navigation, no polling (so no 403 at all), no error toasts, no admin data.
 */
async function nonAdminSession(browser, urls) {
  // No 403 is allowed here: the console must not ask the API for anything it cannot have.
  const page = await openPage(browser, 'desktop, non-admin user', DESKTOP);
  const requests = [];
  page.on('request', r => requests.push(new URL(r.url()).pathname));
  const adminOnly = /This console is for administrators \(members of the `?admins`? group\); ask an administrator if you need access/;

  /** The no-access screen is up, alone, and stays calm for `ms`: no /api/ request but the session's. */
  async function calm(ms) {
    await page.waitForSelector('#noaccess', { state: 'visible' });
    const msg = await text(page, '#noaccess-message');
    if (!adminOnly.test(msg.replace(/\s+/g, ' '))) throw new Error(`message: ${JSON.stringify(msg)}`);
    if (!/^Signed in as Carol E2E\b/.test(msg)) throw new Error(`message does not name the user: ${JSON.stringify(msg)}`);
    if (!await page.isVisible('#noaccess-signout')) throw new Error('no visible Sign out button');
    const from = requests.length;
    await sleep(ms);
    const after = requests.slice(from);
    const status = after.filter(p => p === '/api/status').length;
    check(status === 0, `no requests to /api/status within ${ms / 1000} s`, `${status} requests`);
    const api = after.filter(p => p.startsWith('/api/'));
    if (api.length) throw new Error(`API requests while idle: ${api.join(', ')}`);
    const navs = await page.$$eval('#nav a', as => as.filter(a => a.offsetParent !== null).length);
    if (!await page.isHidden('#app') || navs) throw new Error(`admin navigation is visible (${navs} links)`);
    if (!await page.isHidden('#signin')) throw new Error('the sign-in form is visible too');
    const toasts = await page.$$eval('#messages .toast.error', ts => ts.map(t => t.textContent));
    if (toasts.length) throw new Error(`error toasts: ${toasts.join(' | ')}`);
    const leaked = await page.evaluate(() => ({
      view: document.querySelector('#view').dataset.view || '',
      content: document.querySelector('#view').children.length,
      version: document.querySelector('#stat-version')?.textContent ?? '—',
      siteRows: document.querySelectorAll('#sites-table tbody tr:not(.empty)').length,
    }));
    if (leaked.view || leaked.content || leaked.version !== '—' || leaked.siteRows) {
      throw new Error(`admin view rendered: ${JSON.stringify(leaked)}`);
    }
  }

  await step(`non-admin ${USER} signs in and sees only the calm "administrators only" screen`, async () => {
    await page.goto(`${urls.admin}/`);
    await page.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(page, USER, USER_PASSWORD);
    await calm(3000);
    await shot(page, 'non-admin');
  });

  await step(`non-admin ${USER}: a reload with the session and a #/users link still show only that screen`, async () => {
    await page.reload();
    await calm(1500);
    await page.evaluate(() => { location.hash = '#/users'; });
    await calm(1000);
    if (await page.$('#users-table')) throw new Error('the users view was rendered');
  });

  await step(`non-admin ${USER} signs out from that screen`, async () => {
    await page.click('#noaccess-signout');
    await page.waitForSelector('#signin-form', { state: 'visible' });
    if (!await page.isHidden('#noaccess')) throw new Error('the administrators-only screen is still visible');
    const msg = await text(page, '#signin-error');
    if (!/signed out/i.test(msg)) throw new Error(`message: ${msg}`);
  });
}

/**
 * When a list's request fails, its "Loading…" placeholder becomes "Could not load the …: <the
 * server's error>". The browser answers those requests itself with a 403 and an error text.
 */
async function failedLoads(browser, urls) {
  const page = await openPage(browser, 'desktop, admin, failing lists', DESKTOP, [401, 403, 409]);
  const refusal = 'refused on purpose by the console test';
  await step('a list whose request fails says "Could not load …: <error>" instead of "Loading…"', async () => {
    await page.goto(`${urls.admin}/`);
    await page.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(page, 'admin', ADMIN_PASSWORD);
    await page.waitForSelector('#view[data-view="dashboard"]');
    await page.route(u => /^\/api\/(users|groups|tokens|audit|apps)$/.test(u.pathname), route => route.fulfill({
      status: 403, contentType: 'application/json', body: JSON.stringify({ error: refusal }),
    }));
    for (const [view, sel, what] of [['users', '#users-table tbody', 'users'], ['groups', '#groups-list', 'groups'],
      ['tokens', '#tokens-table tbody', 'tokens'], ['audit', '#audit-table tbody', 'audit log'], ['apps', '#apps-list', 'apps']]) {
      await page.click(`#nav-${view}`);
      await loaded(page, view);
      const got = await text(page, sel);
      if (got !== `Could not load the ${what}: ${refusal}`) throw new Error(`${view}: ${JSON.stringify(got)}`);
    }
    await page.waitForSelector('#messages .toast.error');
    await shot(page, 'failed-load');
    await page.unrouteAll();
  });

  await step('a rolling restart that the server refuses (409) shows the server\'s error line', async () => {
    const why = 'a new instance did not become ready; the old ones keep serving';
    await page.route(u => u.pathname === `/api/apps/${APP}/restart`, route => route.fulfill({
      status: 409, contentType: 'application/json', body: JSON.stringify({ error: why }),
    }));
    await page.click('#nav-dashboard');
    await page.waitForSelector('#view[data-view="dashboard"]');
    await page.click('#nav-apps');
    await loaded(page, 'apps');
    await appRunning(page, 2);
    const before = await appRows(page);
    await page.click(`[data-app="${APP}"] .app-restart`);
    await page.click('#dialog-ok');
    await page.waitForSelector(`[data-app="${APP}"] .app-failed`);
    const got = await text(page, `[data-app="${APP}"] .app-result`);
    if (!got.startsWith(`Rolling restart of ${APP} failed`) || !got.endsWith(why)) throw new Error(`result: ${JSON.stringify(got)}`);
    if (await page.isDisabled(`[data-app="${APP}"] .app-restart`)) throw new Error('the button stays disabled');
    const after = await appRows(page);
    if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error('the instances changed');
    await page.unrouteAll();
  });

  await step('a cancelled confirm dialog restarts nothing', async () => {
    let posts = 0;
    const count = r => { if (r.method() === 'POST' && new URL(r.url()).pathname.endsWith('/restart')) posts++; };
    page.on('request', count);
    await page.click(`[data-app="${APP}"] .app-restart`);
    await page.click('#dialog-cancel');
    await sleep(300);
    page.off('request', count);
    if (posts) throw new Error(`${posts} restart requests after Cancel`);
  });

  await step('with no apps, the apps page explains [[app]] instead of an empty list', async () => {
    // The browser answers GET /api/apps itself with an empty list, as a config without [[app]] would.
    await page.route(u => u.pathname === '/api/apps', route => route.fulfill({ status: 200, contentType: 'application/json', body: '[]' }));
    await page.click('#nav-dashboard');
    await page.waitForSelector('#view[data-view="dashboard"]');
    await page.click('#nav-apps');
    await loaded(page, 'apps');
    await page.waitForSelector('#apps-empty');
    const got = await text(page, '#apps-empty');
    if (!got.includes('No apps configured') || !got.includes('[[app]]')) throw new Error(`empty state: ${JSON.stringify(got)}`);
    if (await page.$('[data-app]')) throw new Error('an app card is shown');
    await page.$$eval('#messages .toast', ts => ts.forEach(t => t.remove())); // earlier steps' error toasts
    await shot(page, 'apps-empty');
    await page.unrouteAll();
    await page.click('#signout');
    await page.waitForSelector('#signin-form', { state: 'visible' });
  });
}

async function phone(browser, urls) {
  const page = await openPage(browser, 'phone, admin', PHONE);
  await step('phone viewport: dashboard and users (through the menu)', async () => {
    await page.goto(`${urls.admin}/`);
    await page.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(page, 'admin', ADMIN_PASSWORD);
    await page.waitForSelector('#view[data-view="dashboard"] #chart-requests');
    await page.waitForFunction(() => document.querySelector('#dash-state').textContent.startsWith('live'));
    await page.waitForSelector('#sites-table tbody tr:not(.empty)');
    // Nothing wider than the screen: no sideways scrolling on a phone.
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 390, 'phone dashboard does not scroll sideways', `scrollWidth ${wide}`);
    // Two rate readings, so that the charts draw a line rather than "collecting data…".
    await page.waitForFunction(() => document.querySelector('#rate-requests').textContent !== '—');
    await sleep(2200);
    await shot(page, 'phone-dashboard');
    if (!await page.isVisible('#menu-toggle')) throw new Error('no menu button on a phone');
    await page.click('#menu-toggle');
    await page.click('#nav-users');
    await loaded(page, 'users');
    await page.waitForSelector(`#users-table tr[data-user="${USER}"]`);
    const wide2 = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide2 <= 390, 'phone users page does not scroll sideways', `scrollWidth ${wide2}`);
    await shot(page, 'phone-users');
  });

  await step(`phone viewport: apps page (through the menu) shows ${APP} without sideways scrolling`, async () => {
    await page.click('#menu-toggle');
    await page.click('#nav-apps');
    await loaded(page, 'apps');
    await appRunning(page, 2);
    await page.waitForSelector(`[data-app="${APP}"] .app-log .line`);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 390, 'phone apps page does not scroll sideways', `scrollWidth ${wide}`);
    if (!await page.isVisible(`[data-app="${APP}"] .app-restart`)) throw new Error('no visible Rolling restart button');
    await shot(page, 'phone-apps');
  });
}

/* ---------------------------------------------------------------- main */

const started = Date.now();
const watchdog = setTimeout(() => {
  check(false, `the whole run ends within ${DEADLINE / 1000} s`);
  process.exit(1);
}, DEADLINE);

try {
  await run();
} catch (e) {
  check(false, 'test run', String((e && e.stack) || e));
}
clearTimeout(watchdog);
if (failed && serverLog) {
  console.log('# last lines of servente stderr:');
  for (const l of stripAnsi(serverLog).trimEnd().split('\n').slice(-25)) console.log(`#   ${l}`);
}
const shots = fs.existsSync(SHOTS) ? fs.readdirSync(SHOTS).filter(f => f.endsWith('.png')).length : 0;
console.log(`# ${shots} screenshots in ${path.relative(ROOT, SHOTS)}/, ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exitCode = failed ? 1 : 0;
