// servente files: the web file manager. A plain ES module over the file role of the mount this
// page is served at: WebDAV (MOUNT/dav/…) to browse, create folders, rename, move, delete and
// upload small files; the JSON API (MOUNT/api/…) to sign in, for resumable chunked uploads,
// folder zips and share links. No framework, no build step, nothing fetched from elsewhere;
// text from the server is inserted with textContent / text nodes, never innerHTML.
// SPDX-License-Identifier: Apache-2.0

/* ============================================================== where we are */

/** The mount: the page is MOUNT (or MOUNT/index.html). */
const MOUNT = (() => {
  let p = location.pathname.replace(/index\.html$/, '');
  if (!p.endsWith('/')) p += '/';
  return p;
})();
const API = `${MOUNT}api/`;
const DAV = `${MOUNT}dav`;
/** Files up to this size go up in one PUT; larger ones in chunks of CHUNK bytes, resumable. */
const SMALL = 8 << 20;
const CHUNK = 8 << 20;
const MAX_RETRIES = 8;

/* ============================================================== DOM and formatting helpers */

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'readOnly', 'required', 'hidden']);

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
const icon = name => h('span', { class: `ico ico-${name}`, 'aria-hidden': 'true' });

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return '—';
  let i = 0;
  while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${i ? +n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0) : Math.round(n)} ${UNITS[i]}`;
}
const pad2 = n => String(n).padStart(2, '0');
function fmtTime(d) {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) return '—';
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}
const fromUnix = s => (s == null ? null : new Date(s * 1000));
function timeEl(d) {
  if (!(d instanceof Date) || Number.isNaN(d.getTime()) || d.getTime() <= 0) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: d.toISOString(), title: d.toString() }, fmtTime(d));
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

/* ============================================================== paths */

// Paths inside the WebDAV space are kept decoded ("/users/alice/My files/été.txt"); folders end
// with "/". They are encoded segment by segment only to make URLs.
const encPath = p => p.split('/').map(encodeURIComponent).join('/');
const davUrl = p => DAV + encPath(p);
const zipUrl = p => `${API}zip?path=${encodeURIComponent(p.replace(/\/$/, '') || '/')}`;
const hashFor = p => `#${encPath(p)}`;
const isDirPath = p => p.endsWith('/');
/** The folder holding a path ("/a/b/c" and "/a/b/c/" → "/a/b/"). */
function parentOf(p) {
  const t = p.replace(/\/$/, '');
  return t.slice(0, t.lastIndexOf('/') + 1) || '/';
}
const baseName = p => p.replace(/\/$/, '').split('/').pop();
/** Resolves `input` (absolute, or relative to `dir`; "..", "." allowed) to a folder path. */
function resolveFolder(input, dir) {
  const raw = input.trim();
  const parts = (raw.startsWith('/') ? raw : dir + raw).split('/');
  const out = [];
  for (const s of parts) {
    if (s === '' || s === '.') continue;
    if (s === '..') out.pop(); else out.push(s);
  }
  return `/${out.join('/')}${out.length ? '/' : ''}`;
}
/** Why a file or folder name is not acceptable; '' when it is. */
function badName(name) {
  if (!name.trim()) return 'Give a name.';
  if (name === '.' || name === '..') return 'That name is reserved.';
  if (name.includes('/')) return 'A name cannot contain “/”.';
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'A name cannot contain control characters.';
  return '';
}

/* ============================================================== messages, dialogs */

function notify(text, kind = 'info') {
  const box = $('#messages');
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : null }, h('span', {}, text),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×'));
  box.append(t);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => t.remove(), kind === 'error' ? 10000 : 5000);
}
function fail(err) {
  if (!err || !err.handled) notify((err && err.message) || String(err), 'error');
}

/**
 * A modal <dialog>; resolves to the FormData of its form when confirmed, null when cancelled.
 * `check(form)` may return an error text that keeps the dialog open.
 */
function openDialog({ title, body = [], ok = 'OK', danger = false, check = null, cancel = 'Cancel' }) {
  const dlg = $('#dialog');
  if (dlg.open) dlg.close(); // the one before counts as cancelled
  return new Promise(resolve => {
    const error = h('p', { class: 'form-error', id: 'dialog-error', role: 'alert' });
    const form = h('form', { method: 'dialog', novalidate: true },
      h('h2', { id: 'dialog-title' }, title),
      h('div', { class: 'dialog-body' }, body),
      error,
      h('div', { class: 'actions' },
        cancel && h('button', { type: 'submit', value: 'cancel', formnovalidate: true, id: 'dialog-cancel' }, cancel),
        h('button', { type: 'submit', value: 'ok', class: danger ? 'danger solid' : 'primary', id: 'dialog-ok' }, ok)));
    form.addEventListener('submit', e => {
      if (e.submitter && e.submitter.value === 'ok' && check) {
        const why = check(form);
        if (why) {
          e.preventDefault();
          error.textContent = why;
        }
      }
    });
    dlg.replaceChildren(form);
    dlg.setAttribute('aria-labelledby', 'dialog-title');
    dlg.returnValue = '';
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok' ? new FormData(form) : null), { once: true });
    dlg.showModal();
    const first = $('input, select', form);
    if (first) { first.focus(); if (first.select) first.select(); }
  });
}
const confirmDialog = (title, text, ok = 'Delete') =>
  openDialog({ title, body: [h('p', {}, text)], ok, danger: true }).then(Boolean);

function field(label, input, hint) {
  const note = hint && h('small', { class: 'hint', id: `${input.id}-hint` }, hint);
  if (note) input.setAttribute('aria-describedby', note.id);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, note);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) {
      button.textContent = 'Copied';
      setTimeout(() => { button.textContent = 'Copy'; }, 1500);
    }
  } catch {
    notify('Copy failed: select the link and copy it by hand.', 'error');
  }
}

/* ============================================================== the JSON API, WebDAV */

class ApiError extends Error {
  constructor(status, data, retryAfter) {
    super((data && data.error) || (status ? `The server answered ${status}.` : 'Cannot reach the server.'));
    this.status = status;
    this.data = data;
    this.retryAfter = retryAfter;
    this.handled = false;
  }
}
/** A request that never got an answer (network down, connection reset). */
class NetError extends Error {
  constructor() { super('Cannot reach the server.'); this.status = 0; }
}

let session = null; // {user, groups, csrf, home, areas, quota}
/** When the server last answered as signed in (see ensureSession). */
let lastOk = 0;
const STALE = 60_000;

