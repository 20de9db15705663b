// Devices: the registry as a table, paged on the server, sortable within the page; claim pending devices;
// bulk tag and deploy.
import { call, can, href } from '../app.js';
import {
  append, badge, busy, clear, confirmDialog, dataTable, errorBox, field, h, notify, parseTags, select, showError,
  tagChips, timeEl,
} from '../ui.js';

const PAGE = 50;

/** Ask for an optional name and tags, then claim a pending device by its code. Resolves to the device or null. */
export async function claimDevice(device) {
  const name = h('input', {name: 'name', placeholder: device.name});
  const tags = h('input', {name: 'tags', placeholder: 'site=lab, role=sensor'});
  const err = errorBox();
  const form = await confirmDialog({
    title: `Claim ${device.name}`,
    message: `Claim code ${device.claim_code}. Compare it with the code the device shows before you claim it.`,
    confirm: 'Claim',
    body: [field('Name (optional)', name), field('Tags (optional)', tags, 'key=value, separated by commas'), err],
  });
  if (!form) return null;
  try {
    const d = await call('EnrollmentService', 'ClaimDevice', {claim_code: device.claim_code,
      name: name.value.trim(), tags: parseTags(tags.value)});
    notify(`Claimed ${d.name}`);
    return d;
  } catch (e) {
    notify(`Could not claim ${device.name}: ${e.message}`);
    throw e;
  }
}

export function componentsCell(d) {
  const comps = d.components || [];
  if (!comps.length) return h('span', {class: 'muted'}, '—');
  return h('span', {class: 'chips'}, comps.map((c) => h('span', {class: 'chip', title: `${c.state || ''} ${c.health || ''}`},
    `${c.name}@${c.version}`, c.health === 'unhealthy' || c.state === 'failed' ? ' ⚠' : '')));
}

function statusCell(d) {
  if (d.status !== 'active') return badge(d.status);
  return d.online ? badge('online') : badge('offline');
}

