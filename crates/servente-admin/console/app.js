// servente web console: a single-page app over the JSON admin API (docs/admin-api.md).
// Plain ES module: no framework, no build step, nothing fetched from elsewhere. Every piece of
// text that comes from the server is inserted with textContent / text nodes, never innerHTML.
// SPDX-License-Identifier: Apache-2.0

/* ============================================================== DOM and formatting helpers */

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const enc = encodeURIComponent;
const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'readOnly', 'required']);

/** Builds an element: h('button', {class: 'x', onclick: fn}, 'text', childNode, [more]). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (k === 'class') el.className = v;
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

let uid = 0;
/** A labelled form field; `hint` becomes an aria-describedby note. */
function field(label, input, hint) {
  if (!input.id) input.id = `f${++uid}`;
  const note = hint && h('small', { class: 'hint', id: `${input.id}-hint` }, hint);
  if (note) input.setAttribute('aria-describedby', note.id);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, note);
}

const intFmt = new Intl.NumberFormat();
function fmtNum(n) {
  if (n == null || !Number.isFinite(n)) return '—';
  const a = Math.abs(n);
  const short = (x, s) => `${+x.toFixed(x < 10 ? 2 : 1)}${s}`;
  if (a >= 1e9) return short(n / 1e9, 'G');
  if (a >= 1e6) return short(n / 1e6, 'M');
  if (a >= 1e4) return short(n / 1e3, 'k');
  return Number.isInteger(n) ? String(n) : String(+n.toFixed(a < 10 ? 2 : 1));
}
const fmtInt = n => (n == null ? '—' : intFmt.format(n));

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return '—';
  let i = 0;
  while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${i ? +n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0) : Math.round(n)} ${UNITS[i]}`;
}

function fmtDuration(s) {
  s = Math.max(0, Math.floor(s || 0));
  const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hr}h ${m}m`;
  if (hr) return `${hr}h ${m}m`;
  return m ? `${m}m ${s % 60}s` : `${s}s`;
}

/** Times may come as Unix seconds (number or digits) or as an RFC 3339 string. */
function toDate(v) {
  if (v == null || v === '') return null;
  if (typeof v === 'number' || /^\d+(\.\d+)?$/.test(v)) {
    const n = Number(v);
    return new Date(n < 1e11 ? n * 1000 : n);
  }
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}
const pad2 = n => String(n).padStart(2, '0');
function fmtTime(v, seconds = false) {
  const d = toDate(v);
  if (!d) return v == null || v === '' ? '—' : String(v);
  const s = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return seconds ? `${s}:${pad2(d.getSeconds())}` : s;
}
function timeEl(v, seconds) {
  const d = toDate(v);
  return h('time', { datetime: d && d.toISOString(), title: d && d.toString() }, fmtTime(v, seconds));
}

/* ============================================================== messages, dialogs, secrets */

function notify(text, kind = 'info') {
  const box = $('#messages');
  const t = h('div', { class: `toast ${kind}` }, h('span', {}, text),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×'));
  box.append(t);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => t.remove(), kind === 'error' ? 10000 : 5000);
}
/** Shows an API error as one line, unless it was already dealt with (401 → sign-in). */
function fail(err) {
  if (!err || !err.handled) notify((err && err.message) || String(err), 'error');
}

/** Runs fn with el's buttons disabled; errors become a toast. */
async function busy(el, fn) {
  const buttons = $$('button', el);
  buttons.forEach(b => { b.disabled = true; });
  el.setAttribute('aria-busy', 'true');
  try { return await fn(); } catch (e) { fail(e); } finally {
    buttons.forEach(b => { b.disabled = false; });
    el.removeAttribute('aria-busy');
  }
}

/** Modal <dialog>; resolves to the FormData of its form when confirmed, null when cancelled. */
function openDialog({ title, body = [], ok = 'OK', danger = false }) {
  const dlg = $('#dialog');
  return new Promise(resolve => {
    const form = h('form', { method: 'dialog' },
      h('h2', { id: 'dialog-title' }, title),
      h('div', { class: 'dialog-body' }, body),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', value: 'cancel', formnovalidate: true, id: 'dialog-cancel' }, 'Cancel'),
        h('button', { type: 'submit', value: 'ok', class: danger ? 'danger solid' : 'primary', id: 'dialog-ok' }, ok)));
    dlg.replaceChildren(form);
    dlg.setAttribute('aria-labelledby', 'dialog-title');
    dlg.returnValue = '';
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok' ? new FormData(form) : null), { once: true });
    dlg.showModal();
  });
}
const confirmDialog = (title, text, ok = 'Delete') =>
  openDialog({ title, body: [h('p', {}, text)], ok, danger: true }).then(Boolean);

/** Shows a one-time secret (generated password, token secret) in `slot` with a copy button. */
function secretBox(slot, title, value, note = 'It is shown only this once: copy it now.') {
  const input = h('input', { class: 'mono secret-value', id: `${slot.id}-value`, readOnly: true, value,
    'aria-label': title, spellcheck: 'false', autocomplete: 'off' });
  const copy = h('button', { type: 'button', class: 'primary', id: `${slot.id}-copy`,
    onclick: () => copyText(input, copy) }, 'Copy');
  slot.replaceChildren(h('div', { class: 'secret-box', role: 'group', 'aria-label': title },
    h('strong', {}, title), h('p', { class: 'small' }, note),
    h('div', { class: 'secret-row' }, input, copy),
    h('button', { type: 'button', class: 'link', onclick: () => slot.replaceChildren() }, 'Done, hide it')));
  slot.scrollIntoView({ block: 'nearest' });
  input.focus();
  input.select();
}
async function copyText(input, btn) {
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    if (!document.execCommand('copy')) return notify('Copy failed: select the text and copy it by hand.', 'error');
  }
  btn.textContent = 'Copied';
  setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
}

/** A table whose cells carry data-label, so that CSS can stack rows as cards on phones. */
function table(id, headers) {
  const tbody = h('tbody');
  const el = h('table', { id, class: 'data' },
    h('thead', {}, h('tr', {}, headers.map(x => h('th', { scope: 'col' }, x)))), tbody);
  return {
    wrap: h('div', { class: 'table-wrap' }, el),
    tbody,
    rows(rows) {
      tbody.replaceChildren(...rows.map(([cells, attrs]) =>
        h('tr', attrs, cells.map((c, i) => h('td', { 'data-label': headers[i] || '' }, c)))));
    },
    empty(text) { tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: headers.length }, text))); },
  };
}

