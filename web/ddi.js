// hawkBit DDI in the UI: the URL a DDI client polls, gateway tokens (Enrollment) and target tokens (a device).
// Tokens are shown once, right after they are made; the server keeps only their hash.
import { call, can, session } from './app.js';
import {
  badge, busy, clear, confirmDialog, dataTable, dl, errorBox, field, h, notify, parseTags, secretBlock, section,
  showError, tagChips, timeEl,
} from './ui.js';

/** The tenant DDI clients send (hawkBit's default is DEFAULT). */
export function ddiTenant() {
  return session.ddi?.tenant || 'DEFAULT';
}

/** Where devices reach this server: --public-url when it was given, else the address this page came from. */
function root() {
  return session.ddi?.public_url || location.origin;
}

export function ddiBaseUrl(controllerId) {
  return `${root()}/${encodeURIComponent(ddiTenant())}/controller/v1/${controllerId}`;
}

function where(controllerId) {
  return dl([
    ['Server URL', h('code', {}, root())],
    ['Tenant', h('code', {}, ddiTenant())],
    ['Controller ID', controllerId ? h('code', {}, controllerId) : 'the device\'s own id (it becomes its hardware id)'],
  ]);
}

// --- gateway tokens (Enrollment page) ------------------------------------------------------------

/** The "hawkBit gateway tokens" card: list, create (token shown once), revoke. Only admins may see them. */
export function gatewayTokensSection(ctx) {
  if (!can('admin')) {
    return {el: section('hawkBit gateway tokens', h('p', {class: 'hint'}, 'Gateway tokens let hawkBit DDI clients '
      + '(SWUpdate, rauc-hawkbit-updater, Zephyr) register themselves. They are admin credentials: ask an admin for one.')),
    load: async () => {}};
  }
  const state = {all: false, sort: {}};
  const desc = h('input', {name: 'gateway_description', placeholder: 'e.g. provisioning station, line 3'});
  const type = h('input', {name: 'gateway_device_type', placeholder: 'ddi', autocomplete: 'off'});
  const tags = h('input', {name: 'gateway_tags', placeholder: 'site=plant-3'});
  const createBtn = h('button', {type: 'submit', class: 'primary'}, 'Create gateway token');
  const createErr = errorBox();
  const created = h('div', {'aria-live': 'polite'});
  const listBox = h('div');
  const listErr = errorBox();
  const showAll = h('input', {type: 'checkbox', name: 'gateway_all',
    on: {change: () => { state.all = showAll.checked; load(); }}});

  const form = h('form', {'aria-label': 'Create a hawkBit gateway token', on: {submit: (ev) => {
    ev.preventDefault();
    busy(createBtn, createErr, async () => {
      const t = await call('DdiService', 'CreateGatewayToken', {description: desc.value.trim(),
        device_type: type.value.trim(), tags: parseTags(tags.value)});
      clear(created, h('div', {class: 'success'},
        h('p', {}, `Gateway token ${t.id} created. It is shown only now: copy it.`),
        secretBlock('Gateway token (shown once)', t.token),
        secretBlock('DDI base URL', ddiBaseUrl('<controller id>')),
        where(''),
        h('p', {class: 'hint'}, 'Configure the DDI client with this server URL, tenant and token (it sends '
          + '"Authorization: GatewayToken <token>"). The first poll of an unknown controller id registers it as an '
          + `active device of type ${t.device_type || 'ddi'}. Anyone with this token can act as any device: give it `
          + 'only to provisioning stations or gateways you control, and revoke it when they are done.')));
      notify(`Gateway token ${t.id} created`);
      desc.value = ''; type.value = ''; tags.value = '';
      await load();
    });
  }}},
  h('div', {class: 'grid2'},
    h('div', {}, field('Purpose', desc, 'what or who uses it'),
      field('Device type of the devices it registers', type, 'empty = ddi')),
    h('div', {}, field('Tags of the devices it registers', tags, 'key=value, separated by commas'))),
  h('div', {class: 'actions'}, createBtn), createErr, created);

  async function revoke(t, btn) {
    const ok = await confirmDialog({title: `Revoke gateway token ${t.id}?`, danger: true, confirm: 'Revoke',
      message: 'DDI clients using it are refused at once. Devices it registered stay registered; give them target '
        + 'tokens to keep them updating.'});
    if (ok) await busy(btn, listErr, async () => {
      await call('DdiService', 'RevokeGatewayToken', {id: t.id});
      notify(`Revoked gateway token ${t.id}`);
      await load();
    });
  }

  async function load() {
    try {
      const r = await call('DdiService', 'ListGatewayTokens', {include_revoked: state.all});
      if (!ctx.alive()) return;
      showError(listErr, null);
      clear(listBox, dataTable({
        caption: 'hawkBit gateway tokens', rows: r.tokens, state: state.sort,
        empty: state.all ? 'No gateway tokens yet.' : 'No active gateway tokens.',
        rowProps: (t) => ({dataset: {state: t.revoked_at ? 'revoked' : 'active'}}),
        columns: [
          {label: 'ID', value: (t) => t.id, cell: (t) => h('code', {}, t.id)},
          {label: 'Purpose', value: (t) => t.description, cell: (t) => t.description || h('span', {class: 'muted'}, '—')},
          {label: 'Device type', value: (t) => t.device_type || 'ddi'},
          {label: 'Tags', value: (t) => JSON.stringify(t.tags), cell: (t) => tagChips(t.tags)},
          {label: 'Created', value: (t) => Date.parse(t.created_at || 0),
            cell: (t) => h('span', {}, timeEl(t.created_at), t.created_by ? ` by ${t.created_by}` : '')},
          {label: 'State', value: (t) => (t.revoked_at ? 'revoked' : 'active'), cell: (t) => (t.revoked_at
            ? h('span', {}, badge('revoked'), ' ', timeEl(t.revoked_at)) : badge('active'))},
          {label: '', cell: (t) => (t.revoked_at ? '' : h('button', {type: 'button', class: 'small danger',
            'aria-label': `Revoke gateway token ${t.id}`, on: {click: (ev) => revoke(t, ev.currentTarget)}}, 'Revoke'))},
        ],
      }));
    } catch (e) { showError(listErr, e); }
  }

  const el = h('section', {class: 'card'}, h('h2', {}, 'hawkBit gateway tokens'),
    h('p', {class: 'hint'}, 'For devices that already run a hawkBit DDI client (SWUpdate suricatta, '
      + 'rauc-hawkbit-updater, Zephyr): a gateway token acts for every controller id of the tenant and registers '
      + 'unknown ones on their first poll. For one device, give it a target token on its page instead.'),
    form,
    h('h3', {}, 'Gateway tokens'),
    h('div', {class: 'actions'}, h('label', {}, showAll, ' Also show revoked gateway tokens')),
    listErr, listBox);
  return {el, load};
}

