// fleetd web UI: the API client, the session, the router and live updates.
// Plain ES modules served as they are (no build step); pages live in ./pages/, one module each.
import { clear, errorText, h, notify } from './ui.js';

// --- API client -------------------------------------------------------------------

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const CSRF_KEY = 'fleetd.csrf';

export function csrfToken() {
  return localStorage.getItem(CSRF_KEY) || '';
}

async function errorFrom(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: a proxy's page, say */ }
  return new ApiError(body?.code || 'unknown', body?.message || `the server answered HTTP ${resp.status}`,
    resp.status);
}

/** A Connect unary call: POST JSON, with the session's CSRF token. Throws ApiError with the server's words. */
export async function call(service, method, body = {}) {
  let resp;
  try {
    resp = await fetch(`fleetd.v1.${service}/${method}`, {
      method: 'POST',
      credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken()},
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError('unavailable', 'cannot reach the fleetd server; is it running, and is the network up?', 0);
  }
  if (!resp.ok) {
    const err = await errorFrom(resp);
    if (err.code === 'unauthenticated' && !(service === 'UserService' && method === 'Login')) sessionLost(err);
    throw err;
  }
  const text = await resp.text();
  return text ? JSON.parse(text) : {};
}

/** PUT a file with upload progress (fetch cannot report it); resolves to the JSON answer. */
export function putFile(url, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', url);
    xhr.setRequestHeader('X-CSRF-Token', csrfToken());
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.addEventListener('progress', (ev) => {
      if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* keep null */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(body?.code || 'unknown', body?.message || `the server answered HTTP ${xhr.status}`,
        xhr.status));
    });
    xhr.addEventListener('error', () => reject(new ApiError('unavailable',
      'the upload was cut off (network error or the server went away); nothing was stored', 0)));
    xhr.addEventListener('abort', () => reject(new ApiError('aborted', 'the upload was cancelled', 0)));
    xhr.send(file);
  });
}

// --- session ------------------------------------------------------------------------

const RANK = {viewer: 0, operator: 1, admin: 2};

export const session = {
  me: null, // WhoAmI answer: {kind, id, name, role, must_change_password}
  services: new Set(), // RPC services this server has
  paths: new Set(), // plain HTTP paths this server has (e.g. /v1/events)
  ddi: null, // {tenant, public_url} for hawkBit DDI clients, when the server says
};

/** Whether the logged-in user has at least this role (the server checks again). */
export function can(role) {
  return !!session.me && RANK[session.me.role] >= RANK[role];
}

export function has(service) {
  return session.services.has(service);
}

export function loggedIn(loginAnswer) {
  localStorage.setItem(CSRF_KEY, loginAnswer.csrf_token);
}

function forget() {
  localStorage.removeItem(CSRF_KEY);
  session.me = null;
  stopLive();
}

export async function logout() {
  try { await call('UserService', 'Logout'); } catch { /* the session may be gone already */ }
  forget();
  showLogin('You have logged out.');
}

function sessionLost(err) {
  if (!session.me) return;
  forget();
  showLogin(`Your session has ended (${err.message}). Log in again.`);
}

async function discover() {
  try {
    const resp = await fetch('schema/openapi.json', {credentials: 'same-origin'});
    const doc = await resp.json();
    session.ddi = doc.info?.['x-fleetd-ddi'] || null;
    for (const p of Object.keys(doc.paths || {})) {
      const m = p.match(/^\/fleetd\.v1\.(\w+)\//);
      if (m) session.services.add(m[1]); else session.paths.add(p);
    }
  } catch {
    for (const sv of ['UserService', 'DeviceAdminService', 'EnrollmentService', 'ArtifactService', 'AuditService']) {
      session.services.add(sv);
    }
  }
}

// --- router -----------------------------------------------------------------------

// Hash routes (#/devices/ID?status=pending): the server serves one index.html and needs no fallback route.
const ROUTES = [
  {path: '', page: 'overview', title: 'Overview', nav: true},
  {path: 'devices', page: 'devices', title: 'Devices', nav: true},
  {path: 'devices/:id', page: 'device', title: 'Device'},
  {path: 'rollouts', page: 'rollouts', title: 'Rollouts', nav: true, service: 'RolloutService'},
  {path: 'rollouts/:id', page: 'rollout', title: 'Rollout', service: 'RolloutService'},
  {path: 'artifacts', page: 'artifacts', title: 'Artifacts', nav: true},
  {path: 'artifacts/:id', page: 'artifact', title: 'Artifact'},
  {path: 'alerts', page: 'alerts', title: 'Alerts', nav: true, service: 'AlertService'},
  {path: 'enrollment', page: 'enrollment', title: 'Enrollment', nav: true, role: 'operator'},
  {path: 'users', page: 'users', title: 'Users & keys', nav: true, role: 'admin'},
  {path: 'audit', page: 'audit', title: 'Audit log', nav: true, role: 'operator'},
];

// Pages whose service the server may not have yet; shown as "coming" in the nav until it does.
const BUILT = new Set(['overview', 'devices', 'device', 'artifacts', 'artifact', 'enrollment', 'users', 'audit',
  'rollouts', 'rollout', 'alerts']);

function available(route) {
  return BUILT.has(route.page) && (!route.service || has(route.service)) && (!route.role || can(route.role));
}

function match(path) {
  const parts = path.split('/').filter(Boolean);
  for (const r of ROUTES) {
    const rp = r.path.split('/').filter(Boolean);
    if (rp.length !== parts.length) continue;
    const params = {};
    if (rp.every((seg, i) => (seg.startsWith(':') ? (params[seg.slice(1)] = decodeURIComponent(parts[i])) : seg === parts[i]))) {
      return {route: r, params};
    }
  }
  return null;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  return {path: path || '', query: new URLSearchParams(qs || '')};
}

export function href(path, query) {
  const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined
    && v !== null)).toString() : '';
  return `#/${path}${qs ? '?' + qs : ''}`;
}

