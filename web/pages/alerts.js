// Alerts: incidents, alert rules on telemetry, webhooks and their delivery log.
import { call, can, href } from '../app.js';
import {
  append, badge, busy, clear, confirmDialog, dataTable, errorBox, field, h, notify, parseTags, section, secretBlock,
  select, showError, tagChips, timeEl,
} from '../ui.js';

function condition(r) {
  if (r.kind === 'no_data') return `no ${r.metric} data for ${r.window_seconds / 60} min`;
  return `${r.aggregate}(${r.metric}) over ${r.window_seconds / 60} min ${r.comparison} ${r.threshold}`;
}

function ruleForm(onDone) {
  const name = h('input', {name: 'rule-name', placeholder: 'default: the condition'});
  const kind = select('kind', [['threshold', 'threshold'], ['no_data', 'no data']], 'threshold');
  const metric = h('input', {name: 'metric', required: true, placeholder: 'e.g. cpu_temp'});
  const agg = select('aggregate', ['avg', 'min', 'max'], 'avg');
  const cmp = select('comparison', ['>', '>=', '<', '<='], '>');
  const threshold = h('input', {name: 'threshold', type: 'number', step: 'any', value: '0'});
  const windowMin = h('input', {name: 'window', type: 'number', min: 1, max: 1440, value: '5'});
  const tags = h('input', {name: 'rule-tags', placeholder: 'site=lab'});
  const type = h('input', {name: 'device_type', placeholder: 'any'});
  const err = errorBox();
  const btn = h('button', {type: 'submit', class: 'primary'}, 'Create rule');
  return h('form', {'aria-label': 'Create an alert rule', on: {submit: (ev) => {
    ev.preventDefault();
    busy(btn, err, async () => {
      const r = await call('AlertService', 'CreateRule', {name: name.value.trim(), kind: kind.value, metric: metric.value.trim(),
        aggregate: agg.value, comparison: cmp.value, threshold: Number(threshold.value),
        window_seconds: Math.round(Number(windowMin.value) * 60), tags: parseTags(tags.value), device_type: type.value.trim()});
      notify(`Alert rule ${r.name} created`);
      name.value = ''; metric.value = '';
      await onDone();
    });
  }}},
  h('div', {class: 'inline toolbar'}, field('Metric', metric), field('Kind', kind), field('Aggregate', agg),
    field('Comparison', cmp), field('Threshold', threshold), field('Window (minutes)', windowMin)),
  h('div', {class: 'inline toolbar'}, field('Name', name), field('Devices with tags', tags), field('Device type', type), btn),
  err);
}

function webhookForm(onDone) {
  const name = h('input', {name: 'hook-name'});
  const url = h('input', {name: 'url', type: 'url', required: true, placeholder: 'https://chat.example/hooks/…'});
  const err = errorBox();
  const done = h('div', {'aria-live': 'polite'});
  const btn = h('button', {type: 'submit', class: 'primary'}, 'Add webhook');
  return h('div', {}, h('form', {class: 'inline', 'aria-label': 'Add a webhook', on: {submit: (ev) => {
    ev.preventDefault();
    busy(btn, err, async () => {
      const w = await call('AlertService', 'CreateWebhook', {name: name.value.trim(), url: url.value.trim()});
      clear(done, h('div', {class: 'success'}, secretBlock(`Signing secret of ${w.name || w.url} (shown once; `
        + 'checks X-Fleetd-Signature)', w.secret || '')));
      name.value = ''; url.value = '';
      await onDone();
    });
  }}}, field('Name', name), field('URL', url), btn), err, done);
}

