// One artifact: its metadata, signed manifest and signatures, where it is deployed; deploy or delete it.
import { call, can, has, href, navigate } from '../app.js';
import {
  badge, busy, clear, confirmDialog, dl, errorBox, field, fmtBytes, h, notify, parseTags, section, timeEl,
} from '../ui.js';

function pretty(manifest) {
  try { return JSON.stringify(JSON.parse(manifest), null, 2); } catch { return manifest; }
}

export default async function artifact(ctx) {
  const {root, params} = ctx;
  const body = h('div');
  const err = errorBox();
  root.append(h('p', {class: 'crumbs'}, h('a', {href: href('artifacts')}, '← Artifacts')), err, body);
  let a = null;
  let deployEl = null; // built once, so a repaint keeps what is typed in it

  function deployForm() {
    const tags = h('input', {name: 'tags', placeholder: 'site=lab'});
    const ids = h('input', {name: 'devices', placeholder: 'device ids or names, comma-separated'});
    const btn = h('button', {type: 'submit', class: 'primary'}, 'Deploy now');
    const ferr = errorBox();
    const label = `${a.name}@${a.version}`;
    return section('Deploy',
      h('p', {class: 'hint'}, `Installs ${label} at once on every matching active device of type `
        + `${a.device_types.join(' or ')}${a.device_types.some((t) => t.includes('*')) ? ' (* is any run of characters)' : ''}.`, has('RolloutService') ? [' For a staged update, ',
        h('a', {href: href('rollouts', {artifact: label})}, 'start a rollout'), '.'] : null),
      h('form', {class: 'inline', on: {submit: async (ev) => {
        ev.preventDefault();
        let t;
        try { t = parseTags(tags.value); } catch (e) { ferr.hidden = false; ferr.textContent = e.message; return; }
        const list = ids.value.split(',').map((x) => x.trim()).filter(Boolean);
        const what = [list.length ? `${list.length} device${list.length === 1 ? '' : 's'}` : null,
          Object.keys(t).length ? `devices tagged ${tags.value}` : null].filter(Boolean).join(' and ') || 'no device';
        const ok = await confirmDialog({title: `Deploy ${label}?`, confirm: 'Deploy', message: `Install it on ${what}.`});
        if (!ok) return;
        await busy(btn, ferr, async () => {
          const r = await call('DeviceAdminService', 'Deploy', {artifact: a.id, tags: t, device_ids: list});
          notify(`${r.action_ids.length} install action${r.action_ids.length === 1 ? '' : 's'} queued`);
          tags.value = ''; ids.value = '';
          await refresh();
        });
      }}}, field('Devices with tags', tags), field('Or devices', ids), btn), ferr);
  }

  function paint() {
    const d = a.deployment || {};
    const spec = a.install_spec;
    clear(body,
      h('div', {class: 'page-head'}, h('h1', {tabindex: -1}, `${a.name} `, h('code', {}, a.version)), badge('info', a.kind),
        a.format === 'rtos-image' ? badge('info', 'RTOS image') : null),
      h('div', {class: 'grid2'},
        section('Artifact', dl([
          ['ID', h('code', {}, a.id)], ['Device types', a.device_types.join(', ')],
          ['Format', a.format === 'rtos-image' ? 'RTOS image (signed by the server, checked by the RTOS shim)' : 'raw'],
          a.format === 'rtos-image' ? ['Security counter', h('span', {}, String(a.security_counter ?? 0),
            h('small', {class: 'hint'}, ' a device that confirmed this image refuses images with a lower counter'))]
            : null,
          ['File', a.file_name],
          ['Size', `${fmtBytes(a.size)} (${a.size} bytes)`], ['SHA-256', h('code', {}, a.sha256)],
          ['SHA-1', a.sha1 ? h('code', {}, a.sha1) : null], ['MD5', a.md5 ? h('code', {}, a.md5) : null],
          ['Uploaded', timeEl(a.created_at, false)], ['By', a.created_by],
          ['Download', h('a', {href: `v1/blobs/${a.sha256}`, download: a.file_name}, a.file_name)],
        ])),
        section('Where it is deployed', dl([
          ['Installed on', `${d.installed_count || 0} device${d.installed_count === 1 ? '' : 's'}`],
          ['Open actions', String(d.open_actions || 0)],
          ['Actions by state', Object.keys(d.actions || {}).length ? h('span', {class: 'chips'},
            Object.entries(d.actions).map(([st, n]) => h('span', {}, badge(st), ` ${n}`))) : 'none'],
        ]), (d.installed_on || []).length ? [h('h3', {}, 'Devices running it'), h('ul', {}, d.installed_on.map((id) =>
          h('li', {}, h('a', {href: href(`devices/${encodeURIComponent(id)}`)}, id))))] : null)),
      can('operator') ? (deployEl ||= deployForm()) : null,
      section('Signed manifest',
        h('p', {class: 'hint'}, 'Devices verify this manifest\'s Ed25519 signature with the fleet signing key they '
          + 'pinned at enrollment, then its size and SHA-256, before installing.'),
        h('pre', {tabindex: 0, 'aria-label': 'Manifest'}, h('code', {}, pretty(a.manifest))),
        dl([['Signature (Ed25519, base64)', h('code', {}, a.signature || '—')],
          ['Offline signatures', (a.offline_signatures || []).length
            ? h('ul', {}, a.offline_signatures.map((sg) => h('li', {}, 'key ', h('code', {}, sg.public_key))))
            : 'none']])),
      spec ? section('Install spec', h('pre', {tabindex: 0}, h('code', {}, JSON.stringify(spec, null, 2)))) : null,
      can('admin') ? section('Delete', h('p', {class: 'hint'}, 'Refused while a device runs it or an action refers to it.'),
        h('button', {type: 'button', class: 'danger', on: {click: async (ev) => {
          const btn = ev.currentTarget;
          const ok = await confirmDialog({title: `Delete ${a.name}@${a.version}?`, danger: true, confirm: 'Delete',
            message: 'The artifact and its file are removed for good.'});
          if (ok) await busy(btn, err, async () => {
            await call('ArtifactService', 'DeleteArtifact', {id: a.id});
            notify(`Deleted ${a.name}@${a.version}`);
            navigate('artifacts');
          });
        }}}, 'Delete artifact')) : null);
  }

  async function refresh() {
    const next = await call('ArtifactService', 'GetArtifact', {id: params.id});
    if (!ctx.alive()) return;
    const changed = JSON.stringify(next) !== JSON.stringify(a);
    a = next;
    if (changed) paint();
  }

  await refresh();
  return {refresh, events: ['action.']};
}