function pageHead(title, ...tools) {
  return h('div', { class: 'page-head' }, h('h1', {}, title), h('div', { class: 'page-tools' }, tools));
}
const btn = (label, onclick, cls = '', extra = {}) => h('button', { type: 'button', class: cls, onclick, ...extra }, label);
const list = xs => (xs && xs.length ? xs.join(', ') : '—');

/* ============================================================== API client */

class ApiError extends Error {
  constructor(status, data, retryAfter) {
    super((data && data.error) || (status ? `The server answered ${status}.` : 'Cannot reach the server.'));
    this.status = status;
    this.problems = (data && data.problems) || [];
    this.retryAfter = retryAfter;
    this.handled = false;
  }
}

let session = null; // {user, display_name, groups, csrf, expires}

async function api(method, path, body, { signin = false } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && session && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let res, text;
  try {
    res = await fetch(path, init);
    text = await res.text();
  } catch {
    throw new ApiError(0, null);
  }
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = res.ok ? null : { error: `${res.status}: ${text.slice(0, 120)}` }; }
  }
  if (res.ok) return data;
  const err = new ApiError(res.status, data, res.headers.get('Retry-After'));
  if (res.status === 401 && !signin) {
    err.handled = true;
    signedOut('Your session has ended. Please sign in again.');
  }
  // A 403 may mean this user has just left `admins` (e.g. removed themselves): if so, show the
  // "administrators only" screen instead of an error (a missing CSRF token stays an error).
  if (res.status === 403 && !signin && session && await lostAdmin()) err.handled = true;
  throw err;
}

const isAdmin = s => !!s && Array.isArray(s.groups) && s.groups.includes('admins');

let accessCheck = null;
/** Asks the server for the session again; true (and the no-access screen) when it is no admin. */
function lostAdmin() {
  accessCheck ??= api('GET', '/api/session', undefined, { signin: true })
    .then(s => {
      if (!session || isAdmin(s)) return false;
      session = s;
      showNoAccess();
      return true;
    }, () => false)
    .finally(() => { accessCheck = null; });
  return accessCheck;
}

/** "Could not load the users: <the server's error>", for a table or list that failed to load. */
const loadError = (what, e) => `Could not load ${what}: ${(e && e.message) || String(e)}`;

/* ============================================================== shell: sign-in, routing */

const routes = {
  dashboard: ['Dashboard', viewDashboard],
  apps: ['Apps', viewApps],
  users: ['Users', viewUsers],
  groups: ['Groups', viewGroups],
  tokens: ['Tokens', viewTokens],
  config: ['Config', viewConfig],
  log: ['Log', viewLog],
  audit: ['Audit', viewAudit],
};
let stopView = null; // cleanup of the current view (stops polling)

function leaveView() {
  if (stopView) stopView();
  stopView = null;
}

function showSignin(message = '') {
  $('#loading').hidden = true;
  $('#app').hidden = true;
  $('#noaccess').hidden = true;
  $('#signin').hidden = false;
  document.title = 'Sign in · servente';
  $('#signin-error').textContent = message;
  $('#signin-password').value = '';
  ($('#signin-user').value ? $('#signin-password') : $('#signin-user')).focus();
}

/** After signing in (or finding a session): the console for admins, a calm refusal for others. */
function showSession() {
  if (isAdmin(session)) showApp(); else showNoAccess();
}

function showApp() {
  $('#loading').hidden = true;
  $('#signin').hidden = true;
  $('#noaccess').hidden = true;
  $('#app').hidden = false;
  $('#whoami').textContent = session.display_name || session.user;
  $('#whoami').title = session.user;
  route(false);
}

/** A signed-in user who is not in `admins`: no console, no polling, just a way to sign out. */
function showNoAccess() {
  leaveView();
  const view = $('#view');
  view.replaceChildren();
  delete view.dataset.view;
  const dlg = $('#dialog');
  if (dlg.open) dlg.close();
  $$('#messages .toast.error').forEach(t => t.remove());
  $('#loading').hidden = true;
  $('#signin').hidden = true;
  $('#app').hidden = true;
  $('#noaccess').hidden = false;
  const name = session.display_name || session.user;
  $('#noaccess-user').textContent = name && name !== session.user ? `${name} (${session.user})` : session.user;
  document.title = 'Administrators only · servente';
  $('#noaccess-signout').focus();
}

function signedOut(message) {
  if (!session && !$('#signin').hidden) return;
  session = null;
  leaveView();
  $('#view').replaceChildren();
  const dlg = $('#dialog');
  if (dlg.open) dlg.close();
  showSignin(message);
}