export default async function alerts(ctx) {
  const {root} = ctx;
  const writer = can('operator');
  const admin = can('admin');
  const incBox = h('div');
  const rulesBox = h('div');
  const hooksBox = h('div');
  const delBox = h('div');
  const err = errorBox();
  const showResolved = h('input', {type: 'checkbox', name: 'resolved', on: {change: () => load()}});
  append(root, h('h1', {tabindex: -1}, 'Alerts'), err,
    h('section', {class: 'card'}, h('h2', {}, 'Incidents'),
      h('div', {class: 'actions'}, h('label', {}, showResolved, ' Also show resolved incidents')), incBox),
    section('Alert rules', writer ? ruleForm(() => load()) : null, rulesBox),
    writer ? section('Webhooks', admin ? webhookForm(() => load()) : null, hooksBox,
      h('h3', {}, 'Recent deliveries'), delBox) : null);

  function paintIncidents(list) {
    clear(incBox, dataTable({
      caption: 'Incidents', rows: list, state: {},
      empty: showResolved.checked ? 'No incidents yet.' : 'Nothing is firing.',
      columns: [
        {label: 'State', value: (i) => i.state, cell: (i) => badge(i.state)},
        {label: 'Rule', value: (i) => i.rule_name},
        {label: 'Device', value: (i) => i.device_name || i.device_id,
          cell: (i) => h('a', {href: href(`devices/${encodeURIComponent(i.device_id)}`)}, i.device_name || i.device_id)},
        {label: 'Value', class: 'num', value: (i) => i.value ?? '', cell: (i) => (i.value === null || i.value === undefined ? '—' : String(+i.value.toFixed(3)))},
        {label: 'Message', value: (i) => i.message, cell: (i) => i.message || '—'},
        {label: 'Started', value: (i) => Date.parse(i.started_at || 0), cell: (i) => timeEl(i.started_at)},
        {label: 'Resolved', value: (i) => Date.parse(i.resolved_at || 0) || 0, cell: (i) => (i.resolved_at ? timeEl(i.resolved_at) : '—')},
      ],
    }));
  }

  function paintRules(rules) {
    clear(rulesBox, dataTable({
      caption: 'Alert rules', rows: rules, state: {},
      empty: 'No alert rules. A rule watches a metric (say cpu_temp avg over 5 min > 80) on every matching device.',
      columns: [
        {label: 'Name', value: (r) => r.name},
        {label: 'Condition', value: condition, cell: (r) => h('code', {}, condition(r))},
        {label: 'Devices', value: (r) => JSON.stringify(r.tags) + r.device_type, cell: (r) => h('span', {},
          tagChips(r.tags), r.device_type ? ` ${r.device_type}` : '')},
        {label: 'Enabled', value: (r) => (r.enabled ? 1 : 0), cell: (r) => (r.enabled ? badge('active', 'enabled') : badge('cancelled', 'disabled'))},
        writer ? {label: '', cell: (r) => h('span', {class: 'actions'},
          h('button', {type: 'button', class: 'small', on: {click: (ev) => busy(ev.currentTarget, err, async () => {
            await call('AlertService', 'UpdateRule', {id: r.id, enabled: !r.enabled});
            await load();
          })}}, r.enabled ? 'Disable' : 'Enable'),
          h('button', {type: 'button', class: 'small danger', on: {click: async (ev) => {
            const ok = await confirmDialog({title: `Delete rule ${r.name}?`, danger: true, confirm: 'Delete',
              message: 'Its open incidents resolve and stay in the history.'});
            if (ok) await busy(ev.currentTarget, err, async () => { await call('AlertService', 'DeleteRule', {id: r.id}); await load(); });
          }}}, 'Delete'))} : null,
      ].filter(Boolean),
    }));
  }

  function paintHooks(hooks, deliveries) {
    clear(hooksBox, dataTable({
      caption: 'Webhooks', rows: hooks, state: {}, empty: 'No webhooks: incidents are only shown here.',
      columns: [
        {label: 'Name', value: (w) => w.name || ''},
        {label: 'URL', value: (w) => w.url, cell: (w) => h('code', {}, w.url)},
        {label: 'Events', value: (w) => (w.events || []).join(', ')},
        admin ? {label: '', cell: (w) => h('button', {type: 'button', class: 'small danger', on: {click: async (ev) => {
          const ok = await confirmDialog({title: `Delete webhook ${w.name || w.url}?`, danger: true, confirm: 'Delete'});
          if (ok) await busy(ev.currentTarget, err, async () => { await call('AlertService', 'DeleteWebhook', {id: w.id}); await load(); });
        }}}, 'Delete')} : null,
      ].filter(Boolean),
    }));
    clear(delBox, dataTable({
      caption: 'Webhook deliveries', rows: deliveries, state: {}, empty: 'No deliveries yet.',
      columns: [
        {label: 'When', value: (d) => Date.parse(d.created_at || 0), cell: (d) => timeEl(d.created_at)},
        {label: 'Event', value: (d) => d.event},
        {label: 'State', value: (d) => d.state, cell: (d) => badge(d.state === 'delivered' ? 'succeeded' : d.state, d.state)},
        {label: 'Attempts', class: 'num', value: (d) => d.attempts},
        {label: 'Last answer', value: (d) => d.last_status ?? '', cell: (d) => (d.last_status ? `HTTP ${d.last_status}` : '—')},
        {label: 'Error', value: (d) => d.last_error, cell: (d) => d.last_error || '—'},
      ],
    }));
  }

  async function load() {
    try {
      const [inc, rules, hooks, dels] = await Promise.all([
        call('AlertService', 'ListIncidents', {state: showResolved.checked ? '' : 'firing', limit: 200}),
        call('AlertService', 'ListRules'),
        writer ? call('AlertService', 'ListWebhooks') : null,
        writer ? call('AlertService', 'ListDeliveries', {limit: 20}) : null,
      ]);
      if (!ctx.alive()) return;
      showError(err, null);
      paintIncidents(inc.incidents);
      paintRules(rules.rules);
      if (hooks) paintHooks(hooks.webhooks, dels.deliveries);
    } catch (e) { showError(err, e); }
  }

  await load();
  return {refresh: load, events: ['alert.']};
}
