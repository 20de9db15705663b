// Overview: device counts, versions across the fleet, rollouts in progress and open alerts (when the server has them).
import { call, can, has, href } from '../app.js';
import { barChart } from '../charts.js';
import { badge, clear, h, section, timeEl } from '../ui.js';
import { stageText } from './rollouts.js';

// Online/offline and versions are counted over at most this many active devices (one request).
const SAMPLE = 5000;

function stat(n, what, cls, link) {
  const body = [h('span', {class: 'n'}, String(n)), h('span', {class: 'what'}, what)];
  return link ? h('a', {class: ['stat', cls], href: link}, body) : h('div', {class: ['stat', cls]}, body);
}

function versionCharts(devices) {
  const byComponent = new Map();
  for (const d of devices) {
    for (const c of d.components || []) {
      const versions = byComponent.get(c.name) || new Map();
      versions.set(c.version, (versions.get(c.version) || 0) + 1);
      byComponent.set(c.name, versions);
    }
  }
  if (!byComponent.size) {
    return h('p', {class: 'empty'}, 'No device reports any installed software yet. Upload an artifact and deploy it '
      + 'to see its versions here.');
  }
  return [...byComponent.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, versions]) => {
    const items = [...versions.entries()]
      .sort(([a], [b]) => b.localeCompare(a, undefined, {numeric: true}))
      .map(([v, n]) => ({label: v, value: n, title: `${name}@${v}`}));
    return barChart(items, {title: name, unit: (n) => (n === 1 ? 'device' : 'devices')});
  });
}

function emptyState() {
  return h('div', {class: 'empty-state'},
    h('h2', {}, 'No devices yet'),
    can('operator')
      ? [h('p', {}, 'Next step: create a join token, then run its install one-liner on a device (a Raspberry Pi or '
        + 'any Linux board). The device shows up here within a minute.'),
      h('p', {}, h('a', {class: 'button primary', href: href('enrollment')}, 'Create a join token')),
      h('p', {class: 'hint'}, 'No hardware at hand? Try simulated devices: ',
        h('code', {}, 'fleetd simulate --server URL --token TOKEN -n 10'), '.')]
      : h('p', {}, 'An operator or admin adds devices by creating a join token on the Enrollment page.'));
}

export default async function overview(ctx) {
  const {root} = ctx;
  const stats = h('div', {class: 'stats', 'aria-label': 'Device counts'});
  const body = h('div');
  root.append(h('h1', {tabindex: -1}, 'Overview'), stats, body);

  async function refresh() {
    const [active, pending, revoked] = await Promise.all([
      call('DeviceAdminService', 'ListDevices', {status: 'active', limit: SAMPLE}),
      call('DeviceAdminService', 'ListDevices', {status: 'pending', limit: 1}),
      call('DeviceAdminService', 'ListDevices', {status: 'revoked', limit: 1}),
    ]);
    const extras = await Promise.all([
      has('RolloutService') ? call('RolloutService', 'ListRollouts', {limit: 20}).catch(() => null) : null,
      has('AlertService') ? call('AlertService', 'ListIncidents', {limit: 8}).catch(() => null) : null,
    ]);
    if (!ctx.alive()) return;
    const online = active.devices.filter((d) => d.online).length;
    const sampled = active.devices.length < active.total;
    clear(stats,
      stat(online, sampled ? `online (of first ${SAMPLE})` : 'online', 'ok', href('devices', {status: 'active'})),
      stat(active.devices.length - online, 'offline', active.devices.length - online ? 'warn' : '',
        href('devices', {status: 'active'})),
      stat(pending.total, 'pending (to claim)', pending.total ? 'warn' : '', href('devices', {status: 'pending'})),
      stat(active.total, 'active in total', '', href('devices', {status: 'active'})),
      revoked.total ? stat(revoked.total, 'revoked', 'bad', href('devices', {status: 'revoked'})) : null);
    const parts = [];
    if (!active.total && !pending.total) parts.push(emptyState());
    else if (pending.total) {
      parts.push(h('p', {class: 'notice'}, `${pending.total} device${pending.total === 1 ? ' is' : 's are'} waiting to `
        + 'be claimed. ', h('a', {href: href('devices', {status: 'pending'})}, 'Review pending devices')));
    }
    const [rollouts, incidents] = extras;
    const running = (rollouts?.rollouts || []).filter((r) => ['scheduled', 'running', 'paused'].includes(r.state));
    const left = [section('Versions across the fleet', versionCharts(active.devices))];
    const right = [];
    if (rollouts) {
      right.push(section('Rollouts in progress', running.length
        ? h('ul', {}, running.map((r) => h('li', {}, h('a', {href: href(`rollouts/${r.id}`)}, h('code', {}, r.artifact)), ' ',
          badge(r.state), ' ', h('span', {class: 'muted'}, stageText(r)))))
        : h('p', {class: 'empty'}, 'No rollout is running.')));
    }
    if (incidents) {
      const list = incidents.incidents || [];
      right.push(section('Recent alerts', list.length
        ? h('ul', {}, list.map((i) => h('li', {}, badge(i.state), ' ', i.rule_name, ' on ',
          h('a', {href: href(`devices/${encodeURIComponent(i.device_id)}`)}, i.device_name || i.device_id), ' ',
          timeEl(i.started_at))))
        : h('p', {class: 'empty'}, 'No alerts.')));
    }
    clear(body, ...parts, h('div', {class: 'grid2'}, h('div', {}, left), right.length ? h('div', {}, right) : null));
  }

  await refresh();
  return {refresh, events: ['device.', 'action.', 'rollout.', 'alert.']};
}
