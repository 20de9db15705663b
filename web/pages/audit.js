// The audit log: newest first, filtered by type (action) prefixes, actor and outcome; older pages on demand.
// One command that made an action on many devices is one entry: its count, the first devices, a link to its rollout.
import { call, href } from '../app.js';
import { badge, clear, dataTable, errorBox, field, h, select, showError, timeEl } from '../ui.js';

const PAGE = 100;

function link(path, id) {
  return h('a', {href: href(`${path}/${encodeURIComponent(id)}`)}, id);
}

function devices(d) {
  const listed = d.devices || [];
  const more = d.count - listed.length;
  return h('span', {}, `${d.count} device${d.count === 1 ? '' : 's'}`, d.artifact || d.component
    ? ` (${d.artifact || d.component})` : '', ': ', listed.map((id, i) => [i ? ', ' : '', link('devices', id)]),
  more > 0 ? ` and ${more} more` : '', d.rollout ? ['; rollout ', link('rollouts', d.rollout)] : '');
}

// A rollout stage's start is one entry for all the installs it hands out.
function stage(d, rollout) {
  return h('span', {}, `stage ${d.stage + 1} (${d.percent} %): ${d.installs} install${d.installs === 1 ? '' : 's'}`,
    d.artifact ? ` of ${d.artifact}` : '', rollout ? ['; rollout ', link('rollouts', rollout)] : '');
}

function details(d, target) {
  if (typeof d?.count === 'number' && Array.isArray(d.devices)) return devices(d);
  if (typeof d?.installs === 'number' && typeof d.stage === 'number') return stage(d, target);
  const entries = Object.entries(d || {}).filter(([, v]) => v !== null && v !== '' && !(Array.isArray(v) && !v.length));
  if (!entries.length) return h('span', {class: 'muted'}, '—');
  return h('span', {class: 'mono'}, entries.map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' '));
}

export default async function audit(ctx) {
  const {root, query} = ctx;
  const state = {action: query.get('action') || '', actor: query.get('actor') || '', outcome: query.get('outcome') || '',
    entries: [], next: 0, sort: {}};
  const action = h('input', {name: 'action', value: state.action, placeholder: 'e.g. device. or artifact.,token.'});
  const actor = h('input', {name: 'actor', value: state.actor, placeholder: 'name or id'});
  const outcome = select('outcome', [['', 'Any'], ['ok', 'ok'], ['denied', 'denied'], ['failed', 'failed']], state.outcome);
  const err = errorBox();
  const box = h('div');
  const more = h('button', {type: 'button', hidden: true, on: {click: () => load(true)}}, 'Show older entries');
  root.append(h('h1', {tabindex: -1}, 'Audit log'),
    h('form', {class: 'inline card', role: 'search', 'aria-label': 'Filter the audit log', on: {submit: (ev) => {
      ev.preventDefault();
      state.action = action.value.trim(); state.actor = actor.value.trim(); state.outcome = outcome.value;
      state.entries = [];
      load(false);
    }}}, field('Action starts with', action), field('Actor', actor), field('Outcome', outcome),
    h('button', {type: 'submit'}, 'Apply')),
    err, box, h('div', {class: 'pager'}, more));
  outcome.addEventListener('change', () => { state.outcome = outcome.value; state.entries = []; load(false); });

  async function load(older) {
    ctx.setQuery({action: state.action, actor: state.actor, outcome: state.outcome});
    try {
      const r = await call('AuditService', 'List', {action: state.action, actor: state.actor, outcome: state.outcome,
        limit: PAGE, before_id: older ? state.next : 0});
      if (!ctx.alive()) return;
      showError(err, null);
      if (older) state.entries = state.entries.concat(r.entries);
      else if (state.entries.length > PAGE && r.entries.length) {
        // A refresh keeps the older pages already shown: add only what is newer.
        const top = state.entries[0].id;
        state.entries = r.entries.filter((e) => e.id > top).concat(state.entries);
      } else {
        state.entries = r.entries;
        state.next = r.next_before_id;
      }
      if (older) state.next = r.next_before_id;
      more.hidden = !state.next;
      clear(box, dataTable({
        caption: 'Audit entries', rows: state.entries, state: state.sort,
        empty: state.action || state.actor || state.outcome ? 'No entry matches these filters.' : 'The log is empty.',
        columns: [
          {label: 'Time', value: (e) => Date.parse(e.ts), cell: (e) => timeEl(e.ts, false)},
          {label: 'Actor', value: (e) => e.actor_name || e.actor_id || e.actor_kind, cell: (e) => h('span', {},
            e.actor_name || e.actor_id || '—', h('span', {class: 'muted'}, ` (${e.actor_kind})`))},
          {label: 'Action', value: (e) => e.action, cell: (e) => h('code', {}, e.action)},
          {label: 'Target', value: (e) => e.target || '', cell: (e) => e.target ? h('code', {}, e.target) : '—'},
          {label: 'Outcome', value: (e) => e.outcome, cell: (e) => badge(e.outcome)},
          {label: 'From', value: (e) => e.remote_addr || ''},
          {label: 'Details', cell: (e) => details(e.details, e.target)},
        ],
      }));
    } catch (e) { showError(err, e); }
  }

  await load(false);
  return {refresh: () => load(false), events: []};
}