function route(focus = true) {
  if (!isAdmin(session)) return;
  let name = (/^#\/([\w-]+)/.exec(location.hash) || [])[1];
  if (!routes[name]) {
    name = 'dashboard';
    history.replaceState(null, '', '#/dashboard');
  }
  leaveView();
  for (const a of $$('#nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const [title, render] = routes[name];
  document.title = `${title} · servente`;
  const view = $('#view');
  view.replaceChildren();
  view.dataset.view = name;
  stopView = render(view) || null;
  setMenu(false);
  if (focus) view.focus({ preventScroll: true });
}

function setMenu(open) {
  $('#app').classList.toggle('menu-open', open);
  $('#menu-toggle').setAttribute('aria-expanded', String(open));
}

let lockTimer = null;
async function onSignin(ev) {
  ev.preventDefault();
  const form = ev.currentTarget, submit = $('#signin-submit'), error = $('#signin-error');
  const user = form.user.value.trim(), password = form.password.value;
  if (!user || !password) {
    error.textContent = 'Enter your user name and password.';
    return;
  }
  error.textContent = '';
  submit.disabled = true;
  try {
    session = await api('POST', '/api/session', { user, password }, { signin: true });
    form.reset();
    submit.disabled = false;
    showSession();
  } catch (e) {
    let wait = e.status === 429 ? parseInt(e.retryAfter, 10) : NaN;
    error.textContent = wait > 0 ? `${e.message.replace(/[.!]?$/, '.')} Try again in ${wait} s.` : e.message;
    form.password.value = '';
    if (!(wait > 0)) {
      submit.disabled = false;
      form.password.focus();
      return;
    }
    clearInterval(lockTimer);
    submit.textContent = `Sign in (${wait} s)`;
    lockTimer = setInterval(() => {
      wait -= 1;
      submit.textContent = wait > 0 ? `Sign in (${wait} s)` : 'Sign in';
      if (wait <= 0) { clearInterval(lockTimer); submit.disabled = false; }
    }, 1000);
  }
}

async function onSignout() {
  try { await api('DELETE', '/api/session'); } catch (e) { if (!e.handled && e.status) fail(e); }
  signedOut('You have signed out.');
}

async function boot() {
  $('#signin-form').addEventListener('submit', onSignin);
  $('#signout').addEventListener('click', onSignout);
  $('#noaccess-signout').addEventListener('click', onSignout);
  $('#menu-toggle').addEventListener('click', () => setMenu(!$('#app').classList.contains('menu-open')));
  $('#nav').addEventListener('click', ev => { if (ev.target.closest('a')) setMenu(false); });
  document.addEventListener('keydown', ev => { if (ev.key === 'Escape') setMenu(false); });
  window.addEventListener('hashchange', () => route());
  try {
    session = await api('GET', '/api/session', undefined, { signin: true });
    showSession();
  } catch (e) {
    showSignin(e.status === 401 ? '' : e.message);
  }
}

/* ============================================================== charts (plain canvas) */

const WINDOW = 120; // seconds of history drawn

/** Round numbers for the y axis: a step of 1/2/2.5/5 × 10^k (in KiB/MiB/… for bytes). */
function niceScale(max, base) {
  let unit = 1;
  if (base === 1024) while (max / unit >= 1024) unit *= 1024;
  const raw = max / unit / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag * unit;
  return { step, top: Math.ceil(max / step - 1e-9) * step };
}

class Chart {
  /** color: a CSS custom property name; format: tick label formatter; min: smallest y top. */
  constructor(canvas, { color, format = fmtNum, base = 10, min = 1 }) {
    Object.assign(this, { canvas, color, format, base, min, points: [] });
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
  }

  push(t, v) {
    this.points.push([t, v]);
    while (this.points.length && this.points[0][0] < t - WINDOW - 2) this.points.shift();
    this.draw();
  }

  destroy() { this.observer.disconnect(); }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, ht = c.clientHeight;
    if (!w || !ht) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(ht * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(ht * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, ht);
    const css = getComputedStyle(c);
    const ink = css.getPropertyValue('--chart-text').trim() || '#888';
    const grid = css.getPropertyValue('--chart-grid').trim() || '#ccc';
    const line = css.getPropertyValue(this.color).trim() || '#2a7';
    g.font = `11px ${css.fontFamily}`;

    const { top, step } = niceScale(Math.max(this.min, ...this.points.map(p => p[1])), this.base);
    const labelW = Math.max(...[top, step].map(v => g.measureText(this.format(v)).width));
    const L = Math.ceil(labelW) + 10, R = 8, T = 8, B = 20;
    const pw = w - L - R, ph = ht - T - B;
    const now = this.points.length ? this.points[this.points.length - 1][0] : Date.now() / 1000;
    const x = t => L + (1 - (now - t) / WINDOW) * pw;
    const y = v => T + ph - (v / top) * ph;

    g.lineWidth = 1;
    g.fillStyle = ink;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let v = 0; v <= top + step / 2; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      g.strokeStyle = grid;
      g.beginPath(); g.moveTo(L, yy); g.lineTo(w - R, yy); g.stroke();
      g.fillText(this.format(v), L - 6, yy);
    }
    g.textBaseline = 'alphabetic';
    for (const s of pw < 260 ? [120, 60, 0] : [120, 90, 60, 30, 0]) {
      g.textAlign = s === 120 ? 'left' : s === 0 ? 'right' : 'center';
      g.fillText(s ? `−${s}s` : 'now', x(now - s), ht - 5);
    }
    if (this.points.length < 2) {
      g.textAlign = 'center';
      g.fillText('collecting data…', L + pw / 2, T + ph / 2);
      if (!this.points.length) return;
    }

    g.save();
    g.beginPath(); g.rect(L, T - 2, pw, ph + 4); g.clip();
    g.beginPath();
    this.points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.strokeStyle = line;
    g.lineWidth = 2;
    g.lineJoin = 'round';
    g.stroke();
    g.lineTo(x(now), y(0));
    g.lineTo(x(this.points[0][0]), y(0));
    g.closePath();
    g.globalAlpha = 0.14;
    g.fillStyle = line;
    g.fill();
    g.restore();
  }
}

/* ============================================================== dashboard */

function viewDashboard(view) {
  const stat = (id, label) => h('div', { class: 'stat' },
    h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value', id }, '—'));
  const state = h('span', { id: 'dash-state', class: 'live' }, 'connecting…');
  const charts = {};
  const chartCard = (key, title, unit, opts) => {
    const canvas = h('canvas', { id: `chart-${key}`, role: 'img', 'aria-label': `${title}, last 2 minutes` });
    charts[key] = new Chart(canvas, opts);
    return h('section', { class: 'card chart-card' },
      h('div', { class: 'chart-head' }, h('h2', {}, title),
        h('span', { class: 'figure' }, h('span', { id: `rate-${key}` }, '—'), ' ', h('span', { class: 'unit' }, unit))),
      canvas);
  };
  const rates = table('site-rates', ['Site', 'Requests/s', 'Bytes/s', 'Errors/s (4xx+5xx)', 'Requests', 'Data sent', '5xx']);
  const sites = table('sites-table', ['Site', 'Hosts', 'Root', 'Listing', 'Access rules']);
  rates.empty('Waiting for the first reading…');
  sites.empty('Loading…');

  view.append(
    pageHead('Dashboard', state),
    h('section', { class: 'stats', 'aria-label': 'Totals' },
      stat('stat-uptime', 'Uptime'), stat('stat-version', 'Version'), stat('stat-requests', 'Requests'),
      stat('stat-bytes', 'Data sent'), stat('stat-connections', 'Connections'), stat('stat-tls', 'TLS handshakes (failed)')),
    h('div', { class: 'charts' },
      chartCard('requests', 'Requests per second', 'req/s', { color: '--c-requests' }),
      chartCard('bandwidth', 'Bandwidth', '/s', { color: '--c-bandwidth', format: fmtBytes, base: 1024, min: 1024 }),
      chartCard('connections', 'Open connections', 'open', { color: '--c-connections', min: 4 }),
      chartCard('errors', 'Error rate: 4xx + 5xx share of responses', '%', { color: '--c-errors', format: v => `${fmtNum(v)}%`, min: 5 })),
    h('section', { class: 'card' }, h('h2', {}, 'Traffic per site'), rates.wrap),
    h('section', { class: 'card' }, h('h2', {}, 'Sites'), sites.wrap));

  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  const d = (a, b) => Math.max(0, (a || 0) - (b || 0));
  const errorsOf = r => ((r && r['4xx']) || 0) + ((r && r['5xx']) || 0);
  let prev = null;

  function update(s, t) {
    set('stat-uptime', fmtDuration(s.uptime_seconds));
    set('stat-version', s.version || '—');
    set('stat-requests', fmtInt(s.requests_total));
    set('stat-bytes', fmtBytes(s.bytes_total));
    set('stat-connections', fmtInt(s.connections_total));
    set('stat-tls', `${fmtInt(s.tls_handshakes)} (${fmtInt(s.tls_handshake_failures)})`);
    charts.connections.push(t, s.connections_open || 0);
    set('rate-connections', fmtInt(s.connections_open));

    // A counter that went down means the server restarted: start over from this reading.
    const ok = prev && t > prev.t && s.requests_total >= prev.s.requests_total;
    const dt = ok ? t - prev.t : 0;
    if (ok) {
      const r = s.responses || {}, pr = prev.s.responses || {};
      const answered = ['2xx', '3xx', '4xx', '5xx'].reduce((sum, k) => sum + d(r[k], pr[k]), 0);
      const rps = d(s.requests_total, prev.s.requests_total) / dt;
      const bps = d(s.bytes_total, prev.s.bytes_total) / dt;
      const share = answered ? (d(r['4xx'], pr['4xx']) + d(r['5xx'], pr['5xx'])) / answered * 100 : 0;
      charts.requests.push(t, rps);
      charts.bandwidth.push(t, bps);
      charts.errors.push(t, share);
      set('rate-requests', rps.toFixed(1));
      set('rate-bandwidth', fmtBytes(bps));
      set('rate-errors', share.toFixed(1));
    }
    const before = new Map(((ok && prev.s.sites) || []).map(x => [x.name, x]));
    const perSite = s.sites || [];
    if (!perSite.length) rates.empty('No sites.');
    else rates.rows(perSite.map(site => {
      const p = before.get(site.name);
      const rate = (f, fmt) => (p ? fmt(d(f(site), f(p)) / dt) : '—');
      return [[site.name,
        rate(x => x.requests, v => v.toFixed(1)),
        rate(x => x.bytes, fmtBytes),
        rate(x => errorsOf(x.responses), v => v.toFixed(2)),
        fmtInt(site.requests), fmtBytes(site.bytes), fmtInt((site.responses || {})['5xx'] || 0)]];
    }));
    prev = { s, t };
  }

  let timer = null, stopped = false, failing = false;
  async function tick() {
    const started = Date.now();
    try {
      const s = await api('GET', '/api/status');
      if (stopped) return;
      update(s, Date.now() / 1000);
      state.textContent = 'live, every second';
      state.classList.remove('stale');
      failing = false;
    } catch (e) {
      if (stopped || e.handled) return;
      state.textContent = `not updating: ${e.message}`;
      state.classList.add('stale');
      if (!failing) fail(e);
      failing = true;
    }
    if (!stopped) timer = setTimeout(tick, Math.max(100, 1000 - (Date.now() - started)));
  }
  tick();

  api('GET', '/api/sites').then(all => {
    if (!all || !all.length) return sites.empty('No sites configured.');
    sites.rows(all.map(s => [[s.name, list(s.hosts), h('span', { class: 'mono' }, s.root || '—'),
      s.listing ? 'yes' : 'no',
      (s.access || []).length
        ? h('ul', { class: 'plain' }, s.access.map(a => h('li', {}, h('span', { class: 'mono' }, a.path), ' → ', list(a.allow))))
        : 'open to all']]));
  }).catch(e => { sites.empty(loadError('the sites', e)); fail(e); });

  const redraw = () => Object.values(charts).forEach(c => c.draw());
  const scheme = matchMedia('(prefers-color-scheme: dark)');
  scheme.addEventListener('change', redraw);
  return () => {
    stopped = true;
    clearTimeout(timer);
    scheme.removeEventListener('change', redraw);
    Object.values(charts).forEach(c => c.destroy());
  };
}

/* ============================================================== apps */

const APP_STATUS = { running: 'good', starting: 'warn', failed: 'bad', stopped: '' };
const APP_LOG_LINES = 200;
const idPart = s => String(s).replace(/[^\w-]/g, '_');

function viewApps(view) {
  const state = h('span', { id: 'apps-state', class: 'live' }, 'connecting…');
  const box = h('div', { id: 'apps-list', class: 'apps' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(pageHead('Apps', state), box);

  const cards = new Map(); // name → card (see appCard)
  let order = '', timer = null, stopped = false, failing = false, loadedOnce = false;

  /** The card of one app: built once, then updated in place so logs and restart progress survive polling. */
  function appCard(name) {
    const key = idPart(name);
    const badge = h('span', { class: 'badge app-status' });
    const message = h('p', { class: 'app-message', hidden: true });
    const summary = h('span', { class: 'muted small app-summary' });
    const restart = btn('Rolling restart', () => onRestart(), 'primary app-restart',
      { 'aria-label': `Rolling restart of ${name}` });
    const result = h('div', { class: 'app-result', role: 'status', id: `app-${key}-result` });
    const t = table(`app-${key}-instances`, ['ID', 'PID', 'Address', 'Ready', 'Started', 'Restarts']);
    t.wrap.classList.add('app-instances');
    const out = h('div', { class: 'log mono app-log', id: `app-${key}-logs`, role: 'log', 'aria-live': 'off',
      tabindex: '0', 'aria-label': `Output of ${name}` }, h('div', { class: 'muted' }, 'Loading…'));
    const logState = h('span', { class: 'muted small' }, `last ${APP_LOG_LINES} lines, refreshed every 2 s`);
    const el = h('section', { class: 'card app', 'data-app': name, 'aria-labelledby': `app-${key}-title` },
      h('div', { class: 'card-head' },
        h('div', { class: 'app-title' }, h('h2', { id: `app-${key}-title` }, name), badge, summary),
        restart),
      message, result,
      h('h3', {}, 'Instances'), t.wrap,
      h('div', { class: 'app-logs-head' },
        h('div', {}, h('h3', {}, 'Logs'), ' ', logState),
        btn('Refresh', () => loadLogs(true), 'small app-logs-refresh', { 'aria-label': `Refresh the logs of ${name}` })),
      out);
    let app = { name, instances: [] }, restarting = false, lastLog = null;

    function update(a) {
      app = a;
      const status = a.status || 'stopped';
      badge.className = `badge app-status ${APP_STATUS[status] ?? ''}`;
      badge.textContent = status;
      message.hidden = !a.message;
      message.className = `app-message ${status === 'failed' ? 'bad' : 'muted'}`;
      message.textContent = a.message || '';
      const inst = a.instances || [];
      const ready = inst.filter(i => i.ready).length;
      summary.textContent = `${ready} of ${inst.length} instance${inst.length === 1 ? '' : 's'} ready`;
      restart.disabled = restarting;
      if (!inst.length) return t.empty(status === 'failed' ? 'No instance is running.' : 'No instances.');
      t.rows(inst.map(i => [[
        h('span', { class: 'mono' }, `#${i.id}`),
        h('span', { class: 'mono' }, i.pid == null ? '—' : String(i.pid)),
        h('span', { class: 'mono' }, i.address || '—'),
        h('span', { class: `badge ${i.ready ? 'good' : 'warn'}` }, i.ready ? 'ready' : 'not ready'),
        timeEl(i.started, true),
        fmtInt(i.restarts),
      ], { 'data-instance': String(i.id), 'data-pid': i.pid == null ? '' : String(i.pid) }]));
    }

    function showLines(lines) {
      const text = lines.join('\n');
      if (text === lastLog) return;
      const atEnd = lastLog == null || out.scrollHeight - out.scrollTop - out.clientHeight < 24;
      lastLog = text;
      if (!lines.length) out.replaceChildren(h('div', { class: 'muted' }, 'No output yet.'));
      else out.replaceChildren(...lines.map(l => {
        const m = /^(\S+) (stdout|stderr): (.*)$/s.exec(l);
        return m
          ? h('div', { class: `line ${m[2]}` }, h('span', { class: 'tg' }, `${m[1]} ${m[2]}:`), ' ', h('span', { class: 'm' }, m[3]))
          : h('div', { class: 'line' }, l);
      }));
      if (atEnd) out.scrollTop = out.scrollHeight;
    }

    async function loadLogs(byHand = false) {
      try {
        const lines = (await api('GET', `/api/apps/${enc(name)}/logs?lines=${APP_LOG_LINES}`)) || [];
        if (stopped) return;
        showLines(lines);
        logState.textContent = `last ${APP_LOG_LINES} lines, refreshed every 2 s`;
      } catch (e) {
        if (stopped || e.handled) return;
        if (lastLog == null) out.replaceChildren(h('div', { class: 'muted' }, loadError('the logs', e)));
        logState.textContent = `not updating: ${e.message}`;
        if (byHand) fail(e);
      }
    }

    async function onRestart() {
      const n = (app.instances || []).length;
      const ok = await openDialog({
        title: `Rolling restart of ${name}?`, ok: 'Restart',
        body: [h('p', {}, `servente starts new instances one by one and stops an old one each time a new one is ready, ` +
          `so ${name} keeps serving. ${n ? `${n} instance${n === 1 ? '' : 's'} to replace; this` : 'This'} can take a few seconds.`)],
      });
      if (!ok || restarting || stopped) return;
      restarting = true;
      restart.disabled = true;
      el.setAttribute('aria-busy', 'true');
      const began = Date.now();
      const elapsed = h('span', { class: 'elapsed' }, '0 s');
      result.replaceChildren(h('div', { class: 'banner info app-progress' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }),
        h('span', {}, 'Rolling restart in progress: starting new instances and waiting until they are ready… '), elapsed));
      const tick = setInterval(() => { elapsed.textContent = `${Math.round((Date.now() - began) / 1000)} s`; }, 1000);
      const took = () => `${((Date.now() - began) / 1000).toFixed(1)} s`;
      try {
        const a = await api('POST', `/api/apps/${enc(name)}/restart`);
        if (a) update(a);
        const ids = ((a && a.instances) || []).map(i => `#${i.id}`).join(', ');
        const msg = `Rolling restart of ${name} done in ${took()}${ids ? `: now running ${ids}` : ''}.`;
        result.replaceChildren(h('div', { class: 'banner ok app-done' }, h('strong', {}, msg)));
        if (stopped) notify(msg, 'ok');
        loadLogs();
      } catch (e) {
        if (e.handled) return;
        result.replaceChildren(h('div', { class: 'banner bad app-failed' },
          h('strong', {}, `Rolling restart of ${name} failed after ${took()}: `), e.message));
        if (stopped) fail(e);
      } finally {
        clearInterval(tick);
        restarting = false;
        restart.disabled = false;
        el.removeAttribute('aria-busy');
      }
    }

    return { el, update, loadLogs };
  }

  function emptyState() {
    return h('section', { class: 'card empty-state', id: 'apps-empty' },
      h('h2', {}, 'No apps configured'),
      h('p', {}, 'Apps are programs servente starts, keeps running and forwards requests to: it tells each instance ' +
        'where to listen (a free port in PORT), sends it traffic once it answers, restarts it when it crashes and ' +
        'replaces instances one by one on a rolling restart.'),
      h('p', {}, 'To add one, put an ', h('code', {}, '[[app]]'), ' section in the config, and send a site\u2019s paths to it with ',
        h('code', {}, '[[site.proxy]]'), ':'),
      h('pre', { class: 'mono example' }, [
        '[[app]]', 'name = "hello"', 'command = "python3"', 'args = ["app.py"]', 'instances = 2', '',
        '[[site.proxy]]  # belongs to the [[site]] above it', 'path = "/app/"', 'upstream = "hello"'].join('\n')),
      h('p', { class: 'muted small' }, 'Edit the config on the ', h('a', { href: '#/config' }, 'Config'),
        ' page; apps start as soon as it is applied.'));
  }

  function render(apps) {
    const names = apps.map(a => a.name);
    for (const [name, c] of cards) if (!names.includes(name)) { c.el.remove(); cards.delete(name); }
    if (!apps.length) {
      if (!$('#apps-empty', box)) box.replaceChildren(emptyState());
      order = '';
      return;
    }
    for (const a of apps) if (!cards.has(a.name)) cards.set(a.name, appCard(a.name));
    if (names.join('\n') !== order) {
      order = names.join('\n');
      box.replaceChildren(...names.map(n => cards.get(n).el));
    }
    for (const a of apps) cards.get(a.name).update(a);
  }

  async function tick() {
    const started = Date.now();
    try {
      const apps = (await api('GET', '/api/apps')) || [];
      if (stopped) return;
      render(apps);
      loadedOnce = true;
      state.textContent = 'live, every 2 s';
      state.classList.remove('stale');
      failing = false;
      await Promise.all([...cards.values()].map(c => c.loadLogs()));
    } catch (e) {
      if (stopped || e.handled) return;
      if (!loadedOnce) box.replaceChildren(h('p', { class: 'muted' }, loadError('the apps', e)));
      state.textContent = `not updating: ${e.message}`;
      state.classList.add('stale');
      if (!failing) fail(e);
      failing = true;
    }
    if (!stopped) timer = setTimeout(tick, Math.max(100, 2000 - (Date.now() - started)));
  }
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

/* ============================================================== users */

function viewUsers(view) {
  const slot = h('div', { id: 'user-secret', class: 'secret-slot' });
  const form = h('form', { id: 'user-create', class: 'card form-grid', onsubmit: create },
    h('h2', {}, 'New user'),
    field('Name', h('input', { name: 'name', required: true, autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false' })),
    field('Display name', h('input', { name: 'display_name', autocomplete: 'off' })),
    field('Email', h('input', { name: 'email', type: 'email', autocomplete: 'off' })),
    field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'new-password' }),
      'Leave empty to have one generated.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'user-create-submit' }, 'Create user')));
  const filter = h('input', { type: 'search', id: 'users-filter', placeholder: 'name, email, group…', oninput: render });
  const t = table('users-table', ['Name', 'Display name', 'Email', 'Groups', 'Status', 'Created', 'Actions']);
  t.empty('Loading…');
  view.append(pageHead('Users'), form, slot,
    h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, 'All users'), field('Filter', filter)), t.wrap));

  let users = [];
  async function load() {
    try { users = (await api('GET', '/api/users')) || []; render(); } catch (e) { t.empty(loadError('the users', e)); fail(e); }
  }

  function render() {
    const q = filter.value.trim().toLowerCase();
    const shown = users.filter(u => !q || [u.name, u.display_name, u.email, ...(u.groups || [])]
      .some(x => String(x || '').toLowerCase().includes(q)));
    if (!shown.length) return t.empty(users.length ? 'No user matches the filter.' : 'No users yet.');
    t.rows(shown.map(u => [[
      h('strong', {}, u.name), u.display_name || '—', u.email || '—', list(u.groups),
      h('span', { class: `badge ${u.disabled ? 'bad' : 'good'}` }, u.disabled ? 'disabled' : 'active'),
      timeEl(u.created),
      h('div', { class: 'row-actions' },
        btn('Reset password', () => resetPassword(u), 'small act-reset', { 'aria-label': `Reset password of ${u.name}` }),
        btn(u.disabled ? 'Enable' : 'Disable', () => toggle(u), 'small act-toggle', { 'aria-label': `${u.disabled ? 'Enable' : 'Disable'} ${u.name}` }),
        btn('Delete', () => remove(u), 'small danger act-delete', { 'aria-label': `Delete ${u.name}` })),
    ], { 'data-user': u.name, class: u.disabled ? 'is-disabled' : null }]));
  }

  async function create(ev) {
    ev.preventDefault();
    const fd = new FormData(form);
    const body = { name: String(fd.get('name')).trim() };
    for (const k of ['display_name', 'email']) if (String(fd.get(k)).trim()) body[k] = String(fd.get(k)).trim();
    if (fd.get('password')) body.password = fd.get('password');
    await busy(form, async () => {
      const u = await api('POST', '/api/users', body);
      form.reset();
      notify(`User ${u.name} created.`, 'ok');
      if (u.password) secretBox(slot, `Generated password for ${u.name}`, u.password);
      await load();
    });
  }

  async function resetPassword(u) {
    const fd = await openDialog({
      title: `Reset the password of ${u.name}`, ok: 'Reset password',
      body: [field('New password', h('input', { name: 'password', type: 'password', autocomplete: 'new-password' }),
        'Leave empty to have one generated.')],
    });
    if (!fd) return;
    const pw = fd.get('password');
    try {
      const r = await api('PUT', `/api/users/${enc(u.name)}/password`, pw ? { password: pw } : {});
      if (r && r.password) secretBox(slot, `New password for ${u.name}`, r.password);
      else notify(`The password of ${u.name} was changed.`, 'ok');
    } catch (e) { fail(e); }
  }

  async function toggle(u) {
    try {
      const nu = await api('PATCH', `/api/users/${enc(u.name)}`, { disabled: !u.disabled });
      Object.assign(u, nu || { disabled: !u.disabled });
      notify(`${u.name} is now ${u.disabled ? 'disabled' : 'enabled'}.`, 'ok');
      render();
    } catch (e) { fail(e); }
  }

  async function remove(u) {
    const self = session && u.name === session.user ? ' This is the account you are signed in with.' : '';
    if (!await confirmDialog(`Delete user ${u.name}?`, `Their tokens stop working. This cannot be undone.${self}`)) return;
    try {
      await api('DELETE', `/api/users/${enc(u.name)}`);
      notify(`User ${u.name} deleted.`, 'ok');
      users = users.filter(x => x !== u);
      render();
    } catch (e) { fail(e); }
  }

  load();
}

/* ============================================================== groups */

function viewGroups(view) {
  const form = h('form', { id: 'group-create', class: 'card form-grid', onsubmit: create },
    h('h2', {}, 'New group'),
    field('Name', h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' })),
    field('Description', h('input', { name: 'description', autocomplete: 'off' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create group')));
  const box = h('div', { id: 'groups-list', class: 'groups' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(pageHead('Groups'), form, box);

  let groups = [], users = [];
  async function load() {
    try {
      [groups, users] = await Promise.all([api('GET', '/api/groups'), api('GET', '/api/users')]);
      render();
    } catch (e) {
      box.replaceChildren(h('p', { class: 'muted' }, loadError('the groups', e)));
      fail(e);
    }
  }

  function render() {
    if (!groups.length) return box.replaceChildren(h('p', { class: 'muted' }, 'No groups yet.'));
    box.replaceChildren(...groups.map(g => {
      const members = g.members || [];
      const others = users.map(u => u.name).filter(n => !members.includes(n));
      const pick = h('select', { name: 'user', 'aria-label': `User to add to ${g.name}` },
        others.map(n => h('option', { value: n }, n)));
      const add = h('form', { class: 'inline', onsubmit: ev => { ev.preventDefault(); addMember(g, pick.value, add); } },
        pick, h('button', { type: 'submit' }, 'Add member'));
      return h('section', { class: 'card group', 'data-group': g.name },
        h('div', { class: 'card-head' }, h('h2', {}, g.name),
          btn('Delete group', () => remove(g), 'small danger', { 'aria-label': `Delete group ${g.name}` })),
        g.description ? h('p', { class: 'muted' }, g.description) : null,
        members.length
          ? h('ul', { class: 'chips', 'aria-label': `Members of ${g.name}` }, members.map(m => h('li', { class: 'chip' }, m,
            h('button', { type: 'button', class: 'chip-x', title: `Remove ${m}`, 'aria-label': `Remove ${m} from ${g.name}`,
              onclick: () => removeMember(g, m) }, '×'))))
          : h('p', { class: 'muted small' }, 'No members.'),
        others.length ? add : h('p', { class: 'muted small' }, 'Every user is a member.'));
    }));
  }

  async function create(ev) {
    ev.preventDefault();
    const fd = new FormData(form);
    const body = { name: String(fd.get('name')).trim() };
    if (String(fd.get('description')).trim()) body.description = String(fd.get('description')).trim();
    await busy(form, async () => {
      const g = await api('POST', '/api/groups', body);
      form.reset();
      notify(`Group ${(g && g.name) || body.name} created.`, 'ok');
      await load();
    });
  }

  async function remove(g) {
    if (!await confirmDialog(`Delete group ${g.name}?`, 'Its members lose what the group allowed them.')) return;
    try { await api('DELETE', `/api/groups/${enc(g.name)}`); notify(`Group ${g.name} deleted.`, 'ok'); await load(); } catch (e) { fail(e); }
  }

  async function addMember(g, user, el) {
    if (!user) return;
    await busy(el, async () => {
      await api('PUT', `/api/groups/${enc(g.name)}/members/${enc(user)}`);
      notify(`${user} added to ${g.name}.`, 'ok');
      await load();
    });
  }

  async function removeMember(g, user) {
    if (session && g.name === 'admins' && user === session.user &&
      !await confirmDialog(`Remove yourself from ${g.name}?`, 'You will lose access to this console.', 'Remove')) return;
    try {
      await api('DELETE', `/api/groups/${enc(g.name)}/members/${enc(user)}`);
      notify(`${user} removed from ${g.name}.`, 'ok');
      await load();
    } catch (e) { fail(e); }
  }

  load();
}

/* ============================================================== tokens */

const SCOPES = [['admin', 'the whole admin API'], ['admin:read', 'admin API, read only'], ['user', "the user's own access"]];

function viewTokens(view) {
  const slot = h('div', { id: 'token-secret', class: 'secret-slot' });
  const who = h('select', { name: 'user' }, h('option', { value: '' }, `me (${session.user})`));
  const form = h('form', { id: 'token-create', class: 'card form-grid', onsubmit: create },
    h('h2', {}, 'New token'),
    field('User', who),
    field('Name', h('input', { name: 'name', required: true, autocomplete: 'off', placeholder: 'e.g. backup script' })),
    h('fieldset', { class: 'field scopes' }, h('legend', {}, 'Scopes'),
      SCOPES.map(([s, what]) => h('label', { class: 'check' },
        h('input', { type: 'checkbox', name: 'scopes', value: s }), ' ', h('span', { class: 'mono' }, s), ' ', h('small', { class: 'muted' }, what)))),
    field('Expires in (days)', h('input', { name: 'expires_in_days', type: 'number', min: 1, step: 1, inputmode: 'numeric' }),
      'Leave empty for a token that does not expire.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create token')));
  const t = table('tokens-table', ['ID', 'User', 'Name', 'Scopes', 'Created', 'Expires', 'Last used', 'Actions']);
  t.empty('Loading…');
  view.append(pageHead('Tokens'), form, slot, h('section', { class: 'card' }, h('h2', {}, 'All tokens'), t.wrap));

  let tokens = [];
  async function load() {
    try { tokens = (await api('GET', '/api/tokens')) || []; render(); } catch (e) { t.empty(loadError('the tokens', e)); fail(e); }
  }
  api('GET', '/api/users').then(us => {
    who.append(...(us || []).filter(u => u.name !== session.user).map(u => h('option', { value: u.name }, u.name)));
  }).catch(fail);

  function render() {
    if (!tokens.length) return t.empty('No tokens.');
    const now = Date.now();
    t.rows(tokens.map(k => {
      const exp = toDate(k.expires), expired = exp && exp.getTime() < now;
      return [[h('span', { class: 'mono' }, String(k.id)), k.user, k.name, list(k.scopes), timeEl(k.created),
        k.expires == null ? 'never' : h('span', { class: expired ? 'badge bad' : '' }, timeEl(k.expires), expired ? ' expired' : ''),
        k.last_used == null ? 'never' : timeEl(k.last_used),
        btn('Revoke', () => revoke(k), 'small danger act-revoke', { 'aria-label': `Revoke token ${k.name}` })],
      { 'data-token': String(k.id) }];
    }));
  }

  async function create(ev) {
    ev.preventDefault();
    const fd = new FormData(form);
    const body = { name: String(fd.get('name')).trim(), scopes: fd.getAll('scopes') };
    if (fd.get('user')) body.user = fd.get('user');
    if (fd.get('expires_in_days')) body.expires_in_days = Number(fd.get('expires_in_days'));
    await busy(form, async () => {
      const k = await api('POST', '/api/tokens', body);
      form.reset();
      notify(`Token ${k.name} created.`, 'ok');
      if (k.secret) secretBox(slot, `Secret of token “${k.name}”`, k.secret,
        'It is shown only this once: copy it now. Send it as "Authorization: Bearer <secret>".');
      await load();
    });
  }

  async function revoke(k) {
    if (!await confirmDialog(`Revoke token “${k.name}”?`, `Scripts using it (user ${k.user}) stop working at once.`, 'Revoke')) return;
    try { await api('DELETE', `/api/tokens/${enc(k.id)}`); notify(`Token ${k.name} revoked.`, 'ok'); await load(); } catch (e) { fail(e); }
  }

  load();
}

/* ============================================================== config */

function viewConfig(view) {
  const text = h('textarea', { id: 'config-text', class: 'mono', spellcheck: 'false', autocomplete: 'off',
    autocapitalize: 'off', wrap: 'off', rows: 24, 'aria-label': 'Configuration (TOML)', 'aria-describedby': 'config-source' });
  const source = h('p', { id: 'config-source', class: 'muted small' }, 'Loading…');
  const result = h('div', { id: 'config-result', role: 'status' });
  const dirty = h('span', { class: 'badge warn', hidden: true }, 'edited');
  const tools = h('div', { class: 'actions' },
    btn('Validate', validate, '', { id: 'config-validate' }),
    btn('Apply', apply, 'primary', { id: 'config-apply' }),
    btn('Reload', reload, '', { id: 'config-reload' }), dirty);
  view.append(pageHead('Config'), h('section', { class: 'card' }, source, text, tools, result));

  let original = '';
  text.addEventListener('input', () => { dirty.hidden = text.value === original; });

  async function load() {
    try {
      const c = await api('GET', '/api/config');
      text.value = original = (c && c.text) || '';
      dirty.hidden = true;
      source.textContent = `Source: ${(c && c.source) || '(none)'} · ${c && c.persisted
        ? 'applied changes are written back to this file.'
        : 'applied changes only change the running server (not written to a file).'}`;
    } catch (e) { source.textContent = loadError('the configuration', e); fail(e); }
  }

  function show(kind, message, problems = []) {
    result.replaceChildren(h('div', { class: `banner ${kind}` }, h('strong', {}, message),
      problems.length ? h('ul', { id: 'config-problems', class: 'problems mono' }, problems.map(p => {
        const line = /:(\d+):/.exec(p);
        return h('li', {}, line ? h('button', { type: 'button', class: 'link', onclick: () => goLine(+line[1]),
          title: `Go to line ${line[1]}` }, p) : p);
      })) : null));
  }

  function goLine(n) {
    const lines = text.value.split('\n');
    const start = lines.slice(0, n - 1).reduce((a, l) => a + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[n - 1] || '').length);
    const lh = parseFloat(getComputedStyle(text).lineHeight) || 18;
    text.scrollTop = Math.max(0, (n - 3) * lh);
  }

  async function send(kind) {
    result.replaceChildren(h('p', { class: 'muted' }, kind === 'apply' ? 'Applying…' : 'Validating…'));
    try {
      const r = await busy0(tools, () => api('POST', `/api/config/${kind}`, { text: text.value }));
      if (kind === 'validate') return show('ok', 'The configuration is valid.');
      original = text.value;
      dirty.hidden = true;
      show('ok', r && r.persisted ? 'Applied, and saved to the configuration file.'
        : 'Applied to the running server; not saved to a file (persisted: no).');
    } catch (e) {
      if (e.handled) return;
      show('bad', e.message, e.problems);
    }
  }
  function validate() { return send('validate'); }
  function apply() { return send('apply'); }
  async function reload() {
    if (text.value !== original && !await confirmDialog('Discard your edits?', 'The text is loaded again from the server.', 'Discard')) return;
    result.replaceChildren();
    load();
  }
  load();
}

/** Like busy() but lets errors through to the caller. */
async function busy0(el, fn) {
  const buttons = $$('button', el);
  buttons.forEach(b => { b.disabled = true; });
  try { return await fn(); } finally { buttons.forEach(b => { b.disabled = false; }); }
}

/* ============================================================== log */

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const levelOf = l => {
  const s = String(l || '').toLowerCase();
  return LEVELS.find(x => s.startsWith(x.slice(0, 3))) || 'info';
};
const MAX_LINES = 5000;

function viewLog(view) {
  const level = h('select', { id: 'log-level' }, h('option', { value: '' }, 'all levels'),
    LEVELS.slice(1).map(l => h('option', { value: l }, `${l} and above`)));
  const filter = h('input', { type: 'search', id: 'log-filter', placeholder: 'text…' });
  const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
  const state = h('span', { class: 'live', id: 'log-state' }, 'connecting…');
  const out = h('div', { id: 'log-view', class: 'log mono', role: 'log', 'aria-live': 'off', tabindex: '0',
    'aria-label': 'Application log' });
  view.append(pageHead('Log', state),
    h('div', { class: 'toolbar' }, field('Level', level), field('Search', filter),
      h('label', { class: 'check' }, follow, ' Follow new lines'),
      btn('Clear view', () => { lines = []; out.replaceChildren(); }, 'small')),
    out);

  let lines = [], after = 0, timer = null, stopped = false;
  const visible = l => {
    const q = filter.value.trim().toLowerCase();
    return (!level.value || LEVELS.indexOf(levelOf(l.level)) >= LEVELS.indexOf(level.value)) &&
      (!q || `${l.target} ${l.message}`.toLowerCase().includes(q));
  };
  const lineEl = l => h('div', { class: `line lvl-${levelOf(l.level)}` },
    h('span', { class: 't' }, fmtTime(l.time, true)), ' ',
    h('span', { class: 'lv' }, String(l.level || '').toUpperCase().padEnd(5)), ' ',
    h('span', { class: 'tg' }, l.target || ''), ' ', h('span', { class: 'm' }, l.message || ''));
  const scroll = () => { if (follow.checked) out.scrollTop = out.scrollHeight; };
  function rebuild() { out.replaceChildren(...lines.filter(visible).map(lineEl)); scroll(); }
  level.addEventListener('change', rebuild);
  filter.addEventListener('input', rebuild);
  follow.addEventListener('change', scroll);

  async function poll() {
    try {
      const got = (await api('GET', `/api/log?after=${after}`)) || [];
      if (stopped) return;
      if (got.length) {
        after = Math.max(after, ...got.map(l => l.seq || 0));
        lines.push(...got);
        if (lines.length > MAX_LINES) { lines = lines.slice(-MAX_LINES); rebuild(); } else {
          out.append(...got.filter(visible).map(lineEl));
          scroll();
        }
      }
      state.textContent = `live, ${lines.length} lines`;
      state.classList.remove('stale');
    } catch (e) {
      if (stopped || e.handled) return;
      state.textContent = `not updating: ${e.message}`;
      state.classList.add('stale');
    }
    if (!stopped) timer = setTimeout(poll, 2000);
  }
  poll();
  return () => { stopped = true; clearTimeout(timer); };
}

/* ============================================================== audit */

function viewAudit(view) {
  const limit = h('select', { id: 'audit-limit' }, [50, 200, 1000].map(n => h('option', { value: n, selected: n === 200 }, n)));
  const filter = h('input', { type: 'search', id: 'audit-filter', placeholder: 'actor, action, target…' });
  const t = table('audit-table', ['Time', 'Actor', 'Client', 'Action', 'Target', 'Outcome', 'Detail']);
  t.empty('Loading…');
  view.append(pageHead('Audit'),
    h('div', { class: 'toolbar' }, field('Entries', limit), field('Filter', filter),
      btn('Refresh', load, 'small', { id: 'audit-refresh' })),
    h('section', { class: 'card' }, t.wrap));

  let entries = [];
  const text = v => (v == null ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const outcome = o => {
    const s = text(o).toLowerCase();
    return /^(ok|success|succeeded|allowed|granted)/.test(s) ? 'good' : /(fail|denied|error|refused|invalid)/.test(s) ? 'bad' : '';
  };
  function render() {
    const q = filter.value.trim().toLowerCase();
    const shown = entries.filter(e => !q || ['actor', 'client', 'action', 'target', 'outcome', 'detail']
      .some(k => text(e[k]).toLowerCase().includes(q)));
    if (!shown.length) return t.empty(entries.length ? 'No entry matches the filter.' : 'No entries yet.');
    t.rows(shown.map(e => [[timeEl(e.time, true), text(e.actor) || '—', h('span', { class: 'mono' }, text(e.client) || '—'),
      text(e.action), text(e.target) || '—', h('span', { class: `badge ${outcome(e.outcome)}` }, text(e.outcome) || '—'),
      h('span', { class: 'detail' }, text(e.detail))]]));
  }
  async function load() {
    try {
      entries = (await api('GET', `/api/audit?limit=${limit.value}`)) || [];
      render();
    } catch (e) { t.empty(loadError('the audit log', e)); fail(e); }
  }
  limit.addEventListener('change', load);
  filter.addEventListener('input', render);
  load();
}

boot();