async function api(method, path, body, { signin = false } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && session && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let res, text;
  try {
    res = await fetch(API + path, init);
    text = await res.text();
  } catch {
    throw new NetError();
  }
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = res.ok ? null : { error: `The server answered ${res.status}.` }; }
  }
  if (res.ok) {
    lastOk = Date.now();
    return data;
  }
  const err = new ApiError(res.status, data, res.headers.get('Retry-After'));
  if (res.status === 401 && !signin) {
    err.handled = true;
    signedOut('Your session has ended. Please sign in again.');
  }
  throw err;
}

/** One line for a WebDAV status (WebDAV errors come as bare status codes). */
function davMessage(status, what = '') {
  const m = {
    400: 'The server refused the request (is the name valid?).',
    401: 'Your session has ended. Please sign in again.',
    403: 'Not allowed: this place is read-only for you.',
    404: 'Not found: it may have been moved or deleted.',
    405: 'A file or folder of that name already exists.',
    409: 'The folder it goes into does not exist.',
    412: 'A file or folder of that name already exists there.',
    413: 'Too large for the server.',
    415: 'The server does not accept this.',
    423: 'It is locked by a WebDAV client; try again later.',
    502: 'That destination is not on this server.',
    507: 'Not enough space: your storage quota is full.',
  }[status] || (status ? `The server answered ${status}.` : 'Cannot reach the server.');
  return what ? `${what}: ${m}` : m;
}

/**
 * WebDAV answers a request without a valid session with a Basic challenge, which makes the
 * browser pop up its own password dialog. So when the session may have ended meanwhile (nothing
 * answered for a minute: a tab left open), ask the JSON API first, which answers plain 401.
 */
async function ensureSession() {
  if (Date.now() - lastOk < STALE) return;
  await api('GET', 'session');
}

async function dav(method, path, { headers = {}, body, what = '' } = {}) {
  await ensureSession();
  const hs = { ...headers };
  if (!['GET', 'HEAD', 'OPTIONS', 'PROPFIND'].includes(method) && session) hs['X-CSRF-Token'] = session.csrf;
  let res;
  try {
    res = await fetch(davUrl(path), { method, headers: hs, body, credentials: 'same-origin', cache: 'no-store' });
  } catch {
    throw new ApiError(0, { error: davMessage(0, what) });
  }
  if (res.ok || res.status === 207) {
    lastOk = Date.now();
    return res;
  }
  let msg = davMessage(res.status, what);
  // servente's own refusals (not dav-server's) come with a one-line text reason.
  if ((res.headers.get('Content-Type') || '').startsWith('text/plain')) {
    const t = (await res.text().catch(() => '')).trim();
    if (t && t.length < 160 && !t.includes('\n')) msg = `${what ? `${what}: ` : ''}${t.charAt(0).toUpperCase()}${t.slice(1)}.`;
  }
  const err = new ApiError(res.status, { error: msg });
  if (res.status === 401) {
    err.handled = true;
    signedOut('Your session has ended. Please sign in again.');
  }
  throw err;
}

const PROPFIND_BODY = '<?xml version="1.0" encoding="utf-8"?>' +
  '<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/><D:getlastmodified/></D:prop></D:propfind>';

/** The entries of a folder: [{name, path, dir, size, modified}]. */
async function listFolder(path) {
  const res = await dav('PROPFIND', path, {
    headers: { Depth: '1', 'Content-Type': 'application/xml; charset=utf-8' }, body: PROPFIND_BODY, what: 'Cannot open the folder',
  });
  const doc = new DOMParser().parseFromString(await res.text(), 'application/xml');
  if (doc.querySelector('parsererror')) throw new Error('Cannot open the folder: the server sent an unreadable listing.');
  const NS = 'DAV:';
  const first = (el, name) => el.getElementsByTagNameNS(NS, name)[0];
  const out = [];
  for (const r of doc.getElementsByTagNameNS(NS, 'response')) {
    const href = first(r, 'href');
    if (!href) continue;
    let p;
    try {
      p = new URL(href.textContent.trim(), location.origin).pathname;
      if (!p.startsWith(DAV)) continue;
      p = p.slice(DAV.length).split('/').map(decodeURIComponent).join('/');
    } catch { continue; }
    const rt = first(r, 'resourcetype');
    const dir = !!(rt && first(rt, 'collection'));
    if (dir && !p.endsWith('/')) p += '/';
    if (p === path) continue; // the folder itself
    const len = first(r, 'getcontentlength');
    const mod = first(r, 'getlastmodified');
    out.push({
      name: baseName(p), path: p, dir,
      size: dir || !len ? null : Number(len.textContent),
      modified: mod ? new Date(mod.textContent) : null,
    });
  }
  return out;
}

/* ============================================================== session, shell */

function showOnly(id) {
  for (const x of ['loading', 'signin', 'app']) $(`#${x}`).hidden = x !== id;
}

function showSignin(message = '') {
  showOnly('signin');
  document.title = 'Sign in · servente files';
  $('#signin-error').textContent = message;
  $('#signin-password').value = '';
  ($('#signin-user').value ? $('#signin-password') : $('#signin-user')).focus();
}

function signedOut(message) {
  if (!session && !$('#signin').hidden) return;
  session = null;
  const dlg = $('#dialog');
  if (dlg.open) dlg.close();
  forgetUploads();
  showSignin(message);
}

/** Stops and forgets the uploads of the page (a chunked one can be resumed after signing in). */
function forgetUploads() {
  queue.length = 0;
  for (const u of uploads) { u.cancelled = true; u.stop(); }
  uploads.length = 0;
  madeDirs.clear();
  $('#upload-list').replaceChildren();
  $('#uploads').hidden = true;
}

function showApp() {
  showOnly('app');
  $('#whoami').textContent = session.user;
  renderQuota();
  renderAreas();
  showPendingUploads();
  route();
}

function renderQuota() {
  const { used = 0, limit = null } = session.quota || {};
  const q = $('#quota');
  q.dataset.used = String(used);
  q.dataset.limit = limit == null ? '' : String(limit);
  const bar = $('#quota-bar');
  bar.hidden = limit == null;
  if (limit != null) {
    bar.max = Math.max(limit, 1);
    bar.value = Math.min(used, limit);
    bar.classList.toggle('warn', used / limit >= 0.9);
  }
  $('#quota-text').textContent = limit == null ? `${fmtBytes(used)} used` : `${fmtBytes(used)} of ${fmtBytes(limit)}`;
  q.title = limit == null ? 'No storage limit' : `${Math.round((used / Math.max(limit, 1)) * 100)}% of your storage used`;
}

