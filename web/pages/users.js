// Users and API keys (admins only; the server refuses anyone else).
import { call, session } from '../app.js';
import {
  badge, busy, clear, confirmDialog, dataTable, errorBox, field, h, notify, section, secretBlock, select, showError,
  timeEl,
} from '../ui.js';

const ROLES = [['viewer', 'viewer: reads'], ['operator', 'operator: also deploys, enrolls'], ['admin', 'admin: everything']];
const KEY_EXPIRY = [['0', 'Never'], ['86400', '1 day'], ['2592000', '30 days'], ['31536000', '1 year']];

export default async function users(ctx) {
  const {root} = ctx;
  const usersBox = h('div');
  const keysBox = h('div');
  const usersErr = errorBox();
  const keysErr = errorBox();
  const sort = {users: {}, keys: {}};

  // --- create a user ---
  const uname = h('input', {name: 'username', required: true, autocomplete: 'off'});
  const urole = select('role', ROLES, 'viewer');
  const upass = h('input', {name: 'password', type: 'password', autocomplete: 'new-password'});
  const ubtn = h('button', {type: 'submit', class: 'primary'}, 'Create user');
  const uerr = errorBox();
  const udone = h('div', {'aria-live': 'polite'});
  const userForm = h('form', {class: 'inline', on: {submit: (ev) => {
    ev.preventDefault();
    busy(ubtn, uerr, async () => {
      const r = await call('UserService', 'CreateUser', {username: uname.value.trim(), role: urole.value, password: upass.value});
      clear(udone, h('div', {class: 'success'}, h('p', {}, `Created ${r.user.username} (${r.user.role}).`),
        r.password ? [secretBlock(`Password for ${r.user.username} (shown once; they choose their own at first login)`,
          r.password)] : null));
      notify(`Created user ${r.user.username}`);
      uname.value = ''; upass.value = '';
      await loadUsers();
    });
  }}}, field('Username', uname), field('Role', urole), field('Password', upass, 'empty: generate one'), ubtn);

  // --- create a key ---
  const kname = h('input', {name: 'key-name', required: true, autocomplete: 'off'});
  const krole = select('key-role', ROLES, 'viewer');
  const kexp = select('key-expires', KEY_EXPIRY, '0');
  const kbtn = h('button', {type: 'submit', class: 'primary'}, 'Create API key');
  const kerr = errorBox();
  const kdone = h('div', {'aria-live': 'polite'});
  const keyForm = h('form', {class: 'inline', on: {submit: (ev) => {
    ev.preventDefault();
    busy(kbtn, kerr, async () => {
      const k = await call('UserService', 'CreateKey', {name: kname.value.trim(), role: krole.value,
        expires_in: Number(kexp.value)});
      clear(kdone, h('div', {class: 'success'}, secretBlock(`API key ${k.name} (shown once)`, k.key),
        h('p', {class: 'hint'}, 'Send it as ', h('code', {}, 'Authorization: Bearer …'), ' or set FLEETD_API_KEY for the CLI.')));
      notify(`Created API key ${k.name}`);
      kname.value = '';
      await loadKeys();
    });
  }}}, field('Name', kname), field('Role', krole), field('Expires', kexp), kbtn);

  const showRevoked = h('input', {type: 'checkbox', name: 'revoked', on: {change: loadKeys}});

  root.append(h('h1', {tabindex: -1}, 'Users & API keys'),
    section('Users', userForm, uerr, udone, usersErr, usersBox),
    section('API keys', h('p', {class: 'hint'}, 'For scripts, the CLI and Prometheus. A key acts with its role, never more than its creator’s; '
      + 'disabling the creator suspends their keys, deleting them revokes the keys.'),
      keyForm, kerr, kdone,
      h('div', {class: 'actions'}, h('label', {}, showRevoked, ' Show revoked keys')), keysErr, keysBox));

  async function userAction(btn, fn) {
    await busy(btn, usersErr, async () => { await fn(); await loadUsers(); });
  }

  async function loadUsers() {
    try {
      const r = await call('UserService', 'ListUsers');
      if (!ctx.alive()) return;
      showError(usersErr, null);
      clear(usersBox, dataTable({
        caption: 'Users', rows: r.users, state: sort.users,
        columns: [
          {label: 'Username', value: (u) => u.username, cell: (u) => h('span', {}, u.username,
            u.id === session.me.id ? h('span', {class: 'muted'}, ' (you)') : null)},
          {label: 'Role', value: (u) => u.role, cell: (u) => {
            const sel = select(`role-${u.username}`, ROLES.map(([v]) => [v, v]), u.role);
            sel.setAttribute('aria-label', `Role of ${u.username}`);
            sel.addEventListener('change', () => userAction(sel, async () => {
              await call('UserService', 'UpdateUser', {username: u.username, role: sel.value});
              notify(`${u.username} is now ${sel.value}`);
            }));
            return sel;
          }},
          {label: 'State', value: (u) => (u.disabled ? 'disabled' : u.must_change_password ? 'must change password' : 'active'),
            cell: (u) => (u.disabled ? badge('revoked', 'disabled') : u.must_change_password
              ? badge('pending', 'must change password') : badge('active'))},
          {label: 'Created', value: (u) => Date.parse(u.created_at || 0), cell: (u) => timeEl(u.created_at)},
          {label: '', cell: (u) => h('span', {class: 'actions'},
            h('button', {type: 'button', class: 'small', on: {click: (ev) => userAction(ev.currentTarget, async () => {
              await call('UserService', 'UpdateUser', {username: u.username, disabled: !u.disabled});
              notify(`${u.username} ${u.disabled ? 'enabled' : 'disabled'}`);
            })}}, u.disabled ? 'Enable' : 'Disable'),
            h('button', {type: 'button', class: 'small', on: {click: async (ev) => {
              const pw = h('input', {name: 'password', type: 'password', autocomplete: 'new-password', required: true});
              const form = await confirmDialog({title: `Set a password for ${u.username}`, confirm: 'Set password',
                message: 'They must change it at their next login; their sessions end now.',
                body: field('New password', pw)});
              if (form) await userAction(ev.currentTarget, async () => {
                await call('UserService', 'SetPassword', {username: u.username, password: pw.value});
                notify(`Password of ${u.username} set`);
              });
            }}}, 'Set password'),
            h('button', {type: 'button', class: 'small danger', on: {click: async (ev) => {
              const ok = await confirmDialog({title: `Delete ${u.username}?`, danger: true, confirm: 'Delete',
                message: 'The user can no longer log in and their API keys are revoked. Their audit entries stay.'});
              if (ok) await userAction(ev.currentTarget, async () => {
                await call('UserService', 'DeleteUser', {username: u.username});
                notify(`Deleted ${u.username}`);
              });
            }}}, 'Delete'))},
        ],
      }));
    } catch (e) { showError(usersErr, e); }
  }

  async function loadKeys() {
    try {
      const r = await call('UserService', 'ListKeys', {include_revoked: showRevoked.checked});
      if (!ctx.alive()) return;
      showError(keysErr, null);
      clear(keysBox, dataTable({
        caption: 'API keys', rows: r.keys, state: sort.keys, empty: 'No API keys.',
        columns: [
          {label: 'Name', value: (k) => k.name},
          {label: 'ID', value: (k) => k.id, cell: (k) => h('code', {}, k.id)},
          {label: 'Role', value: (k) => k.role},
          {label: 'Created by', value: (k) => k.created_by || '',
            cell: (k) => h('span', {}, k.created_by || '—', k.suspended && !k.revoked_at ? [' ', badge('revoked', 'suspended')] : null)},
          {label: 'Created', value: (k) => Date.parse(k.created_at || 0), cell: (k) => timeEl(k.created_at)},
          {label: 'Expires', value: (k) => k.expires_at || '', cell: (k) => (k.expires_at ? timeEl(k.expires_at, false) : 'never')},
          {label: 'Last used', value: (k) => k.last_used_at || '', cell: (k) => timeEl(k.last_used_at)},
          {label: '', cell: (k) => (k.revoked_at ? badge('revoked') : h('button', {type: 'button', class: 'small danger',
            on: {click: async (ev) => {
              const ok = await confirmDialog({title: `Revoke key ${k.name}?`, danger: true, confirm: 'Revoke',
                message: 'It stops working at once.'});
              if (ok) await busy(ev.currentTarget, keysErr, async () => {
                await call('UserService', 'RevokeKey', {id: k.id});
                notify(`Revoked key ${k.name}`);
                await loadKeys();
              });
            }}}, 'Revoke'))},
        ],
      }));
    } catch (e) { showError(keysErr, e); }
  }

  await Promise.all([loadUsers(), loadKeys()]);
  return {refresh: () => Promise.all([loadUsers(), loadKeys()]), events: []};
}
