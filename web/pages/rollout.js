// One rollout, live: stage progress, device outcomes with reasons, and the operator's controls.
import { call, can, href } from '../app.js';
import {
  badge, busy, clear, confirmDialog, dataTable, dl, errorBox, field, h, notify, section, showError, tagChips, timeEl,
} from '../ui.js';
import { stageText } from './rollouts.js';

const ENDED = new Set(['completed', 'rolled_back', 'cancelled']);

function minutes(s) {
  if (s === null || s === undefined) return '—';
  return s >= 120 ? `${+(s / 60).toFixed(1)} min` : `${s} s`;
}

function stageRow(st, current) {
  const total = Math.max(1, st.targeted);
  const parts = [['s-ok', st.succeeded, 'succeeded'], ['s-bad', st.failed, 'failed'],
    ['s-soak', st.soaking, 'soaking'], ['s-run', st.in_progress + st.queued, 'in progress'],
    ['s-skip', st.skipped, 'skipped']];
  const bar = h('div', {class: 'stage-bar', 'aria-hidden': 'true'}, parts.filter(([, n]) => n).map(([cls, n]) => {
    const span = h('span', {class: cls});
    span.style.width = `${(n / total) * 100}%`;
    return span;
  }));
  const words = st.state === 'pending' ? `${st.targeted} device${st.targeted === 1 ? '' : 's'} in this stage, `
    + 'waiting for it to start' : `${st.targeted} targeted: ${st.succeeded} succeeded, ${st.failed} failed, ${st.skipped} skipped, `
    + `${st.in_progress + st.queued} installing, ${st.soaking} soaking`;
  return h('li', {class: current ? 'current' : '', dataset: {state: st.state}},
    h('div', {class: 'actions'}, h('strong', {}, `Stage ${st.index + 1}: ${st.percent} %`), badge(st.state),
      st.started_at ? h('span', {class: 'muted'}, 'started ', timeEl(st.started_at)) : null),
    bar, h('p', {class: 'hint'}, words));
}

export default async function rollout(ctx) {
  const {root, params} = ctx;
  const writer = can('operator');
  const head = h('div');
  const stagesBox = h('div');
  const controls = h('div');
  const ctlErr = errorBox();
  const devicesBox = h('div');
  const settings = h('div');
  root.append(h('p', {class: 'crumbs'}, h('a', {href: href('rollouts')}, '← Rollouts')), head, ctlErr, controls, stagesBox,
    devicesBox, settings);
  let r = null;

  function control(label, method, {danger = false, message, ask = false} = {}) {
    const btn = h('button', {type: 'button', class: danger ? 'danger' : ''}, label);
    btn.addEventListener('click', async () => {
      const reason = ask ? h('input', {name: 'reason', placeholder: 'why (for the audit log)'}) : null;
      const form = await confirmDialog({title: `${label} rollout ${r.id}?`, message, danger, confirm: label,
        body: reason ? field('Reason', reason) : null});
      if (!form) return;
      await busy(btn, ctlErr, async () => {
        r = await call('RolloutService', method, reason ? {id: r.id, reason: reason.value} : {id: r.id});
        notify(`Rollout ${r.id}: ${r.state.replaceAll('_', ' ')}`);
        await refresh();
      });
    });
    return btn;
  }

  function paint() {
    clear(head, h('div', {class: 'page-head'}, h('h1', {tabindex: -1}, 'Rollout of ', h('code', {}, r.artifact)), badge(r.state)),
      r.reason ? h('p', {class: ['reason', r.state === 'rolled_back' ? 'error' : 'notice'], role: 'status'},
        r.reason.charAt(0).toUpperCase() + r.reason.slice(1)) : null,
      !ENDED.has(r.state) && r.waiting_for ? h('p', {class: 'muted'}, `${stageText(r)}: ${r.waiting_for}`) : null);
    if (writer) {
      const active = !ENDED.has(r.state);
      clear(controls, active ? h('div', {class: 'actions card'},
        r.state === 'paused' ? control('Resume', 'ResumeRollout', {message: 'New stages and installs go on.'})
          : control('Pause', 'PauseRollout', {message: 'No new stage and no new installs until you resume; a failure '
            + 'past the threshold still rolls it back.'}),
        r.stage < r.stages.length - 1 ? control('Promote', 'PromoteRollout', {message: 'Start the next stage now, '
          + 'without waiting for the soak, the start time or the window.'}) : null,
        control('Cancel', 'CancelRollout', {danger: true, message: 'Unfinished installs are cancelled; devices that '
          + 'installed keep the new version.'}),
        control('Roll back', 'RollbackRollout', {danger: true, ask: true, message: 'Unfinished installs are cancelled '
          + 'and every device running the new version goes back to its previous one.'})) : null);
    }
    const rb = r.rollback || {};
    clear(stagesBox, section('Stages', h('ol', {class: 'stages'}, (r.stages || []).map((st) => stageRow(st, st.index === r.stage))),
      rb.actions ? h('p', {}, h('strong', {}, 'Rollback: '), `${rb.actions} device${rb.actions === 1 ? '' : 's'} sent back, `
        + `${rb.succeeded} done, ${rb.failed} failed, ${rb.open} still open.`) : null));
    const t = r.target || {};
    clear(settings, section('Settings', dl([
      ['ID', h('code', {}, r.id)],
      ['Artifact', h('a', {href: href(`artifacts/${encodeURIComponent(r.artifact_id)}`)}, r.artifact)],
      ['Target tags', tagChips(t.tags)], ['Device types', (t.device_types || []).join(', ') || '—'],
      ['Devices', (t.device_ids || []).join(', ') || '—'],
      ['Failure threshold', `${r.max_failure_percent} %`], ['Soak', minutes(r.soak_seconds)],
      ['Offline timeout', minutes(r.offline_timeout_seconds)], ['Start at', r.start_at ? timeEl(r.start_at, false) : 'at once'],
      ['Window', r.window || 'any time'], ['Health condition', r.health || '—'], ['Consent', r.consent ? 'yes' : 'no'],
      ['Created', h('span', {}, timeEl(r.created_at, false), r.created_by ? ` by ${r.created_by}` : '')],
      ['Finished', r.finished_at ? timeEl(r.finished_at, false) : '—'],
    ])));
  }

  async function loadDevices() {
    const d = await call('RolloutService', 'ListRolloutDevices', {id: params.id, limit: 500});
    if (!ctx.alive()) return;
    clear(devicesBox, section(`Devices (${d.total})`, dataTable({
      caption: 'Devices in this rollout', rows: d.devices, state: {},
      empty: 'No device is part of this rollout yet.',
      columns: [
        {label: 'Device', value: (x) => x.name || x.device_id, cell: (x) => [
          h('a', {href: href(`devices/${encodeURIComponent(x.device_id)}`)}, x.name || x.device_id),
          x.name ? [' ', h('code', {class: 'muted'}, x.device_id)] : null]},
        {label: 'Stage', class: 'num', value: (x) => x.stage + 1},
        {label: 'Status', value: (x) => x.status, cell: (x) => badge(x.status)},
        {label: 'Detail', value: (x) => x.detail, cell: (x) => x.detail || h('span', {class: 'muted'}, '—')},
      ],
      rowProps: (x) => ({dataset: {status: x.status}}),
    })));
  }

  async function refresh() {
    const [next] = await Promise.all([call('RolloutService', 'GetRollout', {id: params.id}), loadDevices()]);
    if (!ctx.alive()) return;
    r = next;
    showError(ctlErr, null);
    paint();
  }

  await refresh();
  return {refresh, events: ['rollout.', 'action.']};
}
