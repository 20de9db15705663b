// Rollouts: the list, and the create form with a live count of the devices the target matches.
import { call, can, href, navigate } from '../app.js';
import { badge, busy, clear, dataTable, errorBox, field, h, notify, parseTags, section, showError, timeEl } from '../ui.js';

const ENDED = new Set(['completed', 'rolled_back', 'cancelled']);

export function stageText(r) {
  const n = (r.stages || []).length;
  if (r.stage < 0) return n ? `not started (${n} stages)` : 'not started';
  const st = r.stages[r.stage];
  return `stage ${r.stage + 1} of ${n}${st ? ` (${st.percent} %)` : ''}`;
}

function list(text) {
  return text.split(',').map((x) => x.trim()).filter(Boolean);
}

function createForm(artifacts, preset) {
  const labels = artifacts.map((a) => `${a.name}@${a.version}`);
  const artifact = h('select', {name: 'artifact', required: true},
    h('option', {value: ''}, labels.length ? 'Choose an artifact…' : 'No artifacts: upload one first'),
    labels.slice().reverse().map((l) => h('option', {value: l, selected: l === preset}, l)));
  const tags = h('input', {name: 'tags', placeholder: 'site=lab, ring=beta'});
  const types = h('input', {name: 'device_types', placeholder: "default: the artifact's"});
  const devices = h('input', {name: 'device_ids', placeholder: 'ids or names, comma-separated'});
  const count = h('p', {class: 'notice', 'aria-live': 'polite'}, 'Choose an artifact and a target.');
  const stages = h('input', {name: 'stages', value: '5,25,100'});
  const maxFail = h('input', {name: 'max_failure', type: 'number', min: 0, max: 100, step: 'any', value: '5'});
  const soak = h('input', {name: 'soak', type: 'number', min: 0, step: 'any', value: '10'});
  const offline = h('input', {name: 'offline', type: 'number', min: 1, step: 'any', value: '30'});
  const start = h('input', {name: 'start_at', placeholder: 'now; or +2h, or 2026-12-01 02:00'});
  const win = h('input', {name: 'window', placeholder: 'e.g. Mon-Fri 01:00-05:00'});
  const health = h('input', {name: 'health', placeholder: 'e.g. cpu_temp<80'});
  const consent = h('input', {type: 'checkbox', name: 'consent'});
  const err = errorBox();
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Start rollout');

  let seq = 0;
  async function recount() {
    const my = ++seq;
    const a = artifacts.find((x) => `${x.name}@${x.version}` === artifact.value);
    let t;
    try { t = parseTags(tags.value); } catch (e) { count.textContent = e.message; return; }
    const ids = list(devices.value);
    const typeList = list(types.value);
    if (!a) { count.textContent = 'Choose an artifact and a target.'; return; }
    if (!Object.keys(t).length && !typeList.length && !ids.length) {
      count.textContent = 'Say which devices: tags, device types and/or devices.';
      return;
    }
    const named = ids.length ? `${ids.length} named device${ids.length === 1 ? '' : 's'}` : '';
    if (!Object.keys(t).length && !typeList.length) { count.textContent = `Target: ${named}.`; return; }
    try {
      const typesUsed = typeList.length ? typeList : a.device_types;
      const totals = await Promise.all(typesUsed.map((dt) =>
        call('DeviceAdminService', 'ListDevices', {status: 'active', tags: t, device_type: dt, limit: 1})
          .then((r) => r.total)));
      const n = totals.reduce((x, y) => x + y, 0);
      if (my !== seq) return;
      count.textContent = `Target: ${n} active device${n === 1 ? '' : 's'} of type ${typesUsed.join(' or ')}`
        + (Object.keys(t).length ? ` tagged ${tags.value.trim()}` : '') + (named ? `, plus ${named}` : '') + '.';
    } catch (e) { if (my === seq) count.textContent = e.message; }
  }
  let timer = null;
  for (const el of [artifact, tags, types, devices]) {
    el.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(recount, 250); });
  }
  recount();

  const form = h('form', {'aria-label': 'Start a rollout', on: {submit: (ev) => {
    ev.preventDefault();
    busy(submit, err, async () => {
      if (!artifact.value) throw new Error('choose the artifact to roll out');
      const stageList = list(stages.value).map((x) => Number(x.replace('%', '')));
      if (stageList.some((x) => Number.isNaN(x))) throw new Error('write stages as cumulative percentages, e.g. 5,25,100');
      const r = await call('RolloutService', 'CreateRollout', {
        artifact: artifact.value, tags: parseTags(tags.value), device_types: list(types.value), device_ids: list(devices.value),
        stages: stageList, max_failure_percent: Number(maxFail.value), soak_seconds: Number(soak.value) * 60,
        offline_timeout_seconds: Number(offline.value) * 60, start_at: start.value.trim(), window: win.value.trim(),
        health: health.value.trim(), consent: consent.checked,
      });
      notify(`Rollout ${r.id} of ${r.artifact} created: `
        + r.stages.map((st) => `stage ${st.index + 1} ${st.targeted} device${st.targeted === 1 ? '' : 's'}`).join(', '));
      navigate(`rollouts/${r.id}`);
    });
  }}},
  h('div', {class: 'grid2'},
    h('div', {},
      field('Artifact', artifact),
      h('fieldset', {}, h('legend', {}, 'Target (all given conditions must match)'),
        field('Devices with tags', tags, 'key=value, separated by commas'),
        field('Device types', types, 'comma-separated'),
        field('And these devices', devices)),
      count),
    h('div', {},
      field('Stages', stages, 'cumulative percentages of the target; the last is 100'),
      field('Halt and roll back above this failure rate (%)', maxFail),
      field('Soak time per stage (minutes)', soak, 'how long installed devices must stay healthy'),
      field('Skip devices offline for (minutes)', offline),
      h('details', {}, h('summary', {}, 'Schedule, window, health, consent'),
        field('Start at', start), field('Maintenance window', win), field('Health condition', health,
          'a telemetry condition each device must meet while soaking'),
        h('label', {}, consent, ' Ask devices for consent before installing')))),
  err, h('div', {class: 'actions'}, submit));
  return form;
}

