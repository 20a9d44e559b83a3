// blockfork's dashboard: plain JavaScript, no build step, nothing fetched
// from anywhere but this server's REST API (with the session cookie).
//
// The page is a list of views (VIEWS below). Each view names the API
// data it needs and renders one section from it; a later capability
// (devices, volumes, ...) adds its view to that list and nothing else.
'use strict';

const API = '/api/v1';
const REFRESH_MS = 2000;

// ------------------------------------------------------------ helpers

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function size(bytes) {
  if (bytes == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

function rate(bytesPerSec) {
  return bytesPerSec > 0 ? size(bytesPerSec) + '/s' : '–';
}

function when(unixSecs) {
  if (!unixSecs) return '–';
  return new Date(unixSecs * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function ago(unixMs) {
  const s = Math.max(0, Math.round((Date.now() - unixMs) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

// A bar: a fill level (coloured as it nears full), or with `progress` a
// job's progress (never alarming).
function bar(fraction, label, progress) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const level = progress ? '' : pct >= 90 ? 'crit' : pct >= 80 ? 'warn' : '';
  return `<div class="bar ${level}" role="progressbar" aria-valuenow="${pct.toFixed(0)}"` +
    ` aria-valuemin="0" aria-valuemax="100"><div style="width:${pct.toFixed(1)}%"></div>` +
    `<span>${esc(label ?? pct.toFixed(0) + ' %')}</span></div>`;
}

function table(headers, rows, empty) {
  if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
  return '<table><thead><tr>' + headers.map((h) => `<th>${esc(h)}</th>`).join('') +
    '</tr></thead><tbody>' + rows.map((r) => '<tr>' + r.map((c) => `<td>${c}</td>`).join('') +
    '</tr>').join('') + '</tbody></table>';
}

function button(label, action, args, kind) {
  return `<button class="${kind || ''}" data-action="${esc(action)}"` +
    ` data-args="${esc(JSON.stringify(args))}">${esc(label)}</button>`;
}

// ---------------------------------------------------------------- API

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { 'X-Blockfork-UI': '1', 'Accept': 'application/json' };
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  if (response.status === 401) {
    // The session ended (a restart, or it expired): back to the login.
    location.reload();
    throw new ApiError('signed out');
  }
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new ApiError(value && value.message ? value.message : `${method} ${path}: ${response.status}`);
  }
  return value;
}

const enc = encodeURIComponent;
const lunPath = (name) => name.split('/').map(enc).join('/');

// ------------------------------------------------------------- state

// What the views render from: refreshed together every REFRESH_MS.
const data = {
  pool: null, luns: [], snapshots: [], splits: [], jobs: [], igroups: [], maps: [],
  mirrors: null, events: [], lastEvent: 0, io: {}, ioRates: {}, ioCounting: true,
  devices: [], deviceJob: null, scrub: null,
};
let previousIo = null;

// Snapshot listings weigh each snapshot's exclusive space: they are read
// every SNAPSHOTS_EVERY refreshes, and after every action.
const SNAPSHOTS_EVERY = 5;
let ticks = 0;

async function load(full) {
  const optional = (p) => p.catch(() => null);
  const withSnapshots = full || ticks++ % SNAPSHOTS_EVERY === 0;
  const [pool, luns, snapshots, splits, jobs, igroups, maps, mirrors, io, events] =
    await Promise.all([
      api('GET', '/pool'), api('GET', '/luns'),
      withSnapshots ? api('GET', '/snapshots') : Promise.resolve(data.snapshots),
      api('GET', '/splits'), api('GET', '/jobs'), api('GET', '/igroups'),
      api('GET', '/lun-maps'), optional(api('GET', '/mirrors')), api('GET', '/io'),
      api('GET', `/events?since=${data.lastEvent}&limit=1000`),
    ]);
  Object.assign(data, { pool, luns, snapshots, splits, jobs, igroups, maps, mirrors });
  if (pool.devices > 0) {
    const [devices, deviceJob, scrub] = await Promise.all([
      api('GET', '/pool/devices'), api('GET', '/pool/devices/job'), api('GET', '/pool/scrub')]);
    Object.assign(data, { devices, deviceJob, scrub });
  }
  data.events = data.events.concat(events.events).slice(-200);
  data.lastEvent = events.last_id;
  data.ioCounting = io.counting;
  const now = {};
  for (const l of io.luns) now[l.lun] = l;
  data.ioRates = {};
  if (previousIo) {
    const secs = (io.time_ms - previousIo.time) / 1000;
    for (const [lun, t] of Object.entries(now)) {
      const p = previousIo.luns[lun];
      if (!p || secs <= 0) continue;
      data.ioRates[lun] = {
        readBps: (t.read_bytes - p.read_bytes) / secs,
        writeBps: (t.write_bytes - p.write_bytes) / secs,
        iops: (t.read_ops + t.write_ops + t.trim_ops + t.zero_ops + t.flush_ops -
          (p.read_ops + p.write_ops + p.trim_ops + p.zero_ops + p.flush_ops)) / secs,
      };
    }
  }
  previousIo = { time: io.time_ms, luns: now };
}

// ------------------------------------------------------------- views

function ioCell(lun) {
  const r = data.ioRates[lun];
  if (!data.ioCounting) return '<span class="muted">not counted</span>';
  if (!r || (r.iops < 0.5 && r.readBps <= 0 && r.writeBps <= 0)) return '<span class="muted">idle</span>';
  const parts = [`${r.iops.toFixed(0)} IOPS`];
  if (r.readBps > 0) parts.push(`read ${rate(r.readBps)}`);
  if (r.writeBps > 0) parts.push(`write ${rate(r.writeBps)}`);
  return `<span class="io">${parts.join(' · ')}</span>`;
}

const poolView = {
  id: 'pool',
  title: 'Pool',
  render() {
    const p = data.pool;
    const used = p.used_bytes / Math.max(1, p.capacity_bytes);
    const clones = data.luns.filter((l) => l.parent).length;
    const busiest = Object.entries(data.ioRates)
      .sort((a, b) => b[1].iops - a[1].iops).slice(0, 5)
      .filter(([, r]) => r.iops >= 0.5)
      .map(([lun]) => [esc(lun), ioCell(lun)]);
    return `<div class="cards">
      <div class="card"><h3>Capacity</h3>${bar(used, `${size(p.used_bytes)} of ${size(p.capacity_bytes)} used`)}
        <p class="muted">${size(p.free_bytes)} free · access ${esc(p.access)}</p></div>
      <div class="card stat"><h3>LUNs</h3><b>${p.luns}</b><span class="muted">${clones} clone(s)</span></div>
      <div class="card stat"><h3>Snapshots</h3><b>${p.snapshots}</b><span class="muted">${p.group_snapshots} group snapshot(s)</span></div>
      <div class="card stat"><h3>Jobs</h3><b>${p.jobs_running + data.splits.filter((s) => s.state === 'running').length}</b><span class="muted">running</span></div>
    </div>
    <h3>Busiest LUNs now</h3>
    ${table(['LUN', 'I/O'], busiest, data.ioCounting ? 'No I/O in the last seconds.' : 'The server counts no I/O (serve --no-io-metrics).')}`;
  },
};

// LUNs, their snapshots, and the clones of each snapshot, as one tree.
const lunsView = {
  id: 'luns',
  title: 'LUNs',
  render() {
    const byLun = {};
    for (const s of data.snapshots) (byLun[s.lun] ||= []).push(s);
    for (const list of Object.values(byLun)) list.sort((a, b) => a.epoch - b.epoch);
    const luns = Object.fromEntries(data.luns.map((l) => [l.name, l]));
    const splits = Object.fromEntries(data.splits.map((s) => [s.lun, s]));
    const clonesOf = {};
    for (const l of data.luns) if (l.parent) (clonesOf[l.parent] ||= []).push(l);
    const roots = data.luns.filter((l) => !l.parent || !luns[l.parent.split('@')[0]]);
    const lunNode = (l) => {
      const split = splits[l.name];
      const actions = [button('Snapshot', 'snapshot', { lun: l.name })];
      if (l.parent) {
        actions.push(split && split.state === 'running'
          ? button('Stop split', 'split-stop', { lun: l.name })
          : button(split ? 'Resume split' : 'Split', 'split-start', { lun: l.name }));
      }
      actions.push(button('Delete', 'delete-lun', { lun: l.name }, 'danger'));
      const splitInfo = split
        ? `<span class="split">${bar(split.progress, `split ${split.state} ${(split.progress * 100).toFixed(0)} %`, true)}</span>`
        : '';
      const moving = l.relayout_done_bytes == null ? ''
        : `<span class="badge">moving to ${esc(l.redundancy)} ${(100 * l.relayout_done_bytes / Math.max(1, l.size_bytes)).toFixed(0)} %</span>`;
      const reserve = l.reserve || l.snapshot_reserve_percent
        ? `<span class="badge">${l.reserve ? 'thick' : ''}${l.reserve && l.snapshot_reserve_percent ? ', ' : ''}${l.snapshot_reserve_percent ? `${l.snapshot_reserve_percent} % snapshot reserve` : ''}</span>` : '';
      const badges = (l.redundancy && l.redundancy !== 'none' ? `<span class="badge">${esc(l.redundancy)}</span>` : '') +
        reserve + moving +
        (l.replica ? '<span class="badge">mirror destination</span>' : '') +
        (l.maps.length ? `<span class="badge">mapped: ${esc(l.maps.join(', '))}</span>` : '');
      const snaps = (byLun[l.name] || []).map(snapNode).join('');
      return `<li class="lun" data-lun="${esc(l.name)}"><div class="node">
        <span class="kind">LUN</span><b class="name">${esc(l.name)}</b>${badges}
        <span class="muted">${size(l.size_bytes)}, ${size(l.allocated_bytes)} allocated</span>
        ${ioCell(l.name)}${splitInfo}<span class="actions">${actions.join('')}</span></div>
        ${snaps ? `<ul>${snaps}</ul>` : ''}</li>`;
    };
    const snapNode = (s) => {
      const full = `${s.lun}@${s.name}`;
      const clones = (clonesOf[full] || []).map(lunNode).join('');
      const held = s.holds.length ? `<span class="badge">held by ${esc(s.holds.join(', '))}</span>` : '';
      const group = s.group ? `<span class="badge">group ${esc(s.group)}</span>` : '';
      return `<li class="snapshot" data-snapshot="${esc(full)}"><div class="node">
        <span class="kind">snap</span><b class="name">${esc(s.name)}</b>${group}${held}
        <span class="muted">${when(s.created)}, ${size(s.exclusive_bytes)} exclusive</span>
        <span class="actions">${button('Clone', 'clone', { source: full })}${button('Delete', 'delete-snapshot', { lun: s.lun, snapshot: s.name }, 'danger')}</span>
        </div>${clones ? `<ul>${clones}</ul>` : ''}</li>`;
    };
    return `<div class="toolbar">${button('New LUN', 'create-lun', {}, 'primary')}</div>` +
      (roots.length ? `<ul class="tree">${roots.map(lunNode).join('')}</ul>`
        : '<p class="empty">No LUNs yet.</p>');
  },
};

const jobsView = {
  id: 'jobs',
  title: 'Jobs',
  render() {
    const rows = [];
    for (const s of data.splits) {
      rows.push(['clone split', esc(s.lun), esc(s.state), bar(s.progress, null, true),
        `${size(s.copied_bytes)} of ${size(s.total_bytes)}`, rate(s.rate_bytes_per_sec),
        esc(s.message || '')]);
    }
    for (const j of data.jobs) {
      rows.push([esc(j.kind), esc(j.lun), esc(j.state), bar(j.progress, null, true),
        `${size(j.freed_bytes)} freed`, '–', '']);
    }
    for (const m of data.mirrors || []) {
      if (!m.transfer) continue;
      const t = m.transfer;
      rows.push(['mirror transfer', esc(m.name), esc(m.state),
        bar(t.bytes_expected ? t.bytes / t.bytes_expected : 0, null, true),
        `${size(t.bytes)} of ~${size(t.bytes_expected)}`, rate(t.rate_bytes),
        t.eta_secs != null ? `ETA ${t.eta_secs} s` : '']);
    }
    return table(['Kind', 'Object', 'State', 'Progress', 'Done', 'Rate', 'Note'], rows,
      'No background jobs.');
  },
};

const mirrorsView = {
  id: 'mirrors',
  title: 'Mirrors',
  render() {
    if (data.mirrors === null) return '<p class="empty">Mirroring is not available on this server.</p>';
    const lag = (m) => {
      if (m.lag_secs == null) return '–';
      const over = m.lag_alert_secs != null && m.lag_secs > m.lag_alert_secs;
      return `<span class="${over ? 'warn' : ''}" title="alert over ${esc(m.lag_alert_secs ?? '–')} s">${m.lag_secs} s</span>`;
    };
    const rows = data.mirrors.map((m) => [esc(m.name), esc(m.peer), esc(m.state),
      lag(m), esc(m.common_snapshot || '–'),
      when(m.last_success), esc(m.last_error || '')]);
    return table(['Destination', 'Peer', 'State', 'Lag', 'Common snapshot', 'Last success', 'Last error'],
      rows, 'No mirrors on this server (it may be the source of some).');
  },
};

const accessView = {
  id: 'access',
  title: 'Access',
  render() {
    const groups = data.igroups.map((g) => [esc(g.name),
      esc([...g.addresses, ...g.cert_cns.map((c) => 'CN=' + c)].join(', ') || '–'),
      esc(g.luns.join(', ') || '–')]);
    const maps = data.maps.map((m) => [esc(m.lun), esc(m.igroup)]);
    return `<p class="muted">The pool is <b>${esc(data.pool.access)}</b>: ${data.pool.access === 'open'
      ? 'LUNs without maps are visible to every NBD client.'
      : 'a LUN is visible only to the igroups it is mapped to.'}</p>
      <div class="cols"><div><h3>Igroups</h3>${table(['Igroup', 'Members', 'LUNs'], groups, 'No igroups.')}</div>
      <div><h3>LUN maps</h3>${table(['LUN', 'Igroup'], maps, 'No maps.')}</div></div>`;
  },
};

const eventsView = {
  id: 'events',
  title: 'Events',
  render() {
    const rows = data.events.slice().reverse().slice(0, 100).map((e) => [
      `<span title="${esc(new Date(e.time_ms).toISOString())}">${ago(e.time_ms)}</span>`,
      `<span class="sev ${esc(e.severity)}">${esc(e.severity)}</span>`, esc(e.kind), esc(e.object),
      esc(e.message)]);
    return table(['When', 'Severity', 'Kind', 'Object', 'What happened'], rows, 'No events yet.');
  },
};

// A pool on devices: their state and errors, the scrub, and the device
// job (rebuild, removal, levelling).
const devicesView = {
  id: 'devices',
  title: 'Devices',
  render() {
    const p = data.pool;
    if (!p.devices) {
      return '<p class="muted">This pool is one data file. A pool on devices (<code>serve --device</code>) keeps LUNs mirrored, checksums every block, scrubs and rebuilds.</p>';
    }
    const rows = data.devices.map((d) => [
      esc(d.path),
      `<span class="sev ${d.state === 'online' ? 'info' : 'error'}">${esc(d.state)}</span>` +
        (d.reason ? ` <span class="muted">${esc(d.reason)}</span>` : ''),
      size(d.size_bytes), size(d.used_bytes), d.read_errors, d.write_errors, d.checksum_errors,
      d.repaired_blocks]);
    const s = data.scrub;
    const scrubText = s.state === 'never' ? 'never scrubbed'
      : `scrub ${s.state} ${(s.progress * 100).toFixed(0)} % · ${s.repaired_copies} repaired · ${s.lost_blocks} lost`;
    const scrubButton = s.state === 'running'
      ? button('Stop scrub', 'scrub-stop', {})
      : button(s.state === 'stopped' ? 'Resume scrub' : 'Start scrub', 'scrub-start', {});
    const j = data.deviceJob;
    const jobText = j.state === 'none' ? 'no rebuild, removal or levelling has run'
      : `${j.kind} ${j.state}: ${j.moved_segments} of ${j.total_segments} segment(s) moved` +
        (j.state === 'running' ? ` at ${rate(j.rate_bytes_per_sec)}` : '') +
        (j.skipped_blocks ? ` · ${j.skipped_blocks} block(s) skipped` : '') +
        (j.error ? ` · ${j.error}` : '');
    const damage = (p.damage || []).map((d) => [esc(d.lun + (d.snapshot ? '@' + d.snapshot : '')),
      `${d.offset_bytes}+${d.length_bytes}`]);
    return `<div class="cards">
      <div class="card stat"><h3>State</h3><b class="${p.state === 'online' ? '' : 'warn'}">${esc(p.state)}</b>
        <span class="muted">${p.devices} device(s), ${p.faulted_devices} faulted · new LUNs ${esc(p.redundancy)}</span></div>
      <div class="card"><h3>Scrub</h3>${bar(s.state === 'never' ? 0 : s.progress, scrubText, true)}
        <p>${scrubButton}</p></div>
      <div class="card"><h3>Device job</h3>${bar(j.state === 'none' ? 0 : j.progress, jobText, true)}</div>
    </div>
    ${table(['Device', 'State', 'Size', 'Used', 'Read errors', 'Write errors', 'Checksum errors', 'Repaired'], rows, 'No devices.')}
    ${damage.length ? '<h3>Lost (no good copy)</h3>' + table(['LUN', 'Bytes'], damage, '') : ''}`;
  },
};

// Every view of the page, in order. A new capability adds its view here.
const VIEWS = [poolView, lunsView, jobsView, devicesView, mirrorsView, accessView, eventsView];

// ------------------------------------------------------------ actions

// Asks with the page's dialog; resolves to the typed value (or true), or
// null when cancelled.
function ask({ title, body, label, value, ok, danger }) {
  const dialog = document.getElementById('dialog');
  document.getElementById('dialog-title').textContent = title;
  document.getElementById('dialog-body').innerHTML = body || '';
  const input = document.getElementById('dialog-input');
  const labelEl = document.getElementById('dialog-label');
  input.hidden = labelEl.hidden = !label;
  input.required = !!label;
  labelEl.textContent = label || '';
  input.value = value || '';
  const okButton = document.getElementById('dialog-ok');
  okButton.textContent = ok || 'OK';
  okButton.className = danger ? 'danger' : 'primary';
  return new Promise((resolve) => {
    dialog.onclose = () => {
      if (dialog.returnValue !== 'ok') return resolve(null);
      resolve(label ? input.value.trim() : true);
    };
    dialog.returnValue = '';
    dialog.showModal();
    if (label) input.select();
  });
}

function stamp() {
  return new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
}

const ACTIONS = {
  async 'create-lun'() {
    const name = await ask({ title: 'New LUN', label: 'Name', value: 'vol' + (data.luns.length + 1), ok: 'Next' });
    if (!name) return;
    const sz = await ask({ title: `Size of LUN "${name}"`, label: 'Size (like 10G, 512M)', value: '10G', ok: 'Create' });
    if (!sz) return;
    const m = /^(\d+)\s*([KMGTP]?)i?B?$/i.exec(sz);
    if (!m) throw new ApiError(`"${sz}" is not a size like 10G or 512M`);
    const shift = { '': 0, K: 10, M: 20, G: 30, T: 40, P: 50 }[m[2].toUpperCase()];
    await api('POST', '/luns', { name, size: Number(m[1]) * 2 ** shift });
  },
  async snapshot({ lun }) {
    const name = await ask({ title: `Snapshot of "${lun}"`, label: 'Snapshot name', value: 'snap-' + stamp(), ok: 'Take snapshot' });
    if (name) await api('POST', '/snapshots', { lun, name });
  },
  async clone({ source }) {
    const base = source.split('@')[0];
    const name = await ask({
      title: `Clone of "${source}"`,
      body: '<p>A writable LUN that shares every block with the snapshot until written (O(1)).</p>',
      label: 'Clone name', value: `${base}-clone`, ok: 'Create clone',
    });
    if (name) await api('POST', '/clones', { source, name, split: false });
  },
  async 'split-start'({ lun }) { await api('POST', '/splits/start', { lun }); },
  async 'scrub-start'() { await api('POST', '/pool/scrub/start'); },
  async 'scrub-stop'() { await api('POST', '/pool/scrub/stop'); },
  async 'split-stop'({ lun }) { await api('POST', '/splits/stop', { lun }); },
  async 'delete-lun'({ lun }) {
    const snaps = data.snapshots.filter((s) => s.lun === lun);
    const clones = data.luns.filter((l) => l.parent && l.parent.split('@')[0] === lun);
    let body = `<p>LUN <b>${esc(lun)}</b> and its data will be gone.</p>`;
    if (snaps.length) body += `<p>Its ${snaps.length} snapshot(s) go with it: <b>${esc(snaps.map((s) => s.name).join(', '))}</b>.</p>`;
    if (clones.length) body += `<p class="warn">Clone(s) <b>${esc(clones.map((c) => c.name).join(', '))}</b> read through its snapshots: the delete is refused until they are split or deleted.</p>`;
    const mirrorsUsing = (data.mirrors || []).filter((m) => m.name === lun);
    if (mirrorsUsing.length) body += '<p class="warn">It is a mirror destination: delete the mirror first.</p>';
    if (await ask({ title: `Delete LUN "${lun}"?`, body, ok: 'Delete', danger: true })) {
      await api('DELETE', `/luns/${lunPath(lun)}${snaps.length ? '?recursive=true' : ''}`);
    }
  },
  async 'delete-snapshot'({ lun, snapshot }) {
    const full = `${lun}@${snapshot}`;
    const clones = data.luns.filter((l) => l.parent === full);
    let body = `<p>Snapshot <b>${esc(full)}</b> will be gone; the space only it holds is reclaimed in the background.</p>`;
    if (clones.length) body += `<p class="warn">Clone(s) <b>${esc(clones.map((c) => c.name).join(', '))}</b> read through it: it disappears from lists now, and its blocks stay until they are split or deleted.</p>`;
    if (await ask({ title: `Delete snapshot "${full}"?`, body, ok: 'Delete', danger: true })) {
      await api('DELETE', `/snapshots/${enc(snapshot)}?lun=${enc(lun)}`);
    }
  },
};

function banner(message, kind) {
  const el = document.getElementById('banner');
  el.hidden = !message;
  el.className = 'banner ' + (kind || 'error');
  el.textContent = message || '';
}

document.addEventListener('click', async (event) => {
  const target = event.target.closest('button[data-action]');
  if (!target) return;
  const action = ACTIONS[target.dataset.action];
  if (!action) return;
  try {
    await action(JSON.parse(target.dataset.args));
    banner('');
    await refresh(true);
  } catch (e) {
    if (!(e instanceof ApiError) || e.message !== 'signed out') banner(e.message);
  }
});

// ------------------------------------------------------------ drawing

function layout() {
  document.getElementById('nav').innerHTML = VIEWS.map((v) =>
    `<a href="#${v.id}">${esc(v.title)}</a>`).join('');
  document.getElementById('views').innerHTML = VIEWS.map((v) =>
    `<section id="${v.id}"><h2>${esc(v.title)}</h2><div class="content"></div></section>`).join('');
}

function draw() {
  const p = data.pool;
  document.getElementById('capacity').innerHTML =
    bar(p.used_bytes / Math.max(1, p.capacity_bytes), `pool ${size(p.used_bytes)} / ${size(p.capacity_bytes)}`);
  for (const v of VIEWS) {
    const el = document.querySelector(`#${v.id} .content`);
    try {
      el.innerHTML = v.render();
    } catch (e) {
      el.innerHTML = `<p class="error">This view failed to draw: ${esc(e.message)}</p>`;
    }
  }
}

let refreshing = null;
async function refresh(full) {
  // One refresh at a time; an action's refresh waits for the timer's.
  while (refreshing) await refreshing;
  refreshing = (async () => {
    try {
      await load(full);
      draw();
      const status = document.getElementById('status');
      status.textContent = 'live · ' + new Date().toLocaleTimeString();
      status.className = 'status ok';
    } catch (e) {
      const status = document.getElementById('status');
      status.textContent = 'server unreachable: ' + e.message;
      status.className = 'status bad';
    }
  })();
  try { await refreshing; } finally { refreshing = null; }
}

layout();
refresh();
setInterval(refresh, REFRESH_MS);
