// DOM helpers shared by the pages: element builder, formatting, tables, dialogs, copy buttons.
// Text always goes in as text nodes, never as HTML, so data from devices cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, props, children) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && !(el instanceof SVGElement) && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** h('button', {class: 'primary', on: {click}}, 'Save') */
export function h(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element (charts). */
export function s(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

/** Append children as h() does: null, undefined and false are skipped (Element.append would show "null"). */
export function append(el, ...children) {
  return build(el, {}, children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return build(el, {}, children);
}

// --- formatting ----------------------------------------------------------------

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function ago(iso) {
  if (!iso) return 'never';
  const secs = (Date.now() - new Date(iso).getTime()) / 1000;
  if (secs < 0) return fmtTime(iso);
  if (secs < 60) return `${Math.max(0, Math.round(secs))} s ago`;
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} d ago`;
}

/** A <time> element: relative text, exact local time as tooltip. */
export function timeEl(iso, relative = true) {
  if (!iso) return h('span', {class: 'muted'}, relative ? 'never' : '—');
  return h('time', {datetime: iso, title: fmtTime(iso)}, relative ? ago(iso) : fmtTime(iso));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function tagChips(tags) {
  const entries = Object.entries(tags || {});
  if (!entries.length) return h('span', {class: 'muted'}, '—');
  return h('span', {class: 'chips'}, entries.map(([k, v]) => h('span', {class: 'chip'}, `${k}=${v}`)));
}

/** "a=b, c=d" → {a: 'b', c: 'd'}; throws an Error in words on bad input. */
export function parseTags(text) {
  const out = {};
  for (const part of (text || '').split(',').map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`write tags as key=value, separated by commas (got "${part}")`);
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

const STATE_CLASS = {
  active: 'ok', online: 'ok', succeeded: 'ok', ok: 'ok', healthy: 'ok', running: 'ok', completed: 'ok',
  pending: 'warn', queued: 'warn', offered: 'warn', accepted: 'warn', downloading: 'info', verifying: 'info',
  installing: 'info', scheduled: 'info', paused: 'warn', firing: 'bad',
  failed: 'bad', rolled_back: 'bad', revoked: 'bad', rejected: 'bad', denied: 'bad', unhealthy: 'bad',
  halted: 'bad', rolling_back: 'bad', offline: 'muted', cancelled: 'muted', resolved: 'muted',
};

/** A coloured status word (the word itself carries the meaning; colour only helps). */
export function badge(state, text) {
  return h('span', {class: ['badge', STATE_CLASS[state] || 'muted']}, text ?? (state || '—').replaceAll('_', ' '));
}

// --- errors and announcements ---------------------------------------------------

const CODE_WORDS = {
  invalid_argument: 'Invalid input', failed_precondition: 'Not possible now', not_found: 'Not found',
  already_exists: 'Already exists', permission_denied: 'Not allowed', unauthenticated: 'Not logged in',
  resource_exhausted: 'Too many requests or too large', unavailable: 'Server unavailable',
  internal: 'Server error', aborted: 'Interrupted', out_of_range: 'Out of range', unimplemented: 'Not available',
};

export function errorText(err) {
  if (err && err.code) return `${CODE_WORDS[err.code] || err.code}: ${err.message}`;
  return (err && err.message) || String(err);
}

/** An empty alert region for a form's errors (announced when filled). */
export function errorBox() {
  return h('p', {class: 'error', role: 'alert', hidden: true});
}

export function showError(box, err) {
  if (!err) { box.hidden = true; box.textContent = ''; return; }
  box.textContent = errorText(err);
  box.hidden = false;
}

/** Polite announcement for screen readers and a short visible notice. */
export function notify(text) {
  const status = document.getElementById('status');
  if (status) { status.textContent = ''; setTimeout(() => { status.textContent = text; }, 30); }
  const toasts = document.getElementById('toasts');
  if (!toasts) return;
  const t = h('div', {class: 'toast'}, text);
  toasts.append(t);
  setTimeout(() => t.remove(), 4000);
}

// --- building blocks ------------------------------------------------------------

let fieldSeq = 0;

/** A labelled input: field('Name', h('input', {name: 'name'}), 'optional hint'). */
export function field(label, input, hint) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const hintEl = hint ? h('small', {id: `${id}-hint`, class: 'hint'}, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', {class: 'field'}, h('label', {for: id}, label), input, hintEl);
}

export function select(name, options, value) {
  return h('select', {name},
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h('option', {value: v, selected: v === value}, text);
    }));
}

/** Run an async action from a button: disable it meanwhile, show errors in `box`. */
export async function busy(button, box, fn) {
  if (box) showError(box, null);
  const was = button ? button.disabled : false;
  if (button) { button.disabled = true; button.setAttribute('aria-busy', 'true'); }
  try {
    return await fn();
  } catch (err) {
    if (box) showError(box, err); else notify(errorText(err));
    return undefined;
  } finally {
    if (button) { button.disabled = was; button.removeAttribute('aria-busy'); }
  }
}

/** A button that copies text to the clipboard (works without the async clipboard API too). */
export function copyButton(text, label = 'Copy') {
  return h('button', {type: 'button', class: 'small', on: {click: async (ev) => {
    const btn = ev.currentTarget;
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      const ta = h('textarea', {class: 'sr-only', readonly: true});
      ta.value = text;
      document.body.append(ta);
      ta.select();
      ok = document.execCommand('copy');
      ta.remove();
    }
    btn.textContent = ok ? 'Copied' : 'Select and copy by hand';
    notify(ok ? 'Copied to the clipboard' : 'Could not copy; select the text and copy it by hand');
    setTimeout(() => { btn.textContent = label; }, 2000);
  }}}, label);
}

/** A secret or command shown once, with a copy button. */
export function secretBlock(label, text) {
  return h('div', {class: 'secret'},
    h('div', {class: 'secret-head'}, h('strong', {}, label), copyButton(text)),
    h('pre', {tabindex: 0, 'aria-label': label}, h('code', {}, text)));
}

/**
 * A modal dialog asking to confirm. Extra form fields may be passed in `body`;
 * resolves to the dialog's form (truthy) or null when cancelled.
 */
export function confirmDialog({title, message, confirm = 'Confirm', danger = false, body = null}) {
  return new Promise((resolve) => {
    const form = h('form', {method: 'dialog'});
    const cancelBtn = h('button', {type: 'button', on: {click: () => dlg.close('cancel')}}, 'Cancel');
    const okBtn = h('button', {type: 'submit', value: 'ok', class: danger ? 'danger' : 'primary'}, confirm);
    const titleId = `dlg${++fieldSeq}`;
    build(form, {}, [
      h('h2', {id: titleId}, title),
      message ? h('p', {}, message) : null,
      body,
      h('div', {class: 'actions'}, cancelBtn, okBtn),
    ]);
    const dlg = h('dialog', {'aria-labelledby': titleId}, form);
    dlg.addEventListener('close', () => {
      const ok = dlg.returnValue === 'ok';
      dlg.remove();
      resolve(ok ? form : null);
    });
    document.body.append(dlg);
    dlg.showModal();
    (danger ? cancelBtn : (form.querySelector('input, select, textarea') || okBtn)).focus();
  });
}

/**
 * A table sortable by clicking column headers (within the rows given).
 * columns: [{label, value: row => sortable value, cell: row => node|string, class}]
 * state: {key, dir} kept by the caller so sorting survives a refresh.
 */
export function dataTable({columns, rows, caption, empty = 'Nothing here yet.', state = {}, rowProps}) {
  const table = h('table', {class: 'data'});
  const tbody = h('tbody');
  const headers = columns.map((c, i) => {
    if (!c.value) return h('th', {scope: 'col', class: c.class}, c.label);
    const th = h('th', {scope: 'col', class: c.class});
    const btn = h('button', {type: 'button', class: 'sort', on: {click: () => {
      state.dir = state.key === i && state.dir === 'ascending' ? 'descending' : 'ascending';
      state.key = i;
      paint();
    }}}, c.label, h('span', {class: 'arrow', 'aria-hidden': 'true'}));
    th.append(btn);
    return th;
  });
  function paint() {
    headers.forEach((th, i) => {
      if (state.key === i) th.setAttribute('aria-sort', state.dir); else th.removeAttribute('aria-sort');
    });
    let sorted = rows;
    if (state.key !== undefined && columns[state.key] && columns[state.key].value) {
      const get = columns[state.key].value;
      const sign = state.dir === 'descending' ? -1 : 1;
      sorted = [...rows].sort((a, b) => {
        const x = get(a); const y = get(b);
        if (x === y) return 0;
        if (x === null || x === undefined || x === '') return 1;
        if (y === null || y === undefined || y === '') return -1;
        return (typeof x === 'number' && typeof y === 'number' ? x - y
          : String(x).localeCompare(String(y), undefined, {numeric: true})) * sign;
      });
    }
    tbody.replaceChildren(...sorted.map((r) => h('tr', rowProps ? rowProps(r) : {},
      columns.map((c) => h('td', {class: c.class}, c.cell ? c.cell(r) : String(c.value(r) ?? ''))))));
  }
  paint();
  build(table, {}, [caption ? h('caption', {class: 'sr-only'}, caption) : null, h('thead', {}, h('tr', {}, headers)),
    tbody]);
  if (!rows.length) return h('p', {class: 'empty'}, empty);
  return h('div', {class: 'table-wrap'}, table);
}

export function dl(pairs) {
  return h('dl', {class: 'props'}, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

export function section(title, ...children) {
  return h('section', {class: 'card'}, h('h2', {}, title), children);
}
