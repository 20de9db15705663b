// Artifacts: the list, and the two-step upload (CreateUpload, then PUT the file with a progress bar).
import { call, can, href, putFile } from '../app.js';
import {
  busy, clear, dataTable, errorBox, field, fmtBytes, h, notify, section, select, showError, timeEl,
} from '../ui.js';

// "hello-1.2.0.tar.gz" → {name: "hello", version: "1.2.0"}: a guess the user can correct.
function guess(fileName) {
  const m = fileName.match(/^([a-z0-9][a-z0-9_.-]*?)[-_]v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)(?:[._-]|$)/i);
  return m ? {name: m[1].toLowerCase(), version: m[2]} : {name: fileName.split('.')[0].toLowerCase(), version: ''};
}

function uploadForm(onDone) {
  const file = h('input', {type: 'file', name: 'file', required: true});
  const name = h('input', {name: 'name', required: true, placeholder: 'e.g. hello', autocomplete: 'off'});
  const version = h('input', {name: 'version', required: true, placeholder: 'e.g. 1.0.0', autocomplete: 'off'});
  const kind = select('kind', [['app', 'app'], ['agent', 'agent'], ['firmware', 'firmware']], 'app');
  const types = h('input', {name: 'device_types', required: true, placeholder: 'linux-aarch64, linux-*, sim'});
  const format = select('format', [['raw', 'raw (the file as sent)'], ['rtos-image', 'RTOS image (wrapped and signed)']],
    'raw');
  const counter = h('input', {name: 'security_counter', type: 'number', min: 0, max: 4294967295, value: '0',
    inputmode: 'numeric'});
  const rtosFields = h('div', {hidden: true}, field('Format', format, 'an RTOS image is for microcontrollers running '
    + 'the fleetd RTOS shim; exactly one device type'),
  field('Security counter', counter, 'raise it only to stop devices from going back to older images'));
  kind.addEventListener('change', () => {
    rtosFields.hidden = kind.value !== 'firmware';
    if (rtosFields.hidden) format.value = 'raw';
  });
  const spec = h('textarea', {name: 'install_spec', rows: 4,
    placeholder: '{"command": ["python3", "app.py"], "restart": "on-failure", "health": {"grace_seconds": 30}}'});
  const bar = h('progress', {max: 100, value: 0, 'aria-label': 'Upload progress'});
  const pct = h('span', {class: 'mono'}, '0 %');
  const progressRow = h('div', {class: 'progress-row', hidden: true}, bar, pct);
  const live = h('p', {class: 'sr-only', 'aria-live': 'polite'});
  const err = errorBox();
  const done = h('div', {'aria-live': 'polite'});
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Upload');

  file.addEventListener('change', () => {
    const f = file.files[0];
    if (!f) return;
    const g = guess(f.name);
    if (!name.value) name.value = g.name;
    if (!version.value) version.value = g.version;
  });

  const form = h('form', {'aria-label': 'Upload an artifact', on: {submit: (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    busy(submit, err, async () => {
      clear(done);
      if (!f) throw new Error('choose the file to upload');
      let installSpec;
      if (spec.value.trim()) {
        try { installSpec = JSON.parse(spec.value); } catch (e) {
          throw new Error(`the install spec is not valid JSON (${e.message})`);
        }
      }
      const rtos = kind.value === 'firmware' && format.value === 'rtos-image';
      const sc = Number(counter.value || 0);
      if (rtos && (!Number.isInteger(sc) || sc < 0 || sc > 4294967295)) {
        throw new Error('the security counter must be a whole number from 0 to 4294967295');
      }
      const ticket = await call('ArtifactService', 'CreateUpload', {
        name: name.value.trim(), version: version.value.trim(), kind: kind.value, file_name: f.name, size: f.size,
        device_types: types.value.split(',').map((t) => t.trim()).filter(Boolean), install_spec: installSpec,
        ...(rtos ? {format: 'rtos-image', security_counter: sc} : {}),
      });
      progressRow.hidden = false;
      bar.value = 0;
      let lastSaid = -1;
      // The ticket's upload_url carries the server's public URL; the browser's own origin keeps the session cookie.
      const detail = await putFile(`v1/uploads/${encodeURIComponent(ticket.upload_id)}`, f, (loaded, total) => {
        const p = Math.floor((loaded / total) * 100);
        bar.value = p;
        pct.textContent = `${p} %`;
        if (p >= lastSaid + 25 || p === 100) { lastSaid = p; live.textContent = `Uploaded ${p} %`; }
      });
      bar.value = 100;
      pct.textContent = '100 %';
      const label = `${detail.name}@${detail.version}`;
      notify(`Uploaded ${label}`);
      clear(done, h('p', {class: 'success'}, `Stored ${label} (${fmtBytes(detail.size)}, signed). `,
        h('a', {href: href(`artifacts/${encodeURIComponent(detail.id)}`)}, 'Open it')));
      form.reset();
      rtosFields.hidden = true;
      await onDone();
    }).then(() => { if (err.hidden === false) progressRow.hidden = true; });
  }}},
  h('div', {class: 'grid2'},
    h('div', {}, field('File', file), field('Name', name, 'lowercase letters, digits and _.-'),
      field('Version', version, 'a semantic version: 1.4.0, 2.0.0-rc.1')),
    h('div', {}, field('Kind', kind), rtosFields,
      field('Device types', types, 'comma-separated; devices of these types may install it; '
        + '* stands for any run of characters (linux-* is every Linux board)'),
      h('details', {}, h('summary', {}, 'Install spec (optional, apps)'),
        field('Install spec as JSON', spec, 'Without one, the file itself is run.')))),
  h('div', {class: 'actions'}, submit), progressRow, live, err, done);
  return form;
}

