// Login, and the password change (required after a first login with a generated password, or by choice).
import { call, enter, loggedIn, navigate, session } from '../app.js';
import { busy, clear, errorBox, field, h, notify, showError } from '../ui.js';

// The password just typed at login, kept in memory only until the required change is done.
let justTyped = null;

export function renderLogin(main, message) {
  const user = h('input', {name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none',
    spellcheck: 'false'});
  const pass = h('input', {name: 'password', type: 'password', autocomplete: 'current-password', required: true});
  const err = errorBox();
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Log in');
  const form = h('form', {class: 'login', on: {submit: (ev) => {
    ev.preventDefault();
    busy(submit, err, async () => {
      const answer = await call('UserService', 'Login', {username: user.value.trim(), password: pass.value});
      loggedIn(answer);
      justTyped = {username: answer.user.username, password: pass.value};
      await enter();
    });
  }}},
  h('h1', {tabindex: -1}, 'Log in to fleetd'),
  message ? h('p', {class: 'notice', role: 'status'}, message) : null,
  field('Username', user),
  field('Password', pass),
  err,
  h('div', {class: 'actions'}, submit),
  h('p', {class: 'hint'}, 'First start? The server printed the admin password once on its console. Lost it? Run ',
    h('code', {}, 'fleetd users passwd admin --data-dir DATA_DIR'), ' on the server.'));
  clear(main, h('div', {class: 'login-wrap'}, form));
  user.focus();
}

export function renderPasswordChange(main, {voluntary}) {
  const known = !voluntary && justTyped && justTyped.username === session.me?.name ? justTyped : null;
  const old = h('input', {name: 'old', type: 'password', autocomplete: 'current-password', required: true});
  const pw = h('input', {name: 'new', type: 'password', autocomplete: 'new-password', required: true});
  const again = h('input', {name: 'again', type: 'password', autocomplete: 'new-password', required: true});
  const err = errorBox();
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Change password');
  const form = h('form', {class: 'login', on: {submit: (ev) => {
    ev.preventDefault();
    if (pw.value !== again.value) { showError(err, new Error('the two new passwords differ; type the same one twice')); return; }
    busy(submit, err, async () => {
      const oldPassword = known ? known.password : old.value;
      await call('UserService', 'ChangePassword', {old_password: oldPassword, new_password: pw.value});
      // A new password ends all of the user's sessions, this one too: log in again with it.
      const answer = await call('UserService', 'Login', {username: session.me.name, password: pw.value});
      loggedIn(answer);
      justTyped = null;
      notify('Password changed');
      if (voluntary) navigate(''); else await enter();
    });
  }}},
  h('h1', {tabindex: -1}, voluntary ? 'Change your password' : 'Choose a new password'),
  voluntary ? null : h('p', {class: 'notice'}, `Welcome, ${session.me?.name}. Your password was generated for you; `
    + 'choose your own before you go on.'),
  known ? null : field('Current password', old),
  field('New password', pw, 'At least 10 characters, without your username.'),
  field('New password again', again),
  err,
  h('div', {class: 'actions'}, submit, voluntary ? h('a', {href: '#/', class: 'button'}, 'Cancel') : null));
  clear(main, h('div', {class: 'login-wrap'}, form));
  form.querySelector('input').focus();
}
