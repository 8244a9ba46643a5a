// End-to-end test of the web file manager (the file role's page, crates/servente-files/ui/):
// starts a real servente (the binary in $SERVENTE_BIN, default target/debug/servente; this
// script builds nothing) with a file role mounted at /files/, drives the page in headless
// Chromium and saves screenshots to target/files-screenshots/.
// Prints one line per check (`ok - ...` / `not ok - ...`); exits 1 when any check fails.
// Run it with tests/console/run, which installs what is missing first.
// SPDX-License-Identifier: Apache-2.0

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.resolve(ROOT, process.env.SERVENTE_BIN || 'target/debug/servente');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'target/files-screenshots');
const WAIT = 15_000; // every single wait
const UPLOAD_WAIT = 90_000; // an upload of tens of MiB, through request interception
const DEADLINE = 240_000; // the whole run
const MOUNT = '/files/';
const USER = 'alice';
const PASSWORD = 'e2e-alice-pass-5Tg8';
const SHARE_PASSWORD = 'open-sesame-42';
const MiB = 1 << 20;
const QUOTA = 64 * MiB;
const DESKTOP = { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 };
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true };

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
function expect(ok, what) {
  if (!ok) throw new Error(what);
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for timeouts raced against an event). */
const idle = ms => new Promise(r => setTimeout(r, ms).unref());
const sha256 = buf => crypto.createHash('sha256').update(buf).digest('hex');

/* ---------------------------------------------------------------- the server */