let sessionRefresh = null;
/** Asks the server for the quota (and areas) again, at most once at a time. */
function refreshSession() {
  sessionRefresh ??= api('GET', 'session')
    .then(s => {
      if (!session) return;
      session = { ...s, csrf: s.csrf || session.csrf };
      renderQuota();
      renderAreas();
    }, e => { if (!e.handled) console.warn('session refresh failed', e); })
    .finally(() => { sessionRefresh = null; });
  return sessionRefresh;
}

const KIND_ICON = { users: 'home', groups: 'group', shared: 'folder' };

let areasShown = '';
function renderAreas() {
  const list = $('#areas');
  const key = JSON.stringify(session.areas || []);
  if (key === areasShown && list.children.length) { markNav(); return; }
  areasShown = key;
  list.replaceChildren(...(session.areas || []).map(a =>
    h('li', {}, h('a', { class: 'area-link', href: hashFor(a.path), 'data-area': a.path },
      icon(KIND_ICON[a.kind] || 'folder'), h('span', { class: 'area-name' }, a.name),
      !a.write && h('span', { class: 'ico ico-lock ro', role: 'img', 'aria-label': '(read-only)', title: 'Read-only for you' })))));
  markNav();
}

function markNav() {
  const here = location.hash === '#shares' ? null : cwd;
  for (const a of $$('#nav a')) {
    const area = a.dataset.area;
    const current = area ? !!here && here.startsWith(area) : location.hash === '#shares';
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

/** The area (home, group or shared folder) a path lies in, if any. */
const areaOf = p => (session.areas || []).find(a => p.startsWith(a.path));
const writable = p => { const a = areaOf(p); return !!a && a.write && p !== '/'; };

/* ============================================================== routing */

let cwd = null; // the open folder (decoded, ends with "/")

function currentRoute() {
  const raw = location.hash.slice(1);
  if (raw === 'shares') return { view: 'shares' };
  if (raw.startsWith('/')) {
    try {
      let p = raw.split('/').map(decodeURIComponent).join('/');
      if (!p.endsWith('/')) p += '/';
      if (!p.split('/').some(s => s === '..' || s === '.')) return { view: 'folder', path: p };
    } catch { /* a broken hash: go home */ }
  }
  return null;
}

function route() {
  if (!session) return;
  const r = currentRoute();
  if (!r) {
    history.replaceState(null, '', hashFor(session.home));
    return route();
  }
  const dlg = $('#dialog');
  if (dlg.open) dlg.close();
  $('#browser').hidden = r.view !== 'folder';
  $('#shares-view').hidden = r.view !== 'shares';
  if (r.view === 'shares') {
    cwd = null;
    markNav();
    document.title = 'Share links · servente files';
    loadShares();
  } else {
    openFolder(r.path);
  }
}

/* ============================================================== the folder view */

let entries = [];
let listSeq = 0;
let sort = { key: 'name', dir: 1 };
try { Object.assign(sort, JSON.parse(localStorage.getItem('servente-files:sort') || '{}')); } catch { /* default */ }

/** The folders above the areas: "/", "/users/", "/groups/", "/shared/" list what you may open. */
const isVirtual = p => p.split('/').filter(Boolean).length < 2;

async function openFolder(path) {
  const changed = cwd !== path;
  cwd = path;
  markNav();
  renderCrumbs(path);
  const rw = writable(path);
  const virtual = isVirtual(path);
  $('#browser').dataset.writable = String(rw);
  for (const id of ['new-folder', 'upload-button', 'upload-folder-button']) $(`#${id}`).hidden = !rw;
  $('#readonly-note').hidden = rw || virtual || !areaOf(path);
  const zip = $('#zip-folder');
  zip.hidden = virtual;
  if (!virtual) zip.href = zipUrl(path);
  const table = $('#listing');
  table.dataset.path = path;
  const tbody = $('tbody', table);
  const seq = ++listSeq;
  if (changed) {
    table.dataset.state = 'loading';
    tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 4 }, 'Loading…')));
  }
  const title = virtual ? 'All folders' : (areaOf(path) && path === areaOf(path).path ? areaOf(path).name : baseName(path));
  document.title = `${title} · servente files`;
  $('#folder-title').textContent = title;
  if (virtual) {
    const kind = path.split('/').filter(Boolean)[0];
    entries = (session.areas || []).filter(a => !kind || a.kind === kind)
      .map(a => ({ name: a.name, path: a.path, dir: true, size: null, modified: null, area: a }));
    renderRows();
    table.dataset.state = 'ready';
    if (changed) focusAfterNavigation();
    return;
  }
  try {
    const list = await listFolder(path);
    if (seq !== listSeq) return;
    entries = list;
    renderRows();
    table.dataset.state = 'ready';
    if (changed) focusAfterNavigation();
  } catch (e) {
    if (seq !== listSeq) return;
    entries = [];
    table.dataset.state = 'error';
    tbody.replaceChildren(h('tr', { class: 'empty error' }, h('td', { colspan: 4 }, e.message)));
  }
}

/** After opening a folder from a link that is gone now, keyboard focus goes to the new listing. */
function focusAfterNavigation() {
  const a = document.activeElement;
  if (a && a !== document.body && a.isConnected) return;
  const first = $('#listing tbody a.name-link');
  (first || $('#main')).focus({ preventScroll: true });
}

/** Lists the open folder again (after a change), keeping the scroll position. */
function reload() {
  if (cwd && !$('#browser').hidden) return openFolder(cwd);
  return Promise.resolve();
}

function renderCrumbs(path) {
  const ol = $('#breadcrumb ol');
  const items = [];
  const crumb = (label, p, last) => h('li', {}, last
    ? h('span', { 'aria-current': 'page' }, label)
    : h('a', { href: hashFor(p) }, label));
  items.push(['All folders', '/']);
  const area = areaOf(path);
  if (area) {
    items.push([area.name, area.path]);
    const rest = path.slice(area.path.length).split('/').filter(Boolean);
    let p = area.path;
    for (const s of rest) { p += `${s}/`; items.push([s, p]); }
  } else if (path !== '/') {
    const kind = path.split('/').filter(Boolean)[0];
    items.push([{ users: 'Homes', groups: 'Groups', shared: 'Shared folders' }[kind] || kind, path]);
  }
  ol.replaceChildren(...items.map(([l, p], i) => crumb(l, p, i === items.length - 1)));
}