// --- target tokens (device page) -----------------------------------------------------------------

/** The "hawkBit DDI" card of a DDI device: how it is reached, and (admins) a new target token or revoking it. */
export function targetTokenSection(dev, onChange) {
  const cid = dev.ddi_controller_id;
  const name = dev.name;
  const err = errorBox();
  const shown = h('div', {'aria-live': 'polite'});
  let actions = null;
  if (can('admin')) {
    const newBtn = h('button', {type: 'button', class: 'primary'}, 'New target token');
    const revokeBtn = h('button', {type: 'button', class: 'danger'}, 'Revoke target token');
    newBtn.addEventListener('click', async () => {
      const ok = await confirmDialog({title: `New target token for ${name}?`, confirm: 'Create token',
        message: `This replaces the device's current target token: the old one stops working at once, so ${cid} `
          + 'cannot poll until its DDI client is configured with the new token.'});
      if (!ok) return;
      await busy(newBtn, err, async () => {
        const t = await call('DdiService', 'CreateTargetToken', {device: dev.id});
        clear(shown, h('div', {class: 'success'},
          h('p', {}, 'New target token created. It is shown only now: copy it. The previous one no longer works.'),
          secretBlock(`Target token for ${t.controller_id} (shown once)`, t.token),
          secretBlock('DDI base URL', ddiBaseUrl(t.controller_id)),
          h('p', {class: 'hint'}, 'The client sends it as "Authorization: TargetToken <token>"; it works for this '
            + 'controller id only.')));
        notify(`New target token for ${t.controller_id}`);
        await onChange?.();
      });
    });
    revokeBtn.addEventListener('click', async () => {
      const ok = await confirmDialog({title: `Revoke the target token of ${name}?`, danger: true, confirm: 'Revoke',
        message: `Polls from ${cid} are refused until an admin gives it a new token. The device stays registered.`});
      if (!ok) return;
      await busy(revokeBtn, err, async () => {
        const r = await call('DdiService', 'RevokeTargetToken', {device: dev.id});
        clear(shown, h('p', {class: 'success', role: 'status'}, r.revoked
          ? `Revoked the target token of ${r.controller_id}; its polls are refused from now on.`
          : `${r.controller_id} had no live target token; nothing to revoke.`));
        notify(r.revoked ? `Revoked the target token of ${r.controller_id}` : 'No live target token');
        await onChange?.();
      });
    });
    actions = [h('div', {class: 'actions'}, newBtn, revokeBtn), h('p', {class: 'hint'}, 'A new target token '
      + 'replaces the current one, which stops working at once. A token is shown only when it is made.')];
  }
  return section('hawkBit DDI',
    h('p', {}, badge('info', 'hawkBit DDI'), ' This device runs a hawkBit DDI client instead of the fleet agent: '
      + 'it polls fleetd and gets deployments, rollouts and rollbacks like any device.'),
    dl([
      ['Controller ID', h('code', {}, cid)],
      ['Tenant', h('code', {}, ddiTenant())],
      ['DDI base URL', h('code', {}, ddiBaseUrl(cid))],
    ]),
    actions, err, shown);
}