let server = null, serverLog = '', tmpDir = null;
const stripAnsi = s => s.replace(/\x1b\[[0-9;]*m/g, '');

function writeConfig(dir) {
  const config = path.join(dir, 'servente.toml');
  fs.writeFileSync(config, `# Written by tests/console/files.test.mjs
[server]
data_dir = ${JSON.stringify(path.join(dir, 'data'))}
shutdown_grace = "1s"

[access_log]
output = "off"

[[listener]]
name = "web"
address = "127.0.0.1:0"
role = "web"

[files]
root = ${JSON.stringify(path.join(dir, 'files'))}
quota = "${QUOTA / MiB} MiB"

[[files.folder]]
name = "handbook"
read = ["users"]
write = ["user:nobody-here"]

[[site]]
name = "files"
files = "${MOUNT}"
`);
  return config;
}

/** Runs the servente CLI (users, groups) before the server starts. */
function cli(config, args, input) {
  const r = spawnSync(BIN, [...args, '--config', config], { input, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  if (r.status !== 0) throw new Error(`servente ${args.join(' ')}: ${(r.stderr || r.stdout || '').trim()}`);
}

/** Starts servente; resolves to the web base URL once its listener is announced. */
function startServer(config, dir) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, SERVENTE_ADMIN_PASSWORD: 'e2e-admin-unused-9Zp1', NO_COLOR: '1' };
    delete env.RUST_LOG;
    server = spawn(BIN, ['serve', '--config', config], { cwd: dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
    const timer = setTimeout(() => reject(new Error(`no "listening on" line within ${WAIT / 1000} s`)), WAIT);
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
        const m = /^servente: listening on (http:\/\/127\.0\.0\.1:\d+) \(listener "(\w+)", role web\)/.exec(stripAnsi(line));
        if (m) { clearTimeout(timer); resolve(m[1]); }
      }
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

const pages = [];
/**
 * A new browser context and page. Every JavaScript error, CSP violation and console error is
 * a failure, except Chromium's note about an HTTP status this test causes on purpose
 * (`allowStatus`) and, where `allowNetErrors`, about a connection the test cuts on purpose.
 */
async function openPage(browser, label, options, { allowStatus = [401], allowNetErrors = false, colorScheme = 'light' } = {}) {
  const ctx = await browser.newContext({ ...options, colorScheme, locale: 'en-US', timezoneId: 'UTC', acceptDownloads: true });
  ctx.setDefaultTimeout(WAIT);
  // CSP violations also show as console errors; listening to the event catches every one.
  await ctx.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', e => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} in ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = await ctx.newPage();
  const problems = [];
  const allowed = new RegExp(`^Failed to load resource: (the server responded with a status of (${allowStatus.join('|')})\\b` +
    `${allowNetErrors ? '|net::ERR_CONNECTION_RESET|net::ERR_FAILED' : ''})`);
  page.on('pageerror', e => problems.push(`JavaScript error: ${e.message}`));
  page.on('console', m => {
    if (m.type() === 'error' && !allowed.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('response', r => { if (r.status() >= 500 && r.status() !== 507) problems.push(`${r.status()} from ${r.request().method()} ${r.url()}`); });
  // Leaving the page during an upload asks first (beforeunload); the test says yes.
  page.on('dialog', d => d.accept().catch(() => {}));
  pages.push({ label, page, problems });
  return page;
}

async function shot(page, name, fullPage = false) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

async function signIn(page, user, password) {
  await page.fill('#signin-user', user);
  await page.fill('#signin-password', password);
  await page.click('#signin-submit');
}

const text = async (page, sel) => ((await page.textContent(sel)) || '').trim();
const row = name => `#listing tbody tr[data-name="${name}"]`;
const upload = name => `#upload-list li.upload[data-name="${name}"]`;

/** Waits until the listing shows `path`, loaded. */
async function listed(page, p) {
  await page.waitForSelector(`#listing[data-path="${p}"][data-state="ready"]`);
}

/** Waits until an upload is done; its bar must stand at 100 %. */
async function uploadDone(page, name, timeout = UPLOAD_WAIT) {
  await page.waitForSelector(`${upload(name)}[data-state="done"], ${upload(name)}[data-state="error"]`, { timeout });
  const state = await page.getAttribute(upload(name), 'data-state');
  if (state !== 'done') throw new Error(`upload of ${name} failed: ${await text(page, `${upload(name)} .upload-status`)}`);
  const bar = await page.$eval(`${upload(name)} progress`, p => ({ value: p.value, max: p.max }));
  expect(bar.value === bar.max && bar.max > 0, `the progress bar of ${name} stands at ${bar.value} of ${bar.max}`);
  expect(await page.getAttribute(upload(name), 'data-percent') === '100', `${name} does not say 100 %`);
}

/** The session as the server sees it, from the page's own cookies. */
async function serverSession(page) {
  const r = await page.request.get(`${new URL(page.url()).origin}${MOUNT}api/session`);
  return { status: r.status(), body: r.ok() ? await r.json() : null };
}

/** Watches the page's requests to the upload API and WebDAV; `take()` returns and clears them. */
function requestLog(page) {
  let log = [];
  page.on('request', r => {
    const u = new URL(r.url());
    if (!u.pathname.startsWith(`${MOUNT}api/uploads`) && !u.pathname.startsWith(`${MOUNT}dav/`)) return;
    log.push({ method: r.method(), path: decodeURIComponent(u.pathname), offset: r.headers()['upload-offset'] });
  });
  return { take() { const l = log; log = []; return l; } };
}
const isUploadApi = u => u.pathname.startsWith(`${MOUNT}api/uploads/`);

/** Reads a zip with Python's zipfile: {names, bad, sha: {name: sha256}}. */
function readZip(file) {
  const py = 'import sys, json, zipfile, hashlib\n' +
    'z = zipfile.ZipFile(sys.argv[1])\n' +
    'print(json.dumps({"names": z.namelist(), "bad": z.testzip(),' +
    ' "sha": {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if not n.endswith("/")}}))\n';
  const r = spawnSync('python3', ['-c', py, file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`not a valid zip: ${(r.stderr || '').trim().split('\n').pop()}`);
  return JSON.parse(r.stdout);
}

/* ---------------------------------------------------------------- the test */

async function run() {
  check(fs.existsSync(BIN), `servente binary exists: ${path.relative(ROOT, BIN) || BIN}`);
  if (!fs.existsSync(BIN)) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.rmSync(path.join(SHOTS, f), { force: true });

  const dir = tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'servente-files-'));
  let browser = null;
  try {
    const config = writeConfig(dir);
    cli(config, ['user', 'add', USER, '--password-stdin'], `${PASSWORD}\n`);
    cli(config, ['group', 'add', 'staff']);
    cli(config, ['group', 'members', 'staff', '--add', USER]);
    // A read-only shared folder with one file in it, made before the server starts.
    const handbook = path.join(dir, 'files', 'shared', 'handbook');
    fs.mkdirSync(handbook, { recursive: true });
    fs.writeFileSync(path.join(handbook, 'guide.txt'), 'Read me, do not change me.\n');
    // The files to upload, on disk so that a second pick after a reload is "the same file".
    const local = path.join(dir, 'local');
    fs.mkdirSync(local);
    const make = (name, size) => {
      const p = path.join(local, name);
      fs.writeFileSync(p, size == null ? name : crypto.randomBytes(size));
      return p;
    };
    const files = {
      notes: make('notes.txt', null),
      big: make('big.bin', 20 * MiB),
      flaky: make('flaky.bin', 12 * MiB),
      resume: make('resume.bin', 17 * MiB + 12345),
      toobig: make('toobig.bin', 16 * MiB),
    };
    fs.writeFileSync(files.notes, 'Minutes of the meeting\n'.repeat(64));
    files.album = path.join(local, 'album');
    fs.mkdirSync(path.join(files.album, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(files.album, 'a.txt'), 'a');
    fs.writeFileSync(path.join(files.album, 'sub', 'b.txt'), 'b');

    const web = await startServer(config, dir);
    check(true, `servente started (${web}${MOUNT})`);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // playwright-core adds a fresh, temporary user data dir of its own.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
      timeout: WAIT,
    });

    await fileManager(browser, web, dir, files);
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

async function fileManager(browser, web, dir, files) {
  const home = `/users/${USER}/`;
  const disk = p => path.join(dir, 'files', ...p.split('/').filter(Boolean));
  const page = await openPage(browser, 'desktop, alice', DESKTOP, { allowStatus: [401, 404, 507], allowNetErrors: true });
  const requests = requestLog(page);
  let shareUrl = null;

  await step('sign-in page; a wrong password is refused', async () => {
    await page.goto(`${web}${MOUNT}`);
    await page.waitForSelector('#signin-form', { state: 'visible' });
    await shot(page, 'signin');
    const answer = page.waitForResponse(r => r.url().endsWith(`${MOUNT}api/session`) && r.request().method() === 'POST');
    await signIn(page, USER, 'not-the-password');
    expect((await answer).status() === 401, 'the server did not answer 401');
    await page.waitForFunction(() => /wrong/i.test(document.querySelector('#signin-error').textContent));
    expect(await page.isHidden('#app'), 'the file manager is shown after a wrong password');
  });

  await step('sign in: home folder listed, user and quota in the header', async () => {
    await signIn(page, USER, PASSWORD);
    await listed(page, home);
    expect(await text(page, '#whoami') === USER, `whoami: ${await text(page, '#whoami')}`);
    const q = await text(page, '#quota-text');
    expect(q === '0 B of 64 MiB', `quota: ${q}`);
    expect(await text(page, '#breadcrumb [aria-current="page"]') === 'Home', 'the breadcrumb does not end at Home');
    expect(/empty/i.test(await text(page, '#listing tbody')), 'an empty home does not say so');
    const areas = await page.$$eval('#areas a[data-area]', as => as.map(a => a.dataset.area));
    expect(areas.join() === `${home},/groups/staff/,/shared/handbook/`, `areas: ${areas}`);
    await shot(page, 'home-empty');
  });

  await step('create a folder', async () => {
    await page.click('#new-folder');
    await page.fill('#dialog-name', 'Reports');
    await page.click('#dialog-ok');
    await page.waitForSelector(`${row('Reports')}[data-type="dir"]`);
    expect(fs.statSync(disk(`${home}Reports`)).isDirectory(), 'no folder on disk');
  });

  await step('upload a small file with the file picker (one PUT, bar at 100 %)', async () => {
    requests.take();
    await page.setInputFiles('#upload-input', files.notes);
    await uploadDone(page, 'notes.txt');
    await page.waitForSelector(`${row('notes.txt')}[data-type="file"]`);
    const got = fs.readFileSync(disk(`${home}notes.txt`));
    expect(got.equals(fs.readFileSync(files.notes)), 'the file on disk differs');
    const puts = requests.take().filter(r => r.method === 'PUT');
    expect(puts.length === 1 && puts[0].path === `${MOUNT}dav${home}notes.txt`, `PUTs: ${JSON.stringify(puts)}`);
  });

  await step('upload a 20 MiB file: chunked (3 PATCHes of at most 8 MiB), bar at 100 %, sha256 on disk', async () => {
    requests.take();
    await page.setInputFiles('#upload-input', files.big);
    await page.waitForSelector(`${upload('big.bin')}[data-state="uploading"]`);
    await shot(page, 'upload-progress');
    await uploadDone(page, 'big.bin');
    await page.waitForSelector(row('big.bin'));
    const log = requests.take();
    const patches = log.filter(r => r.method === 'PATCH').map(r => Number(r.offset));
    expect(patches.join() === `0,${8 * MiB},${16 * MiB}`, `PATCH offsets: ${patches}`);
    expect(log.filter(r => r.method === 'POST').length === 1, 'not one POST api/uploads');
    expect(!log.some(r => r.method === 'PUT'), 'a PUT for a large file');
    expect(sha256(fs.readFileSync(disk(`${home}big.bin`))) === sha256(fs.readFileSync(files.big)), 'sha256 differs');
    expect(await text(page, `${row('big.bin')} .col-size`) === '20.0 MiB' || await text(page, `${row('big.bin')} .col-size`) === '20 MiB',
      `size column: ${await text(page, `${row('big.bin')} .col-size`)}`);
  });

  await step('the quota in the header follows the uploads', async () => {
    const s = await serverSession(page);
    await page.waitForFunction(used => document.querySelector('#quota').dataset.used === String(used), s.body.quota.used);
    expect(s.body.quota.used >= 20 * MiB, `the server counts ${s.body.quota.used} bytes`);
    const q = await text(page, '#quota-text');
    expect(/^20(\.0)? MiB of 64 MiB$/.test(q), `quota text: ${q}`);
  });

  await step('a chunked upload survives cut connections (a chunk lost on the way, the answer to the last one lost)', async () => {
    requests.take();
    let n = 0;
    await page.route(isUploadApi, async route => {
      if (route.request().method() !== 'PATCH') return route.continue();
      n++;
      if (n === 1) return route.abort('connectionreset'); // never reaches the server
      if (n === 3) { // reaches the server (which finishes the file); the answer is lost
        await route.fetch();
        return route.abort('connectionreset');
      }
      return route.continue();
    });
    try {
      await page.setInputFiles('#upload-input', files.flaky);
      await page.waitForSelector(`${upload('flaky.bin')}[data-state="retrying"]`);
      await uploadDone(page, 'flaky.bin');
    } finally {
      await page.unrouteAll({ behavior: 'ignoreErrors' });
    }
    await page.waitForSelector(row('flaky.bin'));
    const log = requests.take();
    const seq = log.filter(r => r.path.startsWith(`${MOUNT}api/uploads`)).map(r => `${r.method}${r.offset ? ` ${r.offset / MiB}` : ''}`);
    // POST, PATCH 0 (cut), GET (where is it?), PATCH 0, PATCH 8 (done, answer cut), GET (gone: finished?)
    expect(seq.join() === 'POST,PATCH 0,GET,PATCH 0,PATCH 8,GET', `requests: ${seq}`);
    expect(sha256(fs.readFileSync(disk(`${home}flaky.bin`))) === sha256(fs.readFileSync(files.flaky)), 'sha256 differs');
  });

  await step('a chunked upload resumes after a page reload (same file picked again)', async () => {
    requests.take();
    let n = 0;
    // The first chunk goes through, then the network is down.
    await page.route(isUploadApi, route => (route.request().method() === 'PATCH' && ++n > 1
      ? route.abort('connectionreset') : route.continue()));
    let id;
    try {
      await page.setInputFiles('#upload-input', files.resume);
      await page.waitForSelector(`${upload('resume.bin')}[data-state="retrying"]`);
      const pct = Number(await page.getAttribute(upload('resume.bin'), 'data-percent'));
      expect(pct >= 45 && pct < 50, `progress before the reload: ${pct} %`);
      id = await page.evaluate(() => {
        const k = Object.keys(localStorage).find(k => k.includes(':upload:') && k.includes('resume.bin'));
        return k && JSON.parse(localStorage.getItem(k)).id;
      });
      expect(id, 'the upload is not remembered in localStorage');
      await shot(page, 'upload-retrying');
    } finally {
      await page.unrouteAll({ behavior: 'ignoreErrors' });
    }
    await page.reload();
    await listed(page, home);
    await page.waitForSelector('#uploads-pending', { state: 'visible' });
    expect((await text(page, '#uploads-pending')).includes(`${home}resume.bin`), 'no note about the unfinished upload');
    expect(!fs.existsSync(disk(`${home}resume.bin`)), 'the unfinished file is visible already');
    requests.take();
    await page.setInputFiles('#upload-input', files.resume);
    await uploadDone(page, 'resume.bin');
    await page.waitForSelector(row('resume.bin'));
    const seq = requests.take().filter(r => r.path.startsWith(`${MOUNT}api/uploads`)).map(r => `${r.method} ${r.path.split('/').pop()}${r.offset ? ` ${r.offset}` : ''}`);
    expect(seq.join() === `GET ${id},PATCH ${id} ${8 * MiB},PATCH ${id} ${16 * MiB}`, `requests after the reload: ${seq}`);
    expect(sha256(fs.readFileSync(disk(`${home}resume.bin`))) === sha256(fs.readFileSync(files.resume)), 'sha256 differs');
    expect(await page.isHidden('#uploads-pending'), 'the note about the unfinished upload stays');
  });

  await step('an upload over the quota is refused with a clear message', async () => {
    await page.setInputFiles('#upload-input', files.toobig);
    await page.waitForSelector(`${upload('toobig.bin')}[data-state="error"]`);
    const msg = await text(page, `${upload('toobig.bin')} .upload-status`);
    expect(/not enough space/i.test(msg) && /quota/i.test(msg), `message: ${msg}`);
    await page.waitForSelector('#messages .toast.error');
    expect(!fs.existsSync(disk(`${home}toobig.bin`)), 'the file is on disk');
    expect(!await page.$(row('toobig.bin')), 'the file is listed');
    await shot(page, 'upload-over-quota');
    await page.click('#uploads-clear');
    await page.$$eval('#messages .toast', ts => ts.forEach(t => t.remove()));
  });

  await step('upload by drag and drop onto the listing', async () => {
    const content = 'dropped from the desktop\n';
    await page.evaluate(content => {
      const dt = new DataTransfer();
      dt.items.add(new File([content], 'dropped.txt', { type: 'text/plain' }));
      const zone = document.querySelector('#drop-zone');
      zone.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, content);
    expect(await page.$eval('#drop-zone', z => z.classList.contains('dragging')), 'no drop hint while dragging');
    await shot(page, 'drag-over');
    await page.evaluate(content => {
      const dt = new DataTransfer();
      dt.items.add(new File([content], 'dropped.txt', { type: 'text/plain' }));
      document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, content);
    await uploadDone(page, 'dropped.txt');
    await page.waitForSelector(row('dropped.txt'));
    expect(fs.readFileSync(disk(`${home}dropped.txt`), 'utf8') === content, 'the file on disk differs');
    expect(!await page.$eval('#drop-zone', z => z.classList.contains('dragging')), 'the drop hint stays');
  });

  await step('sort by size and by name (folders first)', async () => {
    const names = () => page.$$eval('#listing tbody tr[data-name]', rs => rs.map(r => r.dataset.name));
    await page.click('button.sort[data-sort="size"]');
    let got = await names();
    expect(got.join() === 'Reports,dropped.txt,notes.txt,flaky.bin,resume.bin,big.bin', `by size: ${got}`);
    expect(await page.getAttribute('th[data-sort="size"]', 'aria-sort') === 'ascending', 'aria-sort');
    await page.click('button.sort[data-sort="size"]');
    got = await names();
    expect(got.join() === 'Reports,big.bin,resume.bin,flaky.bin,notes.txt,dropped.txt', `by size, descending: ${got}`);
    await page.click('button.sort[data-sort="name"]');
    got = await names();
    expect(got.join() === 'Reports,big.bin,dropped.txt,flaky.bin,notes.txt,resume.bin', `by name: ${got}`);
    await shot(page, 'home-files');
  });

  await step('a file with an odd name (é # % ? + & \') uploads, lists and downloads', async () => {
    const odd = "été #1 100% ? a+b&c'.txt";
    await page.evaluate(odd => {
      const dt = new DataTransfer();
      dt.items.add(new File([`content of ${odd}`], odd));
      document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, odd);
    await uploadDone(page, odd);
    await page.waitForSelector(row(odd));
    expect(fs.readFileSync(disk(`${home}${odd}`), 'utf8') === `content of ${odd}`, 'the file on disk differs');
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`${row(odd)} [data-action="download"]`)]);
    expect(fs.readFileSync(await dl.path(), 'utf8') === `content of ${odd}`, 'the downloaded bytes differ');
  });

  await step('upload a folder (its subfolders are created)', async () => {
    await page.setInputFiles('#upload-folder-input', files.album);
    await uploadDone(page, 'album/sub/b.txt');
    await uploadDone(page, 'album/a.txt');
    await page.waitForSelector(`${row('album')}[data-type="dir"]`);
    expect(fs.readFileSync(disk(`${home}album/a.txt`), 'utf8') === 'a' &&
      fs.readFileSync(disk(`${home}album/sub/b.txt`), 'utf8') === 'b', 'the files on disk differ');
  });

  await step('rename a file', async () => {
    await page.click(`${row('notes.txt')} [data-action="rename"]`);
    const selected = await page.$eval('#dialog-name', i => i.value.slice(i.selectionStart, i.selectionEnd));
    expect(selected === 'notes', `the dialog selects ${JSON.stringify(selected)}`);
    await page.fill('#dialog-name', 'notes-renamed.txt');
    await page.click('#dialog-ok');
    await page.waitForSelector(row('notes-renamed.txt'));
    await page.waitForSelector(row('notes.txt'), { state: 'detached' });
    expect(fs.existsSync(disk(`${home}notes-renamed.txt`)) && !fs.existsSync(disk(`${home}notes.txt`)), 'not renamed on disk');
  });

  await step('rename refuses a name that is taken', async () => {
    await page.click(`${row('dropped.txt')} [data-action="rename"]`);
    await page.fill('#dialog-name', 'big.bin');
    await page.click('#dialog-ok');
    await page.waitForFunction(() => /already/.test(document.querySelector('#dialog-error').textContent));
    await page.click('#dialog-cancel');
    await page.waitForSelector('#dialog', { state: 'hidden' });
    expect(fs.existsSync(disk(`${home}dropped.txt`)), 'dropped.txt is gone');
  });

  await step('move a file into a folder ("Move to…")', async () => {
    await page.click(`${row('notes-renamed.txt')} [data-action="move"]`);
    await page.fill('#dialog-target', 'Reports');
    await page.click('#dialog-ok');
    await page.waitForSelector(row('notes-renamed.txt'), { state: 'detached' });
    expect(fs.existsSync(disk(`${home}Reports/notes-renamed.txt`)), 'not moved on disk');
    await page.click(`${row('Reports')} a.name-link`);
    await listed(page, `${home}Reports/`);
    await page.waitForSelector(row('notes-renamed.txt'));
    const crumbs = await page.$$eval('#breadcrumb li', ls => ls.map(l => l.textContent.trim()));
    expect(crumbs.join(' / ') === 'All folders / Home / Reports', `breadcrumb: ${crumbs}`);
  });

  await step('download a file (same bytes)', async () => {
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`${row('notes-renamed.txt')} [data-action="download"]`)]);
    expect(dl.suggestedFilename() === 'notes-renamed.txt', `file name: ${dl.suggestedFilename()}`);
    const got = fs.readFileSync(await dl.path());
    expect(got.equals(fs.readFileSync(files.notes)), 'the downloaded bytes differ');
  });

  await step('download a folder as a zip (valid, with the file in it)', async () => {
    await page.click('#breadcrumb a:text-is("Home")');
    await listed(page, home);
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`${row('Reports')} [data-action="zip"]`)]);
    expect(dl.suggestedFilename() === 'Reports.zip', `file name: ${dl.suggestedFilename()}`);
    const z = readZip(await dl.path());
    expect(z.bad === null, `a broken member: ${z.bad}`);
    expect(z.names.includes('Reports/notes-renamed.txt'), `names: ${z.names}`);
    expect(z.sha['Reports/notes-renamed.txt'] === sha256(fs.readFileSync(files.notes)), 'the zipped file differs');
  });

  await step('delete a file (confirmed); the quota goes down', async () => {
    const before = Number(await page.getAttribute('#quota', 'data-used'));
    await page.click(`${row('big.bin')} [data-action="delete"]`);
    expect(/cannot be undone/.test(await text(page, '#dialog')), 'no confirmation');
    await page.click('#dialog-ok');
    await page.waitForSelector(row('big.bin'), { state: 'detached' });
    expect(!fs.existsSync(disk(`${home}big.bin`)), 'still on disk');
    await page.waitForFunction(b => Number(document.querySelector('#quota').dataset.used) === b - 20 * 1048576, before);
    const s = await serverSession(page);
    expect(s.body.quota.used === before - 20 * MiB, `the server counts ${s.body.quota.used}, the page showed ${before}`);
  });

  await step('delete a folder with its content', async () => {
    await page.click('#new-folder');
    await page.fill('#dialog-name', 'Old stuff');
    await page.click('#dialog-ok');
    await page.waitForSelector(row('Old stuff'));
    await page.click(`${row('Old stuff')} a.name-link`);
    await listed(page, `${home}Old stuff/`);
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['x'.repeat(1000)], 'a.txt'));
      document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.waitForSelector(row('a.txt'));
    await page.click('#breadcrumb a:text-is("Home")');
    await listed(page, home);
    const before = Number(await page.getAttribute('#quota', 'data-used'));
    await page.click(`${row('Old stuff')} [data-action="delete"]`);
    await page.click('#dialog-ok');
    await page.waitForSelector(row('Old stuff'), { state: 'detached' });
    expect(!fs.existsSync(disk(`${home}Old stuff`)), 'still on disk');
    await page.waitForFunction(b => Number(document.querySelector('#quota').dataset.used) === b - 1000, before);
  });

  await step('a read-only shared folder offers downloads but no write actions', async () => {
    await page.click('#areas a[data-area="/shared/handbook/"]');
    await listed(page, '/shared/handbook/');
    await page.waitForSelector(row('guide.txt'));
    for (const sel of ['#new-folder', '#upload-button', '#upload-folder-button']) expect(await page.isHidden(sel), `${sel} is shown`);
    expect(await page.isVisible('#readonly-note'), 'no read-only note');
    const actions = await page.$$eval(`${row('guide.txt')} [data-action]`, as => as.map(a => a.dataset.action));
    expect(actions.join() === 'download', `actions: ${actions}`);
    expect(await page.$eval('#areas a[data-area="/shared/handbook/"]', a => !!a.querySelector('.ro')), 'the sidebar does not mark it read-only');
    // A drop is refused too.
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['nope'], 'intruder.txt'));
      document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.waitForSelector('#messages .toast.error');
    expect(!fs.existsSync(path.join(dir, 'files/shared/handbook/intruder.txt')), 'the drop was uploaded');
    await shot(page, 'shared-readonly');
    await page.$$eval('#messages .toast', ts => ts.forEach(t => t.remove()));
  });

  await step('create a share link with a password (listed under Share links)', async () => {
    await page.click(`#areas a[data-area="${home}"]`);
    await listed(page, home);
    await page.click(`${row('Reports')} [data-action="share"]`);
    await page.fill('#share-password', SHARE_PASSWORD);
    await page.selectOption('#share-expires', '86400');
    await page.click('#dialog-ok');
    await page.waitForSelector('#share-url');
    shareUrl = await page.inputValue('#share-url');
    expect(new RegExp(`^${web}${MOUNT}s/[0-9a-f]{32}$`).test(shareUrl), `link: ${shareUrl}`);
    await shot(page, 'share-created');
    await page.click('#dialog-ok');
    await page.click('#nav-shares');
    await page.waitForSelector(`#shares-list[data-state="ready"] tr[data-path="${home}Reports"]`);
    const cells = await page.$$eval(`#shares-list tr[data-path="${home}Reports"] td`, ts => ts.map(t => t.textContent.trim()));
    expect(cells[4] === 'yes', `password column: ${cells[4]}`);
    expect(/^\d{4}-\d\d-\d\d \d\d:\d\d$/.test(cells[3]), `expires column: ${cells[3]}`);
    await shot(page, 'shares');
  });

  await step('the share link in a fresh browser: password form, wrong password refused, right one lists the folder', async () => {
    expect(shareUrl, 'no link');
    const anon = await openPage(browser, 'share link, no account', DESKTOP, { allowStatus: [401, 404] });
    const first = await anon.goto(shareUrl);
    expect(first.status() === 401, `first answer: ${first.status()}`);
    await anon.fill('input[name="password"]', 'guess');
    await Promise.all([anon.waitForLoadState('load'), anon.press('input[name="password"]', 'Enter')]);
    await anon.waitForSelector('text=Wrong password');
    await anon.fill('input[name="password"]', SHARE_PASSWORD);
    await Promise.all([anon.waitForURL(`${shareUrl}/`), anon.press('input[name="password"]', 'Enter')]);
    await anon.waitForSelector('a:text-is("notes-renamed.txt")');
    expect(await anon.isVisible('a[href="?zip"]'), 'no zip link');
    await shot(anon, 'share-opened');
    const r = await anon.request.get(`${shareUrl}/notes-renamed.txt`);
    expect(r.status() === 200 && (await r.body()).equals(fs.readFileSync(files.notes)), `file through the link: ${r.status()}`);
    // The fresh browser has no session with the file manager.
    const s = await anon.request.get(`${web}${MOUNT}api/session`);
    expect(s.status() === 401, `session without signing in: ${s.status()}`);
    await anon.context().close();
  });

  await step('revoke the share link; it answers 404 afterwards', async () => {
    await page.click(`#shares-list tr[data-path="${home}Reports"] [data-action="revoke"]`);
    await page.click('#dialog-ok');
    await page.waitForSelector(`#shares-list tr[data-path="${home}Reports"]`, { state: 'detached' });
    expect(/no share links/i.test(await text(page, '#shares-list tbody')), 'the list is not empty');
    const anon = await openPage(browser, 'revoked share link', DESKTOP, { allowStatus: [404] });
    const r = await anon.goto(shareUrl);
    expect(r.status() === 404, `answer: ${r.status()}`);
    await anon.waitForSelector('text=Link not found');
    await anon.context().close();
  });

  await step('keyboard: the folder opens with Enter, Escape closes a dialog', async () => {
    await page.click(`#areas a[data-area="${home}"]`);
    await listed(page, home);
    await page.focus(`${row('Reports')} a.name-link`);
    await page.keyboard.press('Enter');
    await listed(page, `${home}Reports/`);
    await page.focus('#new-folder');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#dialog[open] #dialog-name');
    expect(await page.evaluate(() => document.activeElement.id) === 'dialog-name', 'the name field is not focused');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#dialog', { state: 'hidden' });
  });

  await step('a session that ended meanwhile leads back to the sign-in form (no browser password prompt)', async () => {
    const other = await openPage(browser, 'desktop, session ends', DESKTOP);
    await other.clock.install(); // to leave the tab "idle" for a minute at once
    await other.goto(`${web}${MOUNT}`);
    await other.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(other, USER, PASSWORD);
    await listed(other, home);
    // The session ends behind the page's back (as when it expires).
    const csrf = (await serverSession(other)).body.csrf;
    const r = await other.request.delete(`${web}${MOUNT}api/session`, { headers: { 'X-CSRF-Token': csrf } });
    expect(r.status() === 200, `DELETE api/session: ${r.status()}`);
    await other.clock.fastForward(61_000);
    await other.click('#new-folder');
    await other.fill('#dialog-name', 'never made');
    await other.click('#dialog-ok');
    await other.waitForSelector('#signin-form', { state: 'visible' });
    expect(/session has ended/.test(await text(other, '#signin-error')), `message: ${await text(other, '#signin-error')}`);
    expect(!fs.existsSync(disk(`${home}never made`)), 'the folder was made');
    await other.context().close();
  });

  await step('phone viewport: listing without sideways scrolling, actions reachable', async () => {
    const phone = await openPage(browser, 'phone, alice', PHONE);
    await phone.goto(`${web}${MOUNT}`);
    await phone.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(phone, USER, PASSWORD);
    await listed(phone, home);
    await phone.waitForSelector(row('flaky.bin'));
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 390, 'phone listing does not scroll sideways', `scrollWidth ${wide}`);
    expect(await phone.isVisible(`${row('flaky.bin')} [data-action="delete"]`), 'no visible Delete button');
    expect(await phone.isVisible('#upload-button'), 'no visible Upload button');
    await shot(phone, 'phone-home');
    await phone.click('#nav-shares');
    await phone.waitForSelector('#shares-list[data-state="ready"]');
    const wide2 = await phone.evaluate(() => document.documentElement.scrollWidth);
    check(wide2 <= 390, 'phone share links page does not scroll sideways', `scrollWidth ${wide2}`);
    await phone.context().close();
  });

  await step('dark scheme screenshot', async () => {
    const dark = await openPage(browser, 'desktop, dark', DESKTOP, { colorScheme: 'dark' });
    await dark.goto(`${web}${MOUNT}`);
    await dark.waitForSelector('#signin-form', { state: 'visible' });
    await signIn(dark, USER, PASSWORD);
    await listed(dark, home);
    await dark.waitForSelector(row('flaky.bin'));
    await shot(dark, 'dark-home');
    await dark.context().close();
  });

  await step('sign out: back to the sign-in form, the session is gone', async () => {
    await page.click('#signout');
    await page.waitForSelector('#signin-form', { state: 'visible' });
    expect(/signed out/i.test(await text(page, '#signin-error')), 'no "signed out" note');
    const s = await serverSession(page);
    expect(s.status === 401, `GET api/session after signing out: ${s.status}`);
    const d = await page.request.fetch(`${web}${MOUNT}dav${home}`, { method: 'PROPFIND', headers: { Depth: '1' } });
    expect(d.status() === 401, `PROPFIND after signing out: ${d.status()}`);
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