function sorted(list) {
  const { key, dir } = sort;
  const by = {
    name: (a, b) => collator.compare(a.name, b.name),
    size: (a, b) => (a.size ?? -1) - (b.size ?? -1) || collator.compare(a.name, b.name),
    modified: (a, b) => ((a.modified && a.modified.getTime()) || 0) - ((b.modified && b.modified.getTime()) || 0)
      || collator.compare(a.name, b.name),
  }[key] || ((a, b) => collator.compare(a.name, b.name));
  // Folders first, whatever the order.
  return [...list].sort((a, b) => (b.dir - a.dir) || dir * by(a, b));
}

function renderSortHeaders() {
  for (const th of $$('#listing th[data-sort]')) {
    const on = th.dataset.sort === sort.key;
    if (on) th.setAttribute('aria-sort', sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
    const b = $('button', th);
    b.classList.toggle('on', on);
    b.dataset.dir = on ? (sort.dir > 0 ? 'asc' : 'desc') : '';
  }
}

function renderRows() {
  renderSortHeaders();
  const tbody = $('#listing tbody');
  if (!entries.length) {
    const rw = writable(cwd);
    tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 4 },
      rw ? 'This folder is empty. Drop files here or use “Upload files”.' : 'This folder is empty.')));
    return;
  }
  const rw = writable(cwd);
  tbody.replaceChildren(...sorted(entries).map(e => row(e, rw)));
}

function row(e, rw) {
  const label = e.area ? e.area.name : e.name;
  const nameLink = e.dir
    ? h('a', { href: hashFor(e.path), class: 'name-link' }, label)
    // A file's name downloads it: opened in this origin, an uploaded HTML page could run scripts.
    : h('a', { href: davUrl(e.path), download: e.name, class: 'name-link' }, e.name);
  const act = (action, text, fn, cls = '') => h('button', {
    type: 'button', class: `small ${cls}`, 'data-action': action, 'aria-label': `${text} ${label}`,
    onclick: () => fn(e).catch(fail),
  }, text);
  const actions = [];
  if (e.area) {
    if (!e.area.write) actions.push(h('span', { class: 'badge' }, 'read-only'));
  } else {
    actions.push(e.dir
      ? h('a', { class: 'button small', href: zipUrl(e.path), download: `${e.name}.zip`, 'data-action': 'zip',
        'aria-label': `Download ${e.name} as a zip` }, 'Zip')
      : h('a', { class: 'button small', href: davUrl(e.path), download: e.name, 'data-action': 'download',
        'aria-label': `Download ${e.name}` }, 'Download'));
    if (rw) {
      actions.push(act('rename', 'Rename', renameItem));
      actions.push(act('move', 'Move', moveItem));
    }
    if (rw) actions.push(act('share', 'Share', shareItem));
    if (rw) actions.push(act('delete', 'Delete', deleteItem, 'danger'));
  }
  return h('tr', { 'data-name': label, 'data-type': e.dir ? 'dir' : 'file', 'data-path': e.path },
    h('td', { class: 'col-name' }, h('span', { class: 'name' }, icon(e.area ? (KIND_ICON[e.area.kind] || 'folder') : e.dir ? 'folder' : 'file'), nameLink)),
    h('td', { class: 'col-size' }, e.dir ? h('span', { class: 'muted' }, e.area ? e.area.kind : 'folder') : fmtBytes(e.size)),
    h('td', { class: 'col-date' }, timeEl(e.modified)),
    h('td', { class: 'col-actions' }, h('div', { class: 'row-actions' }, actions)));
}

/* ============================================================== folder operations */

async function newFolder() {
  if (!cwd || !writable(cwd)) return;
  const dir = cwd;
  const input = h('input', { id: 'dialog-name', name: 'name', autocomplete: 'off', required: true, spellcheck: 'false' });
  const fd = await openDialog({
    title: 'New folder', body: [field('Name', input)], ok: 'Create',
    check: () => badName(input.value) || (entries.some(e => e.name === input.value.trim()) ? 'Something of that name is already here.' : ''),
  });
  if (!fd) return;
  const name = String(fd.get('name')).trim();
  await dav('MKCOL', `${dir}${name}/`, { what: `Cannot create “${name}”` });
  notify(`Folder “${name}” created.`, 'ok');
  await reload();
  const link = $(`#listing tr[data-name="${CSS.escape(name)}"] a.name-link`);
  if (link) link.focus();
}

async function renameItem(e) {
  const input = h('input', { id: 'dialog-name', name: 'name', value: e.name, autocomplete: 'off', required: true, spellcheck: 'false' });
  const pending = openDialog({
    title: `Rename “${e.name}”`, body: [field('New name', input)], ok: 'Rename',
    check: () => {
      const v = input.value.trim();
      if (v === e.name) return 'That is its name already.';
      return badName(v) || (entries.some(x => x.name === v) ? 'Something of that name is already here.' : '');
    },
  });
  // Select the name without its extension, as file managers do.
  const dot = e.dir ? -1 : e.name.lastIndexOf('.');
  if (dot > 0) input.setSelectionRange(0, dot);
  const fd = await pending;
  if (!fd) return;
  const name = String(fd.get('name')).trim();
  const to = parentOf(e.path) + name + (e.dir ? '/' : '');
  await moveTo(e, to, `Cannot rename “${e.name}”`);
  notify(`Renamed to “${name}”.`, 'ok');
  await reload();
}

async function moveItem(e) {
  const here = parentOf(e.path);
  const options = new Set();
  if (areaOf(here) && here !== areaOf(here).path) options.add(parentOf(here));
  for (const x of entries) if (x.dir && x.path !== e.path) options.add(x.path);
  for (const a of session.areas) if (a.write) options.add(a.path);
  const list = h('datalist', { id: 'move-targets' }, [...options].map(o => h('option', { value: o })));
  const input = h('input', { id: 'dialog-target', name: 'target', value: here, list: 'move-targets', autocomplete: 'off',
    required: true, spellcheck: 'false' });
  const target = () => resolveFolder(input.value, here);
  const fd = await openDialog({
    title: `Move “${e.name}”`,
    body: [field('To the folder', input, 'A path such as /users/you/Archive/, or one relative to this folder (Archive, ../).'), list],
    ok: 'Move',
    check: () => {
      const t = target();
      if (!input.value.trim()) return 'Give a folder.';
      if (t === here) return 'It is in that folder already.';
      if (e.dir && t.startsWith(e.path)) return 'A folder cannot go inside itself.';
      if (!writable(t)) return 'You cannot put files there.';
      return '';
    },
  });
  if (!fd) return;
  const t = target();
  await moveTo(e, t + e.name + (e.dir ? '/' : ''), `Cannot move “${e.name}”`);
  notify(`Moved “${e.name}” to ${t}.`, 'ok');
  await Promise.all([reload(), refreshSession()]);
}