/** "RTOS image, security counter 2" for firmware images; raw files say nothing more than "raw". */
export function formatCell(a) {
  if (a.format !== 'rtos-image') return h('span', {class: 'muted'}, 'raw');
  return h('span', {}, 'RTOS image', h('br'), h('small', {class: 'hint'}, `security counter ${a.security_counter ?? 0}`));
}

export default async function artifacts(ctx) {
  const {root} = ctx;
  const state = {sort: {}, name: ctx.query.get('name') || ''};
  const listBox = h('div');
  const listErr = errorBox();
  const nameFilter = h('input', {name: 'name', type: 'search', value: state.name, placeholder: 'component name'});
  root.append(h('h1', {tabindex: -1}, 'Artifacts'));
  if (can('operator')) root.append(section('Upload an artifact', uploadForm(load)));
  root.append(h('section', {class: 'card'}, h('h2', {}, 'All artifacts'),
    h('form', {class: 'inline', role: 'search', on: {submit: (ev) => { ev.preventDefault(); state.name = nameFilter.value.trim(); load(); }}},
      field('Component', nameFilter), h('button', {type: 'submit'}, 'Filter')),
    listErr, listBox));

  async function load() {
    ctx.setQuery({name: state.name});
    try {
      const r = await call('ArtifactService', 'ListArtifacts', {name: state.name});
      if (!ctx.alive()) return;
      showError(listErr, null);
      clear(listBox, dataTable({
        caption: 'Artifacts', rows: r.artifacts.slice().reverse(), state: state.sort,
        empty: state.name ? `No artifact named ${state.name}.`
          : 'No artifacts yet. Upload a program (an app) for your devices, or push one with '
            + '"fleetd artifacts push".',
        columns: [
          {label: 'Name', value: (a) => a.name, cell: (a) => h('a', {href: href(`artifacts/${encodeURIComponent(a.id)}`)}, a.name)},
          {label: 'Version', value: (a) => a.version, cell: (a) => h('code', {}, a.version)},
          {label: 'Kind', value: (a) => a.kind},
          {label: 'Format', value: (a) => (a.format === 'rtos-image' ? `rtos-image ${a.security_counter ?? 0}` : 'raw'),
            cell: formatCell},
          {label: 'Device types', value: (a) => a.device_types.join(', ')},
          {label: 'File', value: (a) => a.file_name},
          {label: 'Size', class: 'num', value: (a) => a.size, cell: (a) => fmtBytes(a.size)},
          {label: 'Uploaded', value: (a) => Date.parse(a.created_at || 0), cell: (a) => timeEl(a.created_at)},
        ],
      }));
    } catch (e) { showError(listErr, e); }
  }

  await load();
  return {refresh: load, events: []};
}