export function navigate(path, query) {
  location.hash = href(path, query);
}

let current = null; // {route, page: {refresh, events, dispose}, seq}
let renderSeq = 0;

function renderNav() {
  const nav = document.getElementById('nav');
  const {path} = parseHash();
  const here = match(path)?.route;
  clear(nav, ROUTES.filter((r) => r.nav && (!r.role || can(r.role))).map((r) => {
    if (!available(r)) {
      return h('li', {}, h('span', {class: 'coming', title: 'This server does not offer it yet'}, r.title,
        h('small', {}, ' coming')));
    }
    const active = here && (here === r || here.path.startsWith(r.path + '/')) && (r.path !== '' || here.path === '');
    return h('li', {}, h('a', {href: href(r.path), 'aria-current': active ? 'page' : false}, r.title));
  }));
  const who = document.getElementById('who');
  clear(who,
    h('span', {class: 'me'}, session.me.name || session.me.id, ' ', h('span', {class: 'role'}, session.me.role)),
    session.me.kind === 'user' ? h('a', {href: '#/password', class: 'small'}, 'Change password') : null,
    h('button', {type: 'button', class: 'small', on: {click: logout}}, 'Log out'),
    h('span', {id: 'live', class: 'live', title: ''}, ''));
  paintLive();
}

async function render() {
  if (!session.me) return;
  const seq = ++renderSeq;
  if (current?.page?.dispose) current.page.dispose();
  current = null;
  renderNav();
  const main = document.getElementById('main');
  const {path, query} = parseHash();
  if (path === 'password') {
    const mod = await import('./pages/login.js');
    clear(main);
    mod.renderPasswordChange(main, {voluntary: true});
    document.title = 'Change password · fleetd';
    return;
  }
  const m = match(path);
  if (!m || !available(m.route)) {
    document.title = 'Not found · fleetd';
    clear(main, h('h1', {tabindex: -1}, m ? `${m.route.title} is not available` : 'Page not found'),
      h('p', {}, m && m.route.role && !can(m.route.role)
        ? `This page needs the ${m.route.role} role; you are ${session.me.role}.`
        : m ? 'This server does not offer it yet.' : 'There is no such page.'),
      h('p', {}, h('a', {href: '#/'}, 'Go to the overview')));
    return;
  }
  document.title = `${m.route.title} · fleetd`;
  const root = h('div', {class: 'page'});
  clear(main, root);
  const ctx = {
    root, params: m.params, query,
    alive: () => seq === renderSeq,
    /** Change the query part of the URL without re-rendering the page (filters, paging). */
    setQuery(q) {
      history.replaceState(null, '', href(path, q));
      this.query = new URLSearchParams(href(path, q).split('?')[1] || '');
    },
  };
  try {
    const mod = await import(`./pages/${m.route.page}.js`);
    const page = (await mod.default(ctx)) || {};
    if (seq !== renderSeq) { page.dispose?.(); return; }
    current = {route: m.route, page, seq};
  } catch (err) {
    if (seq !== renderSeq) return;
    root.append(h('p', {class: 'error', role: 'alert'}, errorText(err)));
  }
  if (seq === renderSeq && document.activeElement === document.body) main.querySelector('h1')?.focus();
}

// --- live updates -------------------------------------------------------------------