function moveTo(e, to, what) {
  return dav('MOVE', e.path, { headers: { Destination: location.origin + davUrl(to), Overwrite: 'F' }, what });
}

async function deleteItem(e) {
  const ok = await confirmDialog(`Delete “${e.name}”?`, e.dir
    ? `The folder “${e.name}” and everything in it will be deleted. This cannot be undone.`
    : `The file “${e.name}” will be deleted. This cannot be undone.`);
  if (!ok) return;
  await dav('DELETE', e.path, { what: `Cannot delete “${e.name}”` });
  notify(`Deleted “${e.name}”.`, 'ok');
  await Promise.all([reload(), refreshSession()]);
}

/* ============================================================== share links */

const EXPIRY = [['', 'Never'], ['3600', 'In 1 hour'], ['86400', 'In 1 day'], ['604800', 'In 7 days'], ['2592000', 'In 30 days']];

async function shareItem(e) {
  const pw = h('input', { id: 'share-password', name: 'password', type: 'password', autocomplete: 'new-password' });
  const exp = h('select', { id: 'share-expires', name: 'expires' }, EXPIRY.map(([v, l]) => h('option', { value: v }, l)));
  const fd = await openDialog({
    title: `Share “${e.name}”`,
    body: [
      h('p', { class: 'muted small' }, `Anyone with the link can open ${e.dir ? 'this folder and download its files' : 'this file'}, without an account.`),
      field('Password (optional)', pw, 'Whoever opens the link must type it.'),
      field('Link expires', exp),
    ],
    ok: 'Create link',
  });
  if (!fd) return;
  const body = { path: e.path.replace(/\/$/, '') };
  if (fd.get('password')) body.password = String(fd.get('password'));
  if (fd.get('expires')) body.expires_in = Number(fd.get('expires'));
  const s = await api('POST', 'shares', body);
  const url = new URL(s.url, location.origin).href;
  const input = h('input', { id: 'share-url', class: 'mono', readOnly: true, value: url, 'aria-label': 'Share link' });
  const copy = h('button', { type: 'button', id: 'share-copy', onclick: () => copyText(url, copy) }, 'Copy');
  const shown = openDialog({
    title: 'Link created',
    body: [
      h('p', {}, `A link to “${e.name}”${s.password ? ', protected by the password you chose' : ''}${s.expires ? `, valid until ${fmtTime(fromUnix(s.expires))}` : ''}:`),
      h('div', { class: 'secret-row' }, input, copy),
      h('p', { class: 'small muted' }, 'Revoke it any time under “Share links”.'),
    ],
    ok: 'Done', cancel: null,
  });
  input.focus();
  input.select();
  await shown;
}

let sharesSeq = 0;
async function loadShares() {
  const table = $('#shares-list');
  const tbody = $('tbody', table);
  const seq = ++sharesSeq;
  table.dataset.state = 'loading';
  if (!tbody.children.length) tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 6 }, 'Loading…')));
  try {
    const list = await api('GET', 'shares');
    if (seq !== sharesSeq) return;
    list.sort((a, b) => b.created - a.created);
    if (!list.length) {
      tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 6 }, 'No share links yet.')));
    } else {
      const now = Date.now() / 1000;
      tbody.replaceChildren(...list.map(s => {
        const url = new URL(s.url, location.origin).href;
        const folder = s.is_dir ? `${s.path}/` : parentOf(s.path);
        const copy = h('button', { type: 'button', class: 'small', 'data-action': 'copy', onclick: () => copyText(url, copy) }, 'Copy');
        const expired = s.expires != null && s.expires <= now;
        return h('tr', { 'data-share': s.id, 'data-path': s.path },
          h('td', { 'data-label': 'Shared' }, h('span', { class: 'name' }, icon(s.is_dir ? 'folder' : 'file'),
            h('a', { href: hashFor(folder), title: 'Open the folder' }, s.path))),
          h('td', { 'data-label': 'Link' }, h('div', { class: 'row-actions' },
            h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'share-url mono small' }, `…/s/${s.id.slice(0, 8)}…`),
            copy)),
          h('td', { 'data-label': 'Created' }, timeEl(fromUnix(s.created))),
          h('td', { 'data-label': 'Expires' }, s.expires == null ? h('span', { class: 'muted' }, 'never')
            : expired ? h('span', { class: 'badge bad' }, 'expired') : timeEl(fromUnix(s.expires))),
          h('td', { 'data-label': 'Password' }, s.password ? h('span', { class: 'badge good' }, 'yes') : h('span', { class: 'muted' }, 'no')),
          h('td', { 'data-label': '' }, h('button', {
            type: 'button', class: 'small danger', 'data-action': 'revoke', 'aria-label': `Revoke the link to ${s.path}`,
            onclick: () => revokeShare(s).catch(fail),
          }, 'Revoke')));
      }));
    }
    table.dataset.state = 'ready';
  } catch (e) {
    if (seq !== sharesSeq) return;
    table.dataset.state = 'error';
    tbody.replaceChildren(h('tr', { class: 'empty error' }, h('td', { colspan: 6 }, `Could not load the share links: ${e.message}`)));
  }
}

async function revokeShare(s) {
  const ok = await confirmDialog('Revoke this link?', `The link to “${s.path}” will stop working for everyone who has it.`, 'Revoke');
  if (!ok) return;
  await api('DELETE', `shares/${encodeURIComponent(s.id)}`);
  notify('Link revoked.', 'ok');
  await loadShares();
}

/* ============================================================== uploads */

const uploads = [];
const queue = [];
let pumping = false;

/** Where a chunked upload's ID is kept so that a new page can resume it. */
const storePrefix = () => `servente-files:${MOUNT}:${session.user}:upload:`;
const storeKey = (path, file) => `${storePrefix()}${path}|${file.size}|${file.lastModified}`;
function storedUploads() {
  const out = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (!k || !k.startsWith(storePrefix())) continue;
    try { out.push({ key: k, ...JSON.parse(localStorage.getItem(k)) }); } catch { localStorage.removeItem(k); }
  }
  return out;
}

