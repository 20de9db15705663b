// Enrollment: join tokens (create with the install one-liner, list, revoke), claiming pending devices, and
// hawkBit DDI gateway tokens.
import { call, has, href } from '../app.js';
import { gatewayTokensSection } from '../ddi.js';
import {
  badge, busy, clear, confirmDialog, dataTable, errorBox, field, h, notify, parseTags, section, secretBlock, select,
  showError, tagChips, timeEl,
} from '../ui.js';
import { qrSvg } from '../qr.js';
import { claimDevice } from './devices.js';

function qrFigure(token) {
  const svg = qrSvg(token, 'QR code of the join token');
  if (!svg) return null;
  return h('figure', {class: 'qr-fig'}, svg,
    h('figcaption', {class: 'hint'}, 'The join token as a QR code, for devices or provisioning tools with a camera.'));
}

const EXPIRY = [['3600', '1 hour'], ['86400', '24 hours'], ['604800', '7 days'], ['2592000', '30 days'], ['0', 'Never']];

function tokenState(t) {
  if (t.revoked_at) return 'revoked';
  if (t.expires_at && Date.parse(t.expires_at) < Date.now()) return 'expired';
  if (t.max_uses && t.uses >= t.max_uses) return 'used up';
  return 'active';
}

export default async function enrollment(ctx) {
  const {root} = ctx;
  const state = {all: false, sort: {}};

  // --- create a token ---
  const desc = h('input', {name: 'description', placeholder: 'e.g. living-room Pis'});
  const tags = h('input', {name: 'tags', placeholder: 'site=home'});
  const uses = h('input', {name: 'uses', type: 'number', min: 0, value: '0', inputmode: 'numeric'});
  const expires = select('expires', EXPIRY, '86400');
  const createBtn = h('button', {type: 'submit', class: 'primary'}, 'Create join token');
  const createErr = errorBox();
  const created = h('div', {'aria-live': 'polite'});
  const createForm = h('form', {on: {submit: (ev) => {
    ev.preventDefault();
    busy(createBtn, createErr, async () => {
      const n = Number(uses.value || 0);
      if (!Number.isInteger(n) || n < 0) throw new Error('uses must be a whole number, 0 for unlimited');
      const t = await call('EnrollmentService', 'CreateToken', {description: desc.value.trim(), tags: parseTags(tags.value),
        uses: n, expires_in: Number(expires.value)});
      clear(created, h('div', {class: 'success'},
        h('p', {}, 'Token created. It is shown only now: copy it or the install command.'),
        secretBlock('Install command (run on the device as root or as a user who may sudo)', t.install_command),
        secretBlock('Join token', t.token),
        qrFigure(t.token),
        h('p', {class: 'hint'}, 'The device downloads the agent from this server, enrolls with the token and shows up '
          + 'on the Devices page. The command pins this server\'s TLS key, so it cannot be swapped on the way.')));
      notify('Join token created');
      desc.value = ''; tags.value = '';
      await loadTokens();
    });
  }}},
  h('div', {class: 'grid2'},
    h('div', {}, field('Description', desc), field('Tags for its devices', tags, 'key=value, separated by commas')),
    h('div', {}, field('Uses', uses, '0 = unlimited'), field('Expires after', expires))),
  h('div', {class: 'actions'}, createBtn), createErr, created);

  // --- claim by code ---
  const code = h('input', {name: 'claim_code', placeholder: 'ABCD-EFGH', autocomplete: 'off', autocapitalize: 'characters',
    spellcheck: 'false', size: 12});
  const claimName = h('input', {name: 'name', placeholder: 'optional'});
  const claimBtn = h('button', {type: 'submit', class: 'primary'}, 'Claim');
  const claimErr = errorBox();
  const claimDone = h('div', {'aria-live': 'polite'});
  const claimForm = h('form', {class: 'inline', on: {submit: (ev) => {
    ev.preventDefault();
    busy(claimBtn, claimErr, async () => {
      if (!code.value.trim()) throw new Error('type the claim code the device shows');
      const d = await call('EnrollmentService', 'ClaimDevice', {claim_code: code.value.trim(), name: claimName.value.trim()});
      clear(claimDone, h('p', {class: 'success'}, 'Claimed ', h('a', {href: href(`devices/${encodeURIComponent(d.id)}`)}, d.name), '.'));
      notify(`Claimed ${d.name}`);
      code.value = ''; claimName.value = '';
      await loadPending();
    });
  }}}, field('Claim code', code), field('Name', claimName), claimBtn);

  const pendingBox = h('div');
  const tokensBox = h('div');
  const listErr = errorBox();
  const showAll = h('input', {type: 'checkbox', name: 'all', on: {change: () => { state.all = showAll.checked; loadTokens(); }}});

  root.append(h('h1', {tabindex: -1}, 'Enrollment'),
    section('Add devices with a join token', h('p', {class: 'hint'}, 'A device that enrolls with a token is active at once.'),
      createForm),
    section('Claim a pending device', h('p', {class: 'hint'}, 'A device that starts without a token waits as '
      + 'pending and shows a claim code.'), claimForm, claimErr, claimDone, pendingBox),
    h('section', {class: 'card'}, h('h2', {}, 'Join tokens'),
      h('div', {class: 'actions'}, h('label', {}, showAll, ' Also show expired, used-up and revoked tokens')),
      listErr, tokensBox));
  const gateway = has('DdiService') ? gatewayTokensSection(ctx) : null;
  if (gateway) root.append(gateway.el);

  async function loadTokens() {
    try {
      const r = await call('EnrollmentService', 'ListTokens', {include_inactive: state.all});
      if (!ctx.alive()) return;
      showError(listErr, null);
      clear(tokensBox, dataTable({
        caption: 'Join tokens', rows: r.tokens, state: state.sort,
        empty: state.all ? 'No join tokens yet.' : 'No active join tokens. Create one above.',
        columns: [
          {label: 'ID', value: (t) => t.id, cell: (t) => h('code', {}, t.id)},
          {label: 'Description', value: (t) => t.description, cell: (t) => t.description || h('span', {class: 'muted'}, '—')},
          {label: 'Tags', value: (t) => JSON.stringify(t.tags), cell: (t) => tagChips(t.tags)},
          {label: 'Uses', class: 'num', value: (t) => t.uses, cell: (t) => `${t.uses} / ${t.max_uses ?? '∞'}`},
          {label: 'Expires', value: (t) => (t.expires_at ? Date.parse(t.expires_at) : Infinity),
            cell: (t) => (t.expires_at ? timeEl(t.expires_at, false) : 'never')},
          {label: 'State', value: tokenState, cell: (t) => badge(tokenState(t) === 'active' ? 'active' : 'revoked', tokenState(t))},
          {label: 'Created', value: (t) => Date.parse(t.created_at), cell: (t) => timeEl(t.created_at)},
          {label: '', cell: (t) => (tokenState(t) === 'active' ? h('button', {type: 'button', class: 'small danger', on: {click: async (ev) => {
            const ok = await confirmDialog({title: `Revoke token ${t.id}?`, danger: true, confirm: 'Revoke',
              message: 'No new device can enroll with it; devices that did stay enrolled.'});
            if (ok) await busy(ev.currentTarget, listErr, async () => {
              await call('EnrollmentService', 'RevokeToken', {id: t.id});
              notify(`Revoked token ${t.id}`);
              await loadTokens();
            });
          }}}, 'Revoke') : '')},
        ],
      }));
    } catch (e) { showError(listErr, e); }
  }

  async function loadPending() {
    try {
      const r = await call('DeviceAdminService', 'ListDevices', {status: 'pending', limit: 100});
      if (!ctx.alive()) return;
      clear(pendingBox, r.devices.length ? [h('h3', {}, `Pending devices (${r.total})`), dataTable({
        caption: 'Pending devices', rows: r.devices, state: {},
        columns: [
          {label: 'Name', value: (d) => d.name, cell: (d) => h('a', {href: href(`devices/${encodeURIComponent(d.id)}`)}, d.name)},
          {label: 'Type', value: (d) => d.device_type},
          {label: 'Claim code', value: (d) => d.claim_code, cell: (d) => h('span', {class: 'claim'}, d.claim_code)},
          {label: 'Address', value: (d) => d.last_addr || ''},
          {label: 'Registered', value: (d) => Date.parse(d.created_at), cell: (d) => timeEl(d.created_at)},
          {label: '', cell: (d) => h('button', {type: 'button', class: 'small primary', on: {click: async (ev) => {
            await busy(ev.currentTarget, claimErr, async () => { if (await claimDevice(d)) await loadPending(); });
          }}}, 'Claim')},
        ],
      })] : h('p', {class: 'empty'}, 'No device is waiting to be claimed.'));
    } catch (e) { showError(claimErr, e); }
  }

  const loadAll = () => Promise.all([loadTokens(), loadPending(), gateway?.load()]);
  await loadAll();
  return {refresh: loadAll, events: ['device.']};
}