const EVENT_TYPES = ['device.enrolled', 'device.online', 'device.offline', 'action.state', 'rollout.state',
  'rollout.stage', 'rollout.device', 'alert.fired', 'alert.resolved', 'dropped'];
const POLL_MS = 10_000; // without the event stream
const BACKSTOP_MS = 30_000; // with it: catches changes that send no event (a device renamed, say)
const SETTLE_MS = 3000;

const live = {source: null, mode: 'off', timer: null, pending: null, settle: null, lastRefresh: 0};

export function liveMode() {
  return live.mode;
}

function paintLive() {
  const el = document.getElementById('live');
  if (!el) return;
  const text = {sse: 'Live', polling: 'Updates every 10 s', connecting: 'Connecting…', off: ''}[live.mode];
  el.textContent = text;
  el.dataset.mode = live.mode;
  el.title = live.mode === 'sse' ? 'Pages update as events arrive from the server'
    : live.mode === 'polling' ? 'No event stream: the page refreshes every 10 seconds' : '';
}

function refreshSoon(delay = 300) {
  clearTimeout(live.pending);
  live.pending = setTimeout(async () => {
    const page = current?.page;
    if (!page?.refresh || document.hidden) return;
    if (document.querySelector('dialog[open]')) { refreshSoon(2000); return; }
    live.lastRefresh = Date.now();
    try { await page.refresh(); } catch (err) { if (err.code !== 'unauthenticated') notify(errorText(err)); }
  }, delay);
}

function onEvent(ev) {
  const prefixes = current?.page?.events;
  if (!prefixes) return;
  if (ev.type === 'dropped' || prefixes.some((p) => ev.type.startsWith(p))) {
    refreshSoon();
    // What follows an event often sends none (a device reports its new version at its next check-in,
    // written a second later): look again shortly.
    clearTimeout(live.settle);
    live.settle = setTimeout(() => refreshSoon(0), SETTLE_MS);
  }
}

function setMode(mode) {
  live.mode = mode;
  clearInterval(live.timer);
  live.timer = setInterval(() => {
    if (Date.now() - live.lastRefresh >= (mode === 'sse' ? BACKSTOP_MS : POLL_MS) - 500) refreshSoon(0);
  }, mode === 'sse' ? BACKSTOP_MS : POLL_MS);
  paintLive();
}

function startLive() {
  stopLive();
  if (!session.paths.has('/v1/events') || typeof EventSource === 'undefined') { setMode('polling'); return; }
  const es = new EventSource('v1/events', {withCredentials: true});
  live.source = es;
  live.mode = 'connecting';
  paintLive();
  es.addEventListener('open', () => setMode('sse'));
  for (const t of EVENT_TYPES) es.addEventListener(t, onEvent);
  es.addEventListener('error', () => {
    // CLOSED: the server refused the stream and the browser will not retry. Otherwise it is reconnecting:
    // poll meanwhile, and 'open' switches back to live.
    if (es.readyState === EventSource.CLOSED) live.source = null;
    if (live.mode !== 'polling') setMode('polling');
  });
}

function stopLive() {
  live.source?.close();
  live.source = null;
  clearInterval(live.timer);
  clearTimeout(live.pending);
  clearTimeout(live.settle);
  live.mode = 'off';
}

// --- start --------------------------------------------------------------------------

async function showLogin(message) {
  document.getElementById('topbar').hidden = true;
  if (current?.page?.dispose) current.page.dispose();
  current = null;
  const mod = await import('./pages/login.js');
  mod.renderLogin(document.getElementById('main'), message);
  document.title = 'Log in · fleetd';
}

/** After a login or on load with a live session: learn who we are, then show the app. */
export async function enter() {
  let me;
  try {
    me = await call('UserService', 'WhoAmI');
  } catch (err) {
    forget();
    await showLogin(err.code === 'unauthenticated' || err.code === 'permission_denied' ? '' : errorText(err));
    return;
  }
  session.me = me;
  if (me.must_change_password) {
    const mod = await import('./pages/login.js');
    document.getElementById('topbar').hidden = true;
    mod.renderPasswordChange(document.getElementById('main'), {voluntary: false});
    document.title = 'Change your password · fleetd';
    return;
  }
  document.getElementById('topbar').hidden = false;
  startLive();
  await render();
}

async function boot() {
  document.getElementById('skip').addEventListener('click', (ev) => {
    ev.preventDefault();
    document.getElementById('main').focus();
  });
  window.addEventListener('hashchange', () => { if (session.me) render(); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && session.me) refreshSoon(0); });
  await discover();
  if (!csrfToken()) { await showLogin(''); return; }
  await enter();
}

boot();