/** Uploads a page before this one left unfinished: picking the same file again resumes them. */
function showPendingUploads() {
  const note = $('#uploads-pending');
  const active = new Set(uploads.filter(u => u.key).map(u => u.key));
  const left = storedUploads().filter(s => !active.has(s.key));
  note.replaceChildren();
  note.hidden = !left.length;
  if (left.length) {
    note.append(`Unfinished upload${left.length > 1 ? 's' : ''}: ${left.map(s => s.path).join(', ')}. ` +
      'Upload the same file again to the same folder to resume. ',
    h('button', { type: 'button', class: 'link', id: 'uploads-forget', onclick: () => forgetPending(left) }, 'Forget them'));
  }
  updateUploadsPanel();
}

async function forgetPending(list) {
  for (const s of list) {
    localStorage.removeItem(s.key);
    api('DELETE', `uploads/${encodeURIComponent(s.id)}`).catch(() => {});
  }
  showPendingUploads();
}

function updateUploadsPanel() {
  const any = uploads.length > 0 || !$('#uploads-pending').hidden;
  $('#uploads').hidden = !any;
  $('#uploads-clear').hidden = !uploads.some(u => u.finished);
  const done = uploads.filter(u => u.state === 'done').length;
  const failed = uploads.filter(u => u.state === 'error').length;
  $('#uploads-count').textContent = uploads.length
    ? `${done} of ${uploads.length} done${failed ? `, ${failed} failed` : ''}` : '';
}

/** XMLHttpRequest as a promise, for its upload progress events. */
function xhr(method, url, { headers = {}, body, onprogress, owner }) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open(method, url);
    for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
    if (onprogress) x.upload.onprogress = e => onprogress(e.loaded);
    x.onload = () => {
      let data = null;
      try { data = x.responseText ? JSON.parse(x.responseText) : null; } catch { /* not JSON */ }
      resolve({ status: x.status, data, text: x.responseText, type: x.getResponseHeader('Content-Type') || '' });
    };
    x.onerror = () => reject(new NetError());
    x.ontimeout = () => reject(new NetError());
    x.onabort = () => reject(Object.assign(new Error('Cancelled.'), { cancelled: true }));
    if (owner) owner.xhr = x;
    x.send(body);
  });
}

class Upload {
  constructor(file, dir, rel) {
    this.file = file;
    this.dir = dir;
    this.rel = rel; // the name, or a path below dir for folder uploads ("photos/a.jpg")
    this.path = dir + rel;
    this.key = file.size > SMALL ? storeKey(this.path, file) : null;
    this.state = 'queued';
    this.done = 0;
    this.xhr = null;
    this.cancelled = false;
    this.finished = false;
    this.bar = h('progress', { class: 'bar', max: Math.max(file.size, 1), value: 0, 'aria-label': `Upload of ${rel}` });
    this.status = h('span', { class: 'upload-status small muted' }, 'Waiting…');
    this.button = h('button', { type: 'button', class: 'small', 'data-action': 'cancel',
      onclick: () => (this.finished && this.state === 'error' ? retry(this) : this.cancel()) }, 'Cancel');
    this.el = h('li', { class: 'upload', 'data-name': rel, 'data-state': 'queued', 'data-path': this.path },
      h('div', { class: 'upload-head' }, icon('file'), h('span', { class: 'upload-name' }, rel),
        h('span', { class: 'upload-size small muted' }, fmtBytes(file.size)), this.button),
      this.bar, this.status);
  }

  setState(state, text) {
    this.state = state;
    this.el.dataset.state = state;
    if (text != null) this.status.textContent = text;
    updateUploadsPanel();
  }

  progress(n) {
    this.done = Math.min(n, this.file.size);
    this.bar.value = this.done;
    const pct = this.file.size ? Math.floor((this.done / this.file.size) * 100) : 100;
    this.el.dataset.percent = String(pct);
    if (this.state === 'uploading') this.status.textContent = `${fmtBytes(this.done)} of ${fmtBytes(this.file.size)} · ${pct}%`;
  }

  stop() {
    if (this.xhr) this.xhr.abort();
  }

  async cancel() {
    if (this.finished) return;
    this.cancelled = true;
    this.stop();
    const qi = queue.indexOf(this);
    if (qi >= 0) queue.splice(qi, 1);
    if (this.key) {
      const s = localStorage.getItem(this.key);
      localStorage.removeItem(this.key);
      try { if (s) await api('DELETE', `uploads/${encodeURIComponent(JSON.parse(s).id)}`); } catch { /* gone already */ }
    }
    this.finish('cancelled', 'Cancelled.');
  }

  finish(state, text) {
    this.finished = true;
    this.xhr = null;
    this.setState(state, text);
    this.button.hidden = state !== 'error' || !this.retryable;
    if (!this.button.hidden) {
      this.button.textContent = 'Retry';
      this.button.dataset.action = 'retry';
    }
    updateUploadsPanel();
  }

  async run() {
    if (this.cancelled) return;
    this.setState('uploading');
    this.progress(0);
    try {
      if (this.rel.includes('/')) await ensureDirs(this.dir, this.rel);
      if (this.file.size <= SMALL) await this.put(); else await this.chunked();
      this.progress(this.file.size);
      this.bar.value = this.bar.max;
      this.el.dataset.percent = '100';
      this.finish('done', `Uploaded · ${fmtBytes(this.file.size)}`);
      uploaded(this);
    } catch (e) {
      if (this.cancelled || e.cancelled) return;
      if (e.handled) { this.finish('error', 'Stopped: signed out.'); return; }
      this.retryable = !e.final;
      this.finish('error', e.message);
      notify(`“${this.rel}” was not uploaded: ${e.message}`, 'error');
    }
  }

  /** One PUT (small files), tried again after a network failure. */
  async put() {
    for (let attempt = 0; ; attempt++) {
      this.checkCancelled();
      await ensureSession();
      let r;
      try {
        r = await xhr('PUT', davUrl(this.path), {
          headers: { 'X-CSRF-Token': session.csrf, 'Content-Type': this.file.type || 'application/octet-stream' },
          body: this.file, onprogress: n => this.progress(n), owner: this,
        });
      } catch (e) {
        if (!(e instanceof NetError) || attempt >= 3) throw e;
        await this.backoff(attempt);
        continue;
      }
      if (r.status >= 200 && r.status < 300) { lastOk = Date.now(); return; }
      throw this.failure(r);
    }
  }

