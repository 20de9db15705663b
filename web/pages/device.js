// Device detail: inventory, installed software, action history, telemetry, and the direct actions.
import { call, can, has, href, navigate } from '../app.js';
import { lineChart } from '../charts.js';
import {
  append, badge, busy, clear, confirmDialog, dataTable, dl, errorBox, field, h, notify, parseTags, secretBlock,
  section, select, showError, timeEl,
} from '../ui.js';
import { targetTokenSection } from '../ddi.js';
import { claimDevice } from './devices.js';

const OPEN = new Set(['queued', 'offered', 'accepted', 'downloading', 'verifying', 'installing']);
const RANGES = [['3600', 'Last hour'], ['21600', 'Last 6 hours'], ['86400', 'Last 24 hours'], ['604800', 'Last 7 days']];

function actionsTable(list, {writer, onCancel}) {
  return dataTable({
    caption: 'Action history', state: {},
    empty: 'No actions yet. Deploy an artifact or restart an app to see them here.',
    rows: list,
    columns: [
      {label: 'Created', value: (a) => Date.parse(a.created_at || 0), cell: (a) => timeEl(a.created_at)},
      {label: 'Kind', value: (a) => a.kind},
      {label: 'Component', value: (a) => a.component || '', cell: (a) => a.artifact ? h('code', {}, a.artifact) : (a.component || '—')},
      {label: 'State', value: (a) => a.state, cell: (a) => h('span', {}, badge(a.state),
        OPEN.has(a.state) && a.progress ? ` ${a.progress} %` : '')},
      {label: 'Message', value: (a) => a.message, cell: (a) => a.message
        ? h('span', {class: a.state === 'failed' || a.state === 'rolled_back' ? 'bad-text' : ''}, a.message) : h('span', {class: 'muted'}, '—')},
      {label: 'By', value: (a) => a.rollout_id ? `rollout ${a.rollout_id}` : a.created_by || '',
        cell: (a) => a.rollout_id ? h('a', {href: href(`rollouts/${a.rollout_id}`)}, 'rollout') : (a.created_by || '—')},
      writer ? {label: '', cell: (a) => OPEN.has(a.state)
        ? h('button', {type: 'button', class: 'small', on: {click: (ev) => onCancel(a, ev.currentTarget)}}, 'Cancel')
        : ''} : null,
    ].filter(Boolean),
    rowProps: (a) => ({dataset: {state: a.state, kind: a.kind}}),
  });
}

// Why an action still says queued: the device only hears of it at its next check-in.
function pickupHint(dev, list) {
  if (!list.some((a) => a.state === 'queued' || a.state === 'offered')) return null;
  const due = dev.last_seen ? Date.parse(dev.last_seen) + dev.poll_interval * 1000 : 0;
  const when = !dev.online ? 'when it comes back online'
    : due > Date.now() ? `by about ${new Date(due).toLocaleTimeString()}` : 'any moment now';
  return h('p', {class: 'hint', 'data-hint': 'pickup'}, `${dev.name} picks up queued actions at its next check-in `
    + `(every ${dev.poll_interval} s): ${when}.`);
}