export default async function rollouts(ctx) {
  const {root} = ctx;
  const state = {sort: {}, form: null};
  const listBox = h('div');
  const err = errorBox();
  const formBox = h('div');
  root.append(h('h1', {tabindex: -1}, 'Rollouts'), formBox, h('section', {class: 'card'}, h('h2', {}, 'All rollouts'), err, listBox));

  if (can('operator')) {
    const arts = await call('ArtifactService', 'ListArtifacts', {});
    formBox.append(section('Start a rollout', createForm(arts.artifacts, ctx.query.get('artifact') || '')));
  }

  async function load() {
    try {
      const r = await call('RolloutService', 'ListRollouts', {limit: 200});
      if (!ctx.alive()) return;
      showError(err, null);
      clear(listBox, dataTable({
        caption: 'Rollouts', rows: r.rollouts, state: state.sort,
        empty: 'No rollouts yet. A rollout sends an artifact to a target in stages and rolls back by itself '
          + 'when too many devices fail.',
        columns: [
          {label: 'Rollout', value: (x) => x.id, cell: (x) => h('a', {href: href(`rollouts/${x.id}`)}, x.id)},
          {label: 'Artifact', value: (x) => x.artifact, cell: (x) => h('code', {}, x.artifact)},
          {label: 'State', value: (x) => x.state, cell: (x) => badge(x.state)},
          {label: 'Progress', value: (x) => x.stage, cell: (x) => (ENDED.has(x.state) ? '—' : stageText(x))},
          {label: 'Reason', value: (x) => x.reason, cell: (x) => x.reason || x.waiting_for || h('span', {class: 'muted'}, '—')},
          {label: 'Created', value: (x) => Date.parse(x.created_at || 0), cell: (x) => timeEl(x.created_at)},
          {label: 'By', value: (x) => x.created_by || ''},
        ],
      }));
    } catch (e) { showError(err, e); }
  }

  await load();
  return {refresh: load, events: ['rollout.']};
}