  failure(r) {
    if (r.status === 401) {
      signedOut('Your session has ended. Please sign in again.');
      return Object.assign(new Error('Signed out.'), { handled: true });
    }
    let msg = (r.data && r.data.error) || '';
    if (!msg && r.type.startsWith('text/plain') && r.text.trim() && !r.text.trim().includes('\n')) msg = r.text.trim();
    if (!msg) msg = davMessage(r.status);
    if (r.status === 507) msg = `Not enough space: ${msg.replace(/^Not enough space: /, '')}`;
    return Object.assign(new Error(msg.replace(/\.?$/, '.')), { status: r.status, final: r.status === 507 || r.status === 403 });
  }

  checkCancelled() {
    if (this.cancelled) throw Object.assign(new Error('Cancelled.'), { cancelled: true });
  }

  async backoff(attempt) {
    const secs = Math.min(30, 2 ** attempt);
    for (let left = secs; left > 0; left--) {
      this.checkCancelled();
      this.setState('retrying', `Connection lost; trying again in ${left} s…`);
      await sleep(1000);
    }
    this.setState('uploading');
    this.progress(this.done);
  }

  /** Resumable: POST api/uploads, then PATCH chunks at their offset; the ID survives a reload. */
  async chunked() {
    const size = this.file.size;
    let id = null, offset = 0;
    const saved = localStorage.getItem(this.key);
    if (saved) {
      try {
        const rec = JSON.parse(saved);
        const st = await api('GET', `uploads/${encodeURIComponent(rec.id)}`);
        if (st.path === this.path && st.size === size) {
          id = rec.id;
          offset = st.offset;
          this.status.textContent = `Resuming at ${fmtBytes(offset)}…`;
        }
      } catch (e) {
        if (e.handled) throw e;
        // Unknown to the server (finished, cancelled or swept): start over.
      }
      if (!id) localStorage.removeItem(this.key);
    }
    if (!id) {
      let r;
      try {
        r = await api('POST', 'uploads', { path: this.path, size });
      } catch (e) {
        if (e.status === 507) e.message = `Not enough space: ${e.message}`;
        e.final = e.status === 507 || e.status === 403;
        throw e;
      }
      id = r.id;
      offset = r.offset || 0;
      localStorage.setItem(this.key, JSON.stringify({ id, path: this.path, size, name: this.file.name }));
    }
    this.progress(offset);
    let failures = 0;
    for (;;) {
      this.checkCancelled();
      const end = Math.min(offset + CHUNK, size);
      const start = offset;
      let r;
      try {
        r = await xhr('PATCH', `${API}uploads/${encodeURIComponent(id)}`, {
          headers: { 'X-CSRF-Token': session.csrf, 'Upload-Offset': String(start), 'Content-Type': 'application/octet-stream' },
          body: this.file.slice(start, end), onprogress: n => this.progress(start + n), owner: this,
        });
      } catch (e) {
        if (!(e instanceof NetError)) throw e;
        this.progress(start); // what the server has acknowledged
        if (++failures > MAX_RETRIES) {
          throw new Error('The connection keeps failing. Upload the same file again later to resume where it stopped.');
        }
        await this.backoff(failures - 1);
        // Where does the upload stand? (The chunk may have arrived before the connection broke.)
        try {
          const st = await api('GET', `uploads/${encodeURIComponent(id)}`);
          offset = st.offset;
        } catch (e2) {
          if (e2.handled) throw e2;
          if (e2.status === 404 && end === size && await this.landed()) break; // the last chunk made it
          if (e2.status === 404) { localStorage.removeItem(this.key); throw new Error('The upload was lost on the server; start it again.'); }
          // Still unreachable: the next PATCH tells (409 gives the offset).
        }
        this.progress(offset);
        continue;
      }
      if (r.status < 300) lastOk = Date.now();
      if (r.status === 201) break;
      if (r.status === 200 && r.data && Number.isFinite(r.data.offset)) { offset = r.data.offset; failures = 0; this.progress(offset); continue; }
      if (r.status === 409 && r.data && Number.isFinite(r.data.offset)) { offset = r.data.offset; this.progress(offset); continue; }
      if (r.status === 404) localStorage.removeItem(this.key);
      throw this.failure(r);
    }
    localStorage.removeItem(this.key);
    showPendingUploads();
  }

  /** Whether the target file exists whole (the answer to the last chunk was lost). */
  async landed() {
    try {
      const res = await dav('PROPFIND', this.path, { headers: { Depth: '0', 'Content-Type': 'application/xml; charset=utf-8' }, body: PROPFIND_BODY });
      const doc = new DOMParser().parseFromString(await res.text(), 'application/xml');
      const len = doc.getElementsByTagNameNS('DAV:', 'getcontentlength')[0];
      return !!len && Number(len.textContent) === this.file.size;
    } catch { return false; }
  }
}

let relistTimer = null;
function uploaded(u) {
  clearTimeout(relistTimer);
  relistTimer = setTimeout(() => {
    refreshSession();
    // The listing shows the new file when its folder (or a folder above it) is open.
    if (cwd && u.path.startsWith(cwd)) reload();
  }, 150);
}

async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (queue.length && session) {
      const u = queue.shift();
      await u.run();
    }
  } finally {
    pumping = false;
  }
}

const madeDirs = new Set();
/** Creates the folders a folder upload needs ("a/b/c.txt" → a/, a/b/); ignores existing ones. */
async function ensureDirs(dir, rel) {
  const parts = rel.split('/').slice(0, -1);
  let p = dir;
  for (const s of parts) {
    p += `${s}/`;
    if (madeDirs.has(p)) continue;
    try {
      await dav('MKCOL', p, { what: `Cannot create the folder “${s}”` });
    } catch (e) {
      if (e.status !== 405) throw e; // 405: it exists
    }
    madeDirs.add(p);
  }
}