export default async function devices(ctx) {
  const {root} = ctx;
  const q = ctx.query;
  const state = {
    status: q.get('status') || '', type: q.get('type') || '', tag: q.get('tag') || '', search: q.get('q') || '',
    offset: Math.max(0, parseInt(q.get('offset') || '0', 10) || 0), sort: {}, selected: new Set(), rows: [],
  };
  const writer = can('operator');

  // --- filters ---
  const statusSel = select('status', [['', 'Any'], ['active', 'Active'], ['pending', 'Pending'], ['revoked', 'Revoked']],
    state.status);
  const typeIn = h('input', {name: 'type', value: state.type, placeholder: 'e.g. linux-aarch64', size: 14});
  const tagIn = h('input', {name: 'tag', value: state.tag, placeholder: 'site=lab', size: 14});
  const searchIn = h('input', {name: 'q', type: 'search', value: state.search, placeholder: 'name, id or hardware id'});
  const filterErr = errorBox();
  const filters = h('form', {class: 'inline card', role: 'search', 'aria-label': 'Filter devices',
    on: {submit: (ev) => { ev.preventDefault(); applyFilters(); }}},
  field('Status', statusSel), field('Device type', typeIn), field('Tag', tagIn), field('Search', searchIn),
  h('button', {type: 'submit'}, 'Apply'), filterErr);
  statusSel.addEventListener('change', applyFilters);
  let searchTimer = null;
  searchIn.addEventListener('input', () => { clearTimeout(searchTimer); searchTimer = setTimeout(applyFilters, 350); });

  function applyFilters() {
    state.status = statusSel.value;
    state.type = typeIn.value.trim();
    state.tag = tagIn.value.trim();
    state.search = searchIn.value.trim();
    state.offset = 0;
    state.selected.clear();
    load();
  }

  // --- bulk actions (operators) ---
  const bulkCount = h('strong', {}, '');
  const bulkTag = h('input', {name: 'bulk-tag', placeholder: 'key=value', size: 14});
  const bulkArtifact = h('input', {name: 'bulk-artifact', placeholder: 'NAME@VERSION', list: 'artifact-options', size: 18});
  const artifactOptions = h('datalist', {id: 'artifact-options'});
  const bulkErr = errorBox();
  const tagBtn = h('button', {type: 'submit'}, 'Add tag');
  const deployBtn = h('button', {type: 'submit', class: 'primary'}, 'Deploy');
  const bulk = h('div', {class: 'bulk', hidden: true, role: 'region', 'aria-label': 'Selected devices'},
    bulkCount,
    h('form', {class: 'inline', on: {submit: (ev) => { ev.preventDefault(); bulkTagging(); }}},
      field('Tag', bulkTag), tagBtn),
    h('form', {class: 'inline', on: {submit: (ev) => { ev.preventDefault(); bulkDeploy(); }}},
      field('Deploy artifact', bulkArtifact), deployBtn, artifactOptions),
    h('button', {type: 'button', class: 'small', on: {click: () => { state.selected.clear(); paint(); }}}, 'Clear selection'),
    bulkErr);

  async function bulkTagging() {
    await busy(tagBtn, bulkErr, async () => {
      const tags = parseTags(bulkTag.value);
      if (!Object.keys(tags).length) throw new Error('type a tag as key=value');
      const ids = [...state.selected];
      for (const [i, id] of ids.entries()) {
        bulkCount.textContent = `Tagging ${i + 1} of ${ids.length}…`;
        await call('DeviceAdminService', 'UpdateDevice', {id, set_tags: tags});
      }
      notify(`Tagged ${ids.length} device${ids.length === 1 ? '' : 's'}`);
      bulkTag.value = '';
      await load();
    });
    paintBulk();
  }

  async function bulkDeploy() {
    const artifact = bulkArtifact.value.trim();
    if (!artifact) { showError(bulkErr, new Error('type the artifact to deploy as NAME@VERSION')); return; }
    const ids = [...state.selected];
    const ok = await confirmDialog({title: `Deploy ${artifact}`, confirm: 'Deploy',
      message: `Install ${artifact} on ${ids.length} device${ids.length === 1 ? '' : 's'} now (all or none).`});
    if (!ok) return;
    await busy(deployBtn, bulkErr, async () => {
      const r = await call('DeviceAdminService', 'Deploy', {artifact, device_ids: ids});
      notify(`Deploying ${artifact}: ${r.action_ids.length} action${r.action_ids.length === 1 ? '' : 's'} queued`);
      state.selected.clear();
      await load();
    });
  }

  // --- table ---
  const summary = h('p', {class: 'muted', 'aria-live': 'polite'});
  const tableBox = h('div');
  const pager = h('div', {class: 'pager'});
  const listErr = errorBox();

  append(root, h('div', {class: 'page-head'}, h('h1', {tabindex: -1}, 'Devices'),
    writer ? h('a', {href: href('enrollment'), class: 'small'}, 'Add devices') : null),
  filters, writer ? bulk : null, listErr, summary, tableBox, pager);

  function paintBulk() {
    const n = state.selected.size;
    bulk.hidden = !writer || n === 0;
    bulkCount.textContent = `${n} selected`;
  }

  function paint() {
    const rows = state.rows;
    const pageIds = rows.filter((d) => d.status === 'active').map((d) => d.id);
    const allBox = h('input', {type: 'checkbox', 'aria-label': 'Select all active devices on this page',
      checked: pageIds.length > 0 && pageIds.every((id) => state.selected.has(id)),
      disabled: !pageIds.length,
      on: {change: (ev) => {
        for (const id of pageIds) { if (ev.target.checked) state.selected.add(id); else state.selected.delete(id); }
        paint();
      }}});
    const columns = [
      writer ? {label: allBox, class: 'check', cell: (d) => d.status === 'active'
        ? h('input', {type: 'checkbox', 'aria-label': `Select ${d.name}`, checked: state.selected.has(d.id),
          on: {change: (ev) => {
            if (ev.target.checked) state.selected.add(d.id); else state.selected.delete(d.id);
            paintBulk();
            allBox.checked = pageIds.every((id) => state.selected.has(id));
          }}})
        : ''} : null,
      {label: 'Name', value: (d) => d.name, cell: (d) => h('a', {href: href(`devices/${encodeURIComponent(d.id)}`)}, d.name)},
      {label: 'Status', value: (d) => (d.status === 'active' ? (d.online ? 'online' : 'offline') : d.status),
        cell: statusCell},
      {label: 'Type', value: (d) => d.device_type},
      {label: 'Software', value: (d) => (d.components || []).map((c) => `${c.name}@${c.version}`).join(' '),
        cell: componentsCell},
      {label: 'Tags', value: (d) => Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(','),
        cell: (d) => tagChips(d.tags)},
      {label: 'Last seen', value: (d) => (d.last_seen ? Date.parse(d.last_seen) : null), cell: (d) => timeEl(d.last_seen)},
      {label: 'Claim code', value: (d) => d.claim_code || '', cell: (d) => (d.status !== 'pending' ? '' : h('span', {},
        h('span', {class: 'claim'}, d.claim_code), ' ',
        writer ? h('button', {type: 'button', class: 'small primary', on: {click: async (ev) => {
          await busy(ev.currentTarget, listErr, async () => { if (await claimDevice(d)) await load(); });
        }}}, 'Claim') : null,
        writer ? h('button', {type: 'button', class: 'small', on: {click: async (ev) => {
          const ok = await confirmDialog({title: `Reject ${d.name}?`, danger: true, confirm: 'Reject',
            message: 'The device is removed; it must enroll again to come back.'});
          if (ok) await busy(ev.currentTarget, listErr, async () => {
            await call('EnrollmentService', 'RejectDevice', {device_id: d.id});
            notify(`Rejected ${d.name}`);
            await load();
          });
        }}}, 'Reject') : null))},
    ].filter(Boolean);
    const anyPending = rows.some((d) => d.status === 'pending');
    clear(tableBox, dataTable({
      columns: anyPending ? columns : columns.filter((c) => c.label !== 'Claim code'),
      rows, caption: 'Devices', state: state.sort,
      empty: state.status || state.type || state.tag || state.search
        ? 'No device matches these filters.'
        : 'No devices yet. Create a join token on the Enrollment page to add some.',
    }));
    paintBulk();
  }

  function paintPager(total) {
    const from = total ? state.offset + 1 : 0;
    const to = Math.min(total, state.offset + PAGE);
    summary.textContent = total ? `Showing ${from}–${to} of ${total} device${total === 1 ? '' : 's'}` : '';
    clear(pager,
      h('button', {type: 'button', disabled: state.offset === 0, on: {click: () => {
        state.offset = Math.max(0, state.offset - PAGE); load();
      }}}, '← Previous'),
      h('button', {type: 'button', disabled: to >= total, on: {click: () => { state.offset += PAGE; load(); }}},
        'Next →'));
  }

  async function load() {
    let tags;
    try {
      tags = parseTags(state.tag);
      showError(filterErr, null);
    } catch (e) { showError(filterErr, e); return; }
    ctx.setQuery({status: state.status, type: state.type, tag: state.tag, q: state.search,
      offset: state.offset || ''});
    try {
      const r = await call('DeviceAdminService', 'ListDevices', {status: state.status, device_type: state.type, tags,
        search: state.search, limit: PAGE, offset: state.offset});
      if (!ctx.alive()) return;
      showError(listErr, null);
      if (!r.devices.length && state.offset > 0 && r.total > 0) {
        state.offset = Math.max(0, Math.floor((r.total - 1) / PAGE) * PAGE);
        await load();
        return;
      }
      state.rows = r.devices;
      paint();
      paintPager(r.total);
    } catch (e) { showError(listErr, e); }
  }

  async function loadArtifacts() {
    if (!writer) return;
    try {
      const r = await call('ArtifactService', 'ListArtifacts', {});
      clear(artifactOptions, r.artifacts.map((a) => h('option', {value: `${a.name}@${a.version}`})));
    } catch { /* only suggestions */ }
  }

  await Promise.all([load(), loadArtifacts()]);
  return {refresh: load, events: ['device.', 'action.']};
}
