// The device page's terminal (docs/remote-access.md, "The web UI's terminal"): xterm.js on a remote session's
// WebSocket. Loaded by terminal.html, which the device page frames at /v1/remote/terminal#DEVICE_ID. The session is
// asked for with the operator's own login (its cookie and CSRF token); the single-use token it gives goes first on
// the WebSocket, then terminal bytes both ways and {"resize": [cols, rows]} as the frame's size changes.
import { Terminal } from './vendor/xterm/xterm.mjs';
import { FitAddon } from './vendor/xterm/addon-fit.mjs';

const statusEl = document.getElementById('term-status');
const box = document.getElementById('term');
const deviceId = decodeURIComponent(location.hash.slice(1));

function say(text, bad = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle('bad', bad);
}

async function askSession(cols, rows) {
  const r = await fetch('/v1/remote/sessions', {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': localStorage.getItem('fleetd.csrf') || ''},
    body: JSON.stringify({device_id: deviceId, kind: 'terminal', cols, rows}),
  });
  const body = await r.json().catch(() => ({message: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(body.message || `HTTP ${r.status}`);
  return body;
}

async function start() {
  if (!deviceId) { say('No device: open the terminal from a device\'s page.', true); return; }
  const term = new Terminal({cursorBlink: true, scrollback: 5000, fontFamily: 'ui-monospace, monospace'});
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  let grant;
  try {
    grant = await askSession(term.cols, term.rows);
  } catch (e) {
    say(`Cannot open a terminal: ${e.message}`, true);
    return;
  }
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${grant.path}`);
  ws.binaryType = 'arraybuffer';
  let open = false;
  let ended = false;
  const enc = new TextEncoder();
  const send = (data) => { if (open && ws.readyState === WebSocket.OPEN) ws.send(data); };
  ws.onopen = () => ws.send(JSON.stringify({token: grant.token}));
  ws.onmessage = (m) => {
    if (typeof m.data !== 'string') { term.write(new Uint8Array(m.data)); return; }
    const ctl = JSON.parse(m.data);
    if (ctl.opened) {
      open = true;
      say(`Connected as ${ctl.user}. Closing this terminal hangs up its shell.`);
      term.focus();
    } else if (ctl.error) {
      ended = true;
      say(`Cannot open a terminal: ${ctl.error}`, true);
    } else if ('exit' in ctl) {
      ended = true;
      say(`The shell exited with status ${ctl.exit}.`);
    } else if (ctl.closed) {
      ended = true;
      say(`The session ended: ${ctl.closed}`, true);
    }
  };
  ws.onclose = () => {
    open = false;
    if (!ended) say('The connection to the server closed.', true);
  };
  term.onData((d) => send(enc.encode(d)));
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({cols, rows}) => send(JSON.stringify({resize: [cols, rows]})));
  new ResizeObserver(() => fit.fit()).observe(box);
}

start();