/** Queues files ({file, rel}) for upload into `dir`, asking first before replacing anything. */
async function startUploads(items, dir = cwd) {
  if (!items.length) return;
  if (!dir || !writable(dir)) {
    notify('This folder is read-only for you: files cannot be uploaded here.', 'error');
    return;
  }
  for (const { rel } of items) {
    const why = rel.split('/').map(badName).find(Boolean);
    if (why) { notify(`“${rel}” cannot be uploaded: ${why}`, 'error'); return; }
  }
  if (dir === cwd) {
    const here = new Map(entries.map(e => [e.name, e]));
    const folderClash = items.filter(i => !i.rel.includes('/') && here.get(i.rel) && here.get(i.rel).dir);
    if (folderClash.length) {
      notify(`A folder named “${folderClash[0].rel}” is already here; rename the file first.`, 'error');
      items = items.filter(i => !folderClash.includes(i));
    }
    const clash = items.filter(i => !i.rel.includes('/') && here.get(i.rel));
    if (clash.length) {
      const names = clash.map(i => i.rel);
      const ok = await openDialog({
        title: clash.length === 1 ? `Replace “${names[0]}”?` : `Replace ${clash.length} files?`,
        body: [h('p', {}, clash.length === 1 ? 'A file of that name is already in this folder. Replace it with the one you chose?'
          : `Files of these names are already in this folder: ${names.join(', ')}. Replace them?`)],
        ok: 'Replace', danger: true,
      });
      if (!ok) items = items.filter(i => !clash.includes(i));
    }
  }
  if (!items.length) return;
  const list = $('#upload-list');
  for (const { file, rel } of items) {
    const u = new Upload(file, dir, rel);
    const old = uploads.findIndex(x => x.path === u.path && x.finished);
    if (old >= 0) { uploads[old].el.remove(); uploads.splice(old, 1); }
    uploads.push(u);
    list.append(u.el);
    queue.push(u);
  }
  showPendingUploads();
  pump();
}

function retry(u) {
  u.finished = false;
  u.cancelled = false;
  u.button.textContent = 'Cancel';
  u.button.dataset.action = 'cancel';
  u.button.hidden = false;
  u.setState('queued', 'Waiting…');
  queue.push(u);
  updateUploadsPanel();
  pump();
}

/** Files from a drop, folders walked (DataTransferItem entries), each with its path below the drop. */
async function droppedFiles(dt) {
  const entries = [...(dt.items || [])].filter(i => i.kind === 'file').map(i => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (!entries.length || entries.some(e => !e)) return [...dt.files].map(file => ({ file, rel: file.name }));
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ file, rel: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, '');
  return out;
}

/* ============================================================== wiring */

function wire() {
  $('#signin-form').addEventListener('submit', async ev => {
    ev.preventDefault();
    const user = $('#signin-user').value.trim();
    const password = $('#signin-password').value;
    const err = $('#signin-error');
    if (!user || !password) {
      err.textContent = 'Give your user name and password.';
      (user ? $('#signin-password') : $('#signin-user')).focus();
      return;
    }
    const b = $('#signin-submit');
    b.disabled = true;
    err.textContent = '';
    try {
      session = await api('POST', 'session', { user, password }, { signin: true });
      $('#signin-password').value = '';
      showApp();
    } catch (e) {
      session = null;
      if (e.status === 401) err.textContent = 'Wrong user name or password.';
      else if (e.status === 429) {
        const s = Number(e.retryAfter);
        err.textContent = `Too many failed sign-ins; try again ${s > 0 ? `in ${s > 90 ? `${Math.ceil(s / 60)} minutes` : `${s} seconds`}` : 'later'}.`;
      } else err.textContent = e.message;
      $('#signin-password').select();
      $('#signin-password').focus();
    } finally {
      b.disabled = false;
    }
  });

  $('#signout').addEventListener('click', async () => {
    if (uploads.some(u => !u.finished) &&
      !await confirmDialog('Sign out?', 'Uploads are still running; signing out stops them.', 'Sign out')) return;
    try { await api('DELETE', 'session'); } catch (e) { if (!e.handled && e.status !== 401) { fail(e); return; } }
    forgetUploads();
    session = null;
    cwd = null;
    entries = [];
    showSignin('You have signed out.');
  });

  $('#new-folder').addEventListener('click', () => newFolder().catch(fail));
  $('#upload-button').addEventListener('click', () => $('#upload-input').click());
  $('#upload-folder-button').addEventListener('click', () => $('#upload-folder-input').click());
  for (const id of ['upload-input', 'upload-folder-input']) {
    const input = $(`#${id}`);
    input.addEventListener('change', () => {
      const items = [...input.files].map(file => ({ file, rel: file.webkitRelativePath || file.name }));
      input.value = '';
      startUploads(items).catch(fail);
    });
  }
  $('#uploads-clear').addEventListener('click', () => {
    for (let i = uploads.length - 1; i >= 0; i--) {
      if (uploads[i].finished) { uploads[i].el.remove(); uploads.splice(i, 1); }
    }
    updateUploadsPanel();
  });
  $('#shares-refresh').addEventListener('click', () => loadShares());

  for (const b of $$('#listing button.sort')) {
    b.addEventListener('click', () => {
      const key = b.dataset.sort;
      sort = { key, dir: sort.key === key ? -sort.dir : 1 };
      try { localStorage.setItem('servente-files:sort', JSON.stringify(sort)); } catch { /* private mode */ }
      renderRows();
    });
  }

  // Drag and drop onto the listing. The page itself never opens a dropped file.
  const zone = $('#drop-zone');
  let depth = 0;
  const hasFiles = e => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
  const canDrop = () => !$('#browser').hidden && cwd && writable(cwd);
  window.addEventListener('dragover', e => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener('drop', e => { if (hasFiles(e)) e.preventDefault(); });
  zone.addEventListener('dragenter', e => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth++;
    zone.classList.toggle('dragging', canDrop());
  });
  zone.addEventListener('dragover', e => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = canDrop() ? 'copy' : 'none';
  });
  zone.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove('dragging');
  });
  zone.addEventListener('drop', async e => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove('dragging');
    if (!canDrop()) {
      notify('This folder is read-only for you: files cannot be uploaded here.', 'error');
      return;
    }
    const dir = cwd;
    try {
      startUploads(await droppedFiles(e.dataTransfer), dir);
    } catch (err) { fail(err); }
  });

  // Leaving the page stops uploads (a chunked one can be resumed by picking the file again).
  window.addEventListener('beforeunload', e => {
    if (uploads.some(u => !u.finished)) e.preventDefault();
  });

  window.addEventListener('hashchange', () => route());
  // Back to a tab left open: is the session still there? (Signs out cleanly if not.)
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && session && Date.now() - lastOk >= STALE) {
      api('GET', 'session').then(s => { if (session) { session = { ...s, csrf: s.csrf || session.csrf }; renderQuota(); } }, () => {});
    }
  });
}

async function start() {
  wire();
  try {
    session = await api('GET', 'session', undefined, { signin: true });
    showApp();
  } catch (e) {
    session = null;
    showSignin(e.status === 401 ? '' : e.message);
  }
}

start();