export default async function device(ctx) {
  const {root, params} = ctx;
  const writer = can('operator');
  let dev = await call('DeviceAdminService', 'GetDevice', {id: params.id});
  if (!ctx.alive()) return {};
  const id = dev.id;

  const head = h('div');
  const info = h('div', {class: 'grid2'});
  const comps = h('div');
  const actionsBox = h('div');
  const actionErr = errorBox();
  const telemetryBox = h('div');
  root.append(h('p', {class: 'crumbs'}, h('a', {href: href('devices')}, '← Devices')), head, actionErr);

  // --- operator actions ---
  const controls = h('div');
  if (writer) {
    const artifactIn = h('input', {name: 'artifact', placeholder: 'NAME@VERSION', list: 'device-artifacts', required: true});
    const options = h('datalist', {id: 'device-artifacts'});
    const deployBtn = h('button', {type: 'submit', class: 'primary'}, 'Deploy');
    const deployErr = errorBox();
    const compSel = h('select', {name: 'component'});
    const restartBtn = h('button', {type: 'button'}, 'Restart app');
    const rollbackBtn = h('button', {type: 'button'}, 'Roll back app');
    const rebootBtn = h('button', {type: 'button'}, 'Reboot device');
    const revokeBtn = h('button', {type: 'button', class: 'danger'}, 'Revoke device');
    const deleteBtn = can('admin') ? h('button', {type: 'button', class: 'danger'}, 'Delete device') : null;
    const rekeyBtn = can('admin') ? h('button', {type: 'button'}, 'Re-key') : null;
    const rekeyed = h('div');
    const ctlErr = errorBox();

    const deployForm = h('form', {class: 'inline', 'aria-label': 'Deploy an artifact', on: {submit: async (ev) => {
      ev.preventDefault();
      const artifact = artifactIn.value.trim();
      if (!artifact) { showError(deployErr, new Error('type the artifact as NAME@VERSION')); return; }
      const ok = await confirmDialog({title: `Deploy ${artifact}?`, confirm: 'Deploy',
        message: `Install ${artifact} on ${dev.name} now.`});
      if (!ok) return;
      await busy(deployBtn, deployErr, async () => {
        await call('DeviceAdminService', 'Deploy', {artifact, device_ids: [id]});
        notify(`Deploying ${artifact} to ${dev.name}`);
        artifactIn.value = '';
        await refresh();
      });
    }}}, field('Deploy artifact', artifactIn), deployBtn, options);

    async function simple(kind, btn, {title, message, danger = false, confirm}) {
      const component = compSel.value;
      if ((kind === 'restart' || kind === 'rollback') && !component) {
        showError(ctlErr, new Error('this device reports no installed app to act on'));
        return;
      }
      const ok = await confirmDialog({title, message, danger, confirm});
      if (!ok) return;
      await busy(btn, ctlErr, async () => {
        await call('DeviceAdminService', 'CreateAction', {kind, component, device_ids: [id]});
        notify(`${confirm}: queued for ${dev.name}`);
        await refresh();
      });
    }
    restartBtn.addEventListener('click', () => simple('restart', restartBtn, {title: `Restart ${compSel.value}?`,
      message: `Restart ${compSel.value} on ${dev.name}.`, confirm: 'Restart'}));
    rollbackBtn.addEventListener('click', () => simple('rollback', rollbackBtn, {title: `Roll back ${compSel.value}?`,
      message: `Install the previous known-good version of ${compSel.value} on ${dev.name}.`, confirm: 'Roll back'}));
    rebootBtn.addEventListener('click', () => simple('reboot', rebootBtn, {title: `Reboot ${dev.name}?`,
      message: 'The device restarts; it is offline until it is back.', confirm: 'Reboot', danger: true}));
    revokeBtn.addEventListener('click', async () => {
      const ok = await confirmDialog({title: `Revoke ${dev.name}?`, danger: true, confirm: 'Revoke',
        message: 'Its token stops working at once and its open actions are cancelled. It cannot come back '
          + 'unless an admin deletes it and it enrolls again.'});
      if (ok) await busy(revokeBtn, ctlErr, async () => {
        await call('DeviceAdminService', 'RevokeDevice', {id});
        notify(`Revoked ${dev.name}`);
        await refresh();
      });
    });
    rekeyBtn?.addEventListener('click', async () => {
      const online = dev.online ? ` It checked in ${Math.max(0, Math.round((Date.now() - Date.parse(dev.last_seen)) / 1000))} s `
        + 'ago: a device that still has its key does not need re-keying.' : '';
      const ok = await confirmDialog({title: `Re-key ${dev.name}?`, confirm: 'Make re-key token',
        message: `For a device that lost its key: a token, valid once and for a day, lets ${dev.hardware_id} enroll `
          + `with a new key and stay this device (its tags, apps and actions).${online}`});
      if (ok) await busy(rekeyBtn, ctlErr, async () => {
        const r = await call('DeviceAdminService', 'RekeyDevice', {id});
        clear(rekeyed, h('div', {class: 'success'},
          h('p', {}, 'Re-key token created. It is shown only now.'),
          secretBlock('On the device, with the agent installed', r.agent_command),
          secretBlock('Or install the agent afresh', r.token.install_command),
          secretBlock('Re-key token', r.token.token)));
        notify(`Re-key token made for ${dev.name}`);
      });
    });
    deleteBtn?.addEventListener('click', async () => {
      const ok = await confirmDialog({title: `Delete ${dev.name}?`, danger: true, confirm: 'Delete',
        message: 'The device and its history are forgotten; it may enroll again.'});
      if (ok) await busy(deleteBtn, ctlErr, async () => {
        await call('DeviceAdminService', 'DeleteDevice', {id});
        notify(`Deleted ${dev.name}`);
        navigate('devices');
      });
    });
    controls.append(section('Actions', deployForm, deployErr,
      h('div', {class: 'inline toolbar'}, field('App', compSel), restartBtn, rollbackBtn),
      h('div', {class: 'actions'}, rebootBtn, rekeyBtn, revokeBtn, deleteBtn), ctlErr, rekeyed));
    controls.paint = () => {
      const names = (dev.components || []).map((c) => c.name);
      const keep = compSel.value;
      clear(compSel, names.length ? names.map((n) => h('option', {value: n, selected: n === keep}, n))
        : h('option', {value: ''}, '(no apps reported)'));
      const active = dev.status === 'active';
      for (const el of [deployBtn, restartBtn, rollbackBtn, rebootBtn]) el.disabled = !active;
      revokeBtn.hidden = dev.status === 'revoked';
      if (rekeyBtn) rekeyBtn.hidden = dev.status === 'revoked' || Boolean(dev.ddi_controller_id);
      // hawkBit DDI has no restart or reboot: such an action would only fail at the device's next poll.
      restartBtn.hidden = rebootBtn.hidden = Boolean(dev.ddi_controller_id);
      controls.hidden = false;
    };
    call('ArtifactService', 'ListArtifacts', {device_type: dev.device_type}).then((r) => {
      clear(options, r.artifacts.map((a) => h('option', {value: `${a.name}@${a.version}`})));
    }).catch(() => {});
  }

  function paintHead() {
    const status = dev.status === 'active' ? badge(dev.online ? 'online' : 'offline') : badge(dev.status);
    clear(head, h('div', {class: 'page-head'}, h('h1', {tabindex: -1}, dev.name), status,
      ddiBox ? badge('info', 'hawkBit DDI') : null),
      dev.status === 'pending' ? h('p', {class: 'notice'}, 'This device is pending: claim code ',
        h('span', {class: 'claim'}, dev.claim_code), '. ', writer
          ? h('button', {type: 'button', class: 'small primary', on: {click: async (ev) => {
            await busy(ev.currentTarget, actionErr, async () => { if (await claimDevice(dev)) await refresh(); });
          }}}, 'Claim')
          : 'An operator can claim it.') : null);
  }

  function paintInfo() {
    const inv = dev.inventory || {};
    clear(info,
      section('Device', dl([
        ['ID', h('code', {}, dev.id)], ['Hardware ID', h('code', {}, dev.hardware_id)], ['Type', dev.device_type],
        ['Status', dev.status], ['Last seen', timeEl(dev.last_seen)], ['Address', dev.last_addr],
        ['Connects by', {mqtt: 'MQTT', https: 'HTTPS poll'}[dev.transport] || '-'],
        ['Certificate expires', dev.certificate_expires ? timeEl(dev.certificate_expires, false) : 'no certificate'],
        ['Enrolled', timeEl(dev.enrolled_at, false)], ['Poll interval', `${dev.poll_interval} s`],
        ['Tags', tagEditor()],
      ])),
      section('Inventory', Object.keys(inv).length ? dl(Object.entries(inv).map(([k, v]) => [k.replaceAll('_', ' '),
        typeof v === 'object' ? (Array.isArray(v) ? v.join(', ') : JSON.stringify(v)) : String(v)]))
        : h('p', {class: 'empty'}, 'The device has not reported an inventory yet.')));
  }

  function tagEditor() {
    const entries = Object.entries(dev.tags || {});
    const chips = h('span', {class: 'chips'}, entries.length ? entries.map(([k, v]) => h('span', {class: 'chip'}, `${k}=${v}`,
      writer ? h('button', {type: 'button', 'aria-label': `Remove tag ${k}`, title: `Remove tag ${k}`, on: {click: (ev) =>
        busy(ev.currentTarget, actionErr, async () => {
          dev = await call('DeviceAdminService', 'UpdateDevice', {id, remove_tags: [k]});
          paintInfo();
        })}}, '×') : null)) : h('span', {class: 'muted'}, 'none'));
    if (!writer) return chips;
    const input = h('input', {name: 'tag', placeholder: 'key=value', size: 12, 'aria-label': 'New tag (key=value)'});
    const add = h('button', {type: 'submit', class: 'small'}, 'Add tag');
    return h('div', {}, chips, h('form', {class: 'inline', on: {submit: (ev) => {
      ev.preventDefault();
      busy(add, actionErr, async () => {
        const tags = parseTags(input.value);
        if (!Object.keys(tags).length) throw new Error('type a tag as key=value');
        dev = await call('DeviceAdminService', 'UpdateDevice', {id, set_tags: tags});
        paintInfo();
      });
    }}}, input, add));
  }

  // --- an app's last log lines: a logs action, which the device answers at its next check-in ---
  const logsBox = h('div', {class: 'app-logs', 'aria-live': 'polite'});
  let logsShown = null;  // the logs action whose lines the box shows (or waits for)
  const logLines = 200;

  async function askLogs(app, btn) {
    await busy(btn, actionErr, async () => {
      const r = await call('DeviceAdminService', 'CreateAction',
        {kind: 'logs', component: app, device_ids: [id], params: {lines: String(logLines)}});
      const aid = r.action_ids[0];
      logsShown = aid;
      const status = h('p', {class: 'muted'}, `Asked ${dev.name} for the last ${logLines} lines of ${app}; it sends `
        + `them at its next check-in (every ${dev.poll_interval} s). Waiting…`);
      const closeBtn = h('button', {type: 'button', class: 'small', on: {click: () => {
        logsShown = null;
        clear(logsBox);
      }}}, 'Close');
      const lines = h('div');
      clear(logsBox, section(`Log of ${app}`, h('div', {class: 'inline toolbar'}, status, closeBtn), lines));
      waitLogs(aid, app, status, lines);
    });
  }

  async function waitLogs(aid, app, status, box) {
    while (ctx.alive() && logsShown === aid) {
      let a;
      try {
        a = await call('DeviceAdminService', 'GetAction', {id: aid});
      } catch (e) {
        clear(status, `Could not read the action: ${e.message}`);
        return;
      }
      if (logsShown !== aid) return;
      if (!OPEN.has(a.state)) {
        status.className = a.state === 'succeeded' ? 'muted' : 'bad-text';
        if (a.state !== 'succeeded' || !a.result) {
          clear(status, `${dev.name} did not send the log of ${app}: ${a.message || a.state}`);
          return;
        }
        const {text, lines, truncated} = a.result;
        clear(status, `${lines} line${lines === 1 ? '' : 's'} of ${app}, sent `, timeEl(a.finished_at),
          truncated ? ` — ${a.message}` : '');
        clear(box, text ? h('pre', {class: 'log', 'aria-label': `Log of ${app}`}, text)
          : h('p', {class: 'empty'}, `${app} has written nothing to its log yet.`));
        return;
      }
      await new Promise((done) => setTimeout(done, 2000));
    }
  }

  function paintComponents() {
    // hawkBit DDI has no logs action: asking would only fail at the device's next poll.
    const logs = writer && !dev.ddi_controller_id;
    clear(comps, section('Installed software', dataTable({
      caption: 'Installed software', rows: dev.components || [], state: {},
      empty: 'The device reports no installed apps yet.',
      columns: [
        {label: 'App', value: (c) => c.name},
        {label: 'Version', value: (c) => c.version, cell: (c) => h('code', {}, c.version)},
        {label: 'Previous', value: (c) => c.previous_version || '', cell: (c) => c.previous_version || '—'},
        {label: 'State', value: (c) => c.state, cell: (c) => (c.state ? badge(c.state) : '—')},
        {label: 'Health', value: (c) => c.health, cell: (c) => (c.health ? badge(c.health) : '—')},
        {label: 'Restarts', class: 'num', value: (c) => c.restarts},
        {label: 'Updated', value: (c) => Date.parse(c.updated_at || 0), cell: (c) => timeEl(c.updated_at)},
        logs ? {label: '', cell: (c) => h('button', {type: 'button', class: 'small', title: `The last ${logLines} lines`
          + ` of ${c.name}'s log`, 'aria-label': `Logs of ${c.name}`, disabled: dev.status !== 'active',
        on: {click: (ev) => askLogs(c.name, ev.currentTarget)}}, 'Logs')} : null,
      ].filter(Boolean),
    })), logsBox);
  }

  async function onCancel(a, btn) {
    const ok = await confirmDialog({title: 'Cancel this action?', confirm: 'Cancel action', danger: true,
      message: `${a.kind} ${a.artifact || a.component} (${a.state}).`});
    if (ok) await busy(btn, actionErr, async () => {
      await call('DeviceAdminService', 'CancelAction', {id: a.id});
      await refresh();
    });
  }

  async function loadActions() {
    const r = await call('DeviceAdminService', 'ListActions', {device_id: id, limit: 100});
    if (!ctx.alive()) return;
    clear(actionsBox, section('Action history', pickupHint(dev, r.actions), actionsTable(r.actions, {writer, onCancel})));
  }

  // --- telemetry (when the server has TelemetryService) ---
  const tel = {metric: '', range: '3600'};
  const metricSel = h('select', {name: 'metric'});
  const rangeSel = select('range', RANGES, tel.range);
  const chartBox = h('div', {'aria-live': 'polite'});
  const telErr = errorBox();
  metricSel.addEventListener('change', () => { tel.metric = metricSel.value; loadChart(); });
  rangeSel.addEventListener('change', () => { tel.range = rangeSel.value; loadChart(); });

  async function loadMetrics() {
    if (!has('TelemetryService')) return;
    const r = await call('TelemetryService', 'ListMetrics', {device: id});
    if (!ctx.alive()) return;
    if (!r.metrics.length) {
      clear(telemetryBox, section('Telemetry', h('p', {class: 'empty'}, 'No telemetry from this device yet.')));
      return;
    }
    if (!tel.metric || !r.metrics.includes(tel.metric)) tel.metric = r.metrics[0];
    clear(metricSel, r.metrics.map((m) => h('option', {value: m, selected: m === tel.metric}, m)));
    if (!telemetryBox.firstChild || !telemetryBox.contains(metricSel)) {
      clear(telemetryBox, section('Telemetry', h('div', {class: 'inline toolbar'}, field('Metric', metricSel),
        field('Range', rangeSel)), telErr, chartBox));
    }
    await loadChart();
  }

  // --- a terminal on the device, through its remote-access channel (docs/remote-access.md) ---
  // Shown only when the server has remote access on (else the status route is not there), the device's agent has
  // its channel open, and this user may open sessions. The terminal runs in a frame of its own
  // (/v1/remote/terminal): the only page whose policy allows xterm.js's style elements (docs/security.md).
  const terminalBox = h('div');
  let terminalOpen = false;

  async function paintTerminal() {
    if (terminalOpen) return;  // a refresh keeps an open terminal as it is
    let st = null;
    try {
      const r = await fetch(`/v1/remote/devices/${encodeURIComponent(id)}`, {credentials: 'same-origin'});
      if (r.ok) st = await r.json();
    } catch { st = null; }
    if (!ctx.alive() || terminalOpen) return;
    if (!st || !st.allowed || !st.channel) { clear(terminalBox); return; }
    const openBtn = h('button', {type: 'button', class: 'primary', on: {click: () => {
      terminalOpen = true;
      const frame = h('iframe', {class: 'terminal', title: `Terminal on ${dev.name}`,
        src: `/v1/remote/terminal#${encodeURIComponent(id)}`});
      const closeBtn = h('button', {type: 'button', class: 'small', on: {click: () => {
        terminalOpen = false;
        clear(terminalBox);  // the frame's WebSocket closes with it: the device hangs up the shell
        paintTerminal();
      }}}, 'Close terminal');
      clear(terminalBox, section('Terminal', h('div', {class: 'inline toolbar'}, closeBtn), frame));
    }}}, 'Open terminal');
    clear(terminalBox, section('Terminal', h('p', {class: 'muted'}, `A shell on ${dev.name} through its remote-access `
      + 'channel. The session is in the audit log.'), openBtn));
  }

  async function loadChart() {
    const seconds = Number(tel.range);
    const end = new Date();
    const start = new Date(end.getTime() - seconds * 1000);
    try {
      const r = await call('TelemetryService', 'Query', {device: id, metric: tel.metric, start: start.toISOString(),
        end: end.toISOString(), max_points: 240});
      if (!ctx.alive()) return;
      showError(telErr, null);
      const pts = (r.points || []).filter((p) => p.count !== 0).map((p) => ({t: p.ts * 1000,
        avg: p.avg, min: p.min, max: p.max}));
      clear(chartBox, pts.length ? lineChart(pts, {title: `${tel.metric} (avg, with min–max band)`,
        start: start.getTime(), end: end.getTime()}) : h('p', {class: 'empty'}, 'No points in this range.'));
    } catch (e) { showError(telErr, e); }
  }

  async function refresh() {
    const [d] = await Promise.all([call('DeviceAdminService', 'GetDevice', {id}), loadActions()]);
    if (!ctx.alive()) return;
    dev = d;
    paintHead();
    paintInfo();
    paintComponents();
    controls.paint?.();
    paintTerminal();
    if (has('TelemetryService') && dev.status === 'active') await loadMetrics().catch((e) => showError(telErr, e));
  }

  // A DDI device's controller id never changes: its card is built once, so a refresh keeps a token shown in it.
  const ddiBox = dev.ddi_controller_id ? h('div', {}, targetTokenSection(dev)) : null;
  append(root, writer ? controls : null, terminalBox, info, ddiBox, comps, actionsBox, telemetryBox);
  controls.hidden = true;
  await refresh();
  return {refresh, events: ['device.', 'action.']};
}
