// The console's front end: one page per view, each fed by the server's
// event stream (/api/events). Nothing is fetched from elsewhere; the DOM is
// built with createElement (never innerHTML), so no text from a service is
// ever parsed as markup.

const main = document.getElementById('main');
const flash = document.getElementById('flash');
const live = document.getElementById('live');

// What the browser test reads: each render's view, the server's time of
// its data and the page's time of the DOM update (both Unix ms, one clock
// on one machine), and the replacements' step counts at that moment.
window.__console = { renders: [] };

// h builds an element: h('td', {class: 'x'}, 'text', child, …).
function h(tag, attrs, ...kids) {
  const svg = ['svg', 'g', 'rect', 'line', 'text', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  // A <pre> scrolls when long: keyboard users must be able to reach it.
  if (tag === 'pre') el.setAttribute('tabindex', '0');
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

const num = (v) => Number(v || 0);
const short = (id) => (id || '').slice(0, 8);
const strip = (v, prefix) => (v || '').replace(prefix, '') || '—';
const when = (ts) => (ts ? new Date(ts).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '—');
const dur = (d) => {
  if (!d) return '—';
  const s = parseFloat(d);
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};
const table = (head, rows, attrs) => h('table', attrs, h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
  h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))));
const kv = (pairs) => h('dl', { class: 'kv' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));

// ---- routing and the event stream ----

let source = null;

function route() {
  const [, view = 'rack', id = ''] = (location.hash || '#/rack').split('/');
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${view}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (source) source.close();
  main.replaceChildren(h('h1', {}, 'Loading…'));
  live.textContent = 'connecting…';
  const q = new URLSearchParams({ view });
  if (id) q.set('id', decodeURIComponent(id));
  source = new EventSource(`/api/events?${q}`);
  source.addEventListener('snapshot', (ev) => {
    const env = JSON.parse(ev.data);
    document.getElementById('identity').textContent = env.identity || '—';
    document.getElementById('actions-identity').textContent = env.actionsIdentity || '—';
    live.textContent = `live, updated ${new Date(env.at).toLocaleTimeString()}`;
    render(env);
    const rec = { view: env.view, at: env.at, shown: Date.now(), bytes: new TextEncoder().encode(ev.data).length };
    if (env.view === 'replacements' && env.data) {
      rec.requests = (env.data.requests || []).map((g) => ({ id: g.replacement.replacementId, counts: g.replacement.stepCounts || {} }));
    }
    window.__console.renders.push(rec);
  });
  source.onerror = () => { live.textContent = 'reconnecting…'; };
}

function render(env) {
  const views = { rack, replacements, volume, saga, health };
  if (env.error) {
    main.replaceChildren(h('h1', {}, title(env.view)),
      h('p', { class: 'state-bad', 'data-error-code': env.error.code }, `${env.error.code}: ${env.error.message}`));
    return;
  }
  const fn = views[env.view];
  main.replaceChildren(...[].concat(fn(env.data || {}, env.id || '')).flat(Infinity).filter((x) => x !== null && x !== undefined && x !== false));
}

function title(view) {
  return { rack: 'Rack', replacements: 'Replacements', volume: 'Volumes', saga: 'Sagas', health: 'Health' }[view] || view;
}

// ---- actions ----

function say(kind, text) {
  flash.className = kind;
  flash.textContent = text;
}

async function call(name, id, reason) {
  const resp = await fetch(`/api/actions/${name}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Storagecp-Console': '1' },
    body: JSON.stringify({ id, reason }),
  });
  const body = await resp.json();
  return body;
}

// confirmThen shows what an action will do and runs it only once the
// operator confirms; the service's answer, refusal included, is shown.
function confirmThen(label, id, body) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = label;
  document.getElementById('confirm-body').replaceChildren(...[].concat(body));
  dlg.returnValue = '';
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok' ? document.getElementById('confirm-reason').value : null), { once: true });
  });
}

async function act(name, id, label, body) {
  const reason = await confirmThen(label, id, body || h('p', {}, `${label} ${id}?`));
  if (reason === null) return;
  const res = await call(name, id, reason);
  if (res.error) say('error', `Refused (${name} ${short(id)} as ${res.identity || '?'}): ${res.error.code}: ${res.error.message}`);
  else say('ok', `${name} ${short(id)}: done (as ${res.identity})`);
}

async function expunge(disk) {
  say('', '');
  const prev = await call('preview-expunge', disk.diskId, '');
  if (prev.error) {
    say('error', `Preview refused: ${prev.error.code}: ${prev.error.message}`);
    return;
  }
  const p = prev.result || {};
  const body = [
    h('p', {}, `Expunging disk ${disk.diskId} on sled ${disk.sledId} would replace:`),
    kv([
      ['read-only targets', (p.readOnlyTargets || []).length],
      ['rw regions', (p.readWriteRegions || []).length],
      ['capacity', `${p.capacityOk ? 'ok' : 'NOT enough'} — ${p.capacityDetail || ''}`],
      ['data loss', p.dataLoss ? 'YES: some data would have no surviving copy' : 'none'],
    ]),
  ];
  await act('expunge', disk.diskId, `Expunge disk ${short(disk.diskId)}`, body);
}

// ---- rack ----

function requestState(r) {
  return strip(r.readOnlyState, 'READ_ONLY_REPLACEMENT_STATE_') !== '—'
    ? strip(r.readOnlyState, 'READ_ONLY_REPLACEMENT_STATE_') : strip(r.regionState, 'REGION_REPLACEMENT_STATE_');
}

function rack(data) {
  const disks = (data.disks && data.disks.disks) || [];
  const reps = (data.replacements && data.replacements.replacements) || [];
  const datasetOf = data.datasetOf || {};
  const bySled = new Map();
  for (const d of disks) {
    if (!bySled.has(d.sledId)) bySled.set(d.sledId, []);
    bySled.get(d.sledId).push(d);
  }
  const out = [h('h1', {}, `Rack: ${bySled.size} sleds, ${disks.length} disks`),
    h('p', { class: 'muted' }, 'Green: in service; red: expunged or failed; amber: not provisioned. The bar is the share of capacity reserved by regions.')];
  const placed = new Set(disks.map((d) => d.datasetId).filter(Boolean));
  const unplaced = reps.filter((r) => !placed.has(datasetOf[r.replacementId]));
  for (const [sled, ds] of [...bySled.entries()].sort()) {
    out.push(h('section', { class: 'sled', 'aria-label': `sled ${sled}` }, h('h2', {}, `Sled ${sled}`),
      h('ul', { class: 'grid' }, ds.sort((a, b) => a.diskId.localeCompare(b.diskId)).map((d) => diskCell(d, reps, datasetOf)))));
  }
  if (unplaced.length) {
    out.push(h('h2', {}, `Requests whose disk is unknown (${unplaced.length})`),
      h('p', { class: 'muted' }, 'Their old region was deleted before this console first saw them.'),
      h('ul', {}, unplaced.map((r) => h('li', {}, h('a', { href: '#/replacements', title: r.replacementId }, `${short(r.replacementId)} (${requestState(r)})`)))));
  }
  return out;
}

function diskCell(d, reps, datasetOf) {
  const policy = strip(d.policy, 'POLICY_').toLowerCase();
  const state = strip(d.state, 'HARDWARE_STATE_').toLowerCase();
  const expunged = policy === 'expunged';
  const fill = num(d.capacityBytes) ? Math.min(100, (100 * num(d.sizeUsedBytes)) / num(d.capacityBytes)) : 0;
  const caused = reps.filter((r) => d.datasetId && datasetOf[r.replacementId] === d.datasetId);
  const cls = `disk policy-${policy} state-${state}${d.noProvision ? ' no-provision' : ''}`;
  return h('li', { class: cls, 'data-disk-id': d.diskId, 'data-expunged': expunged ? 'true' : 'false' },
    h('div', { class: 'mono' }, `disk ${short(d.diskId)}`),
    expunged ? h('div', { class: 'tag' }, 'EXPUNGED') : null,
    h('div', {}, `${policy} / ${state}${d.noProvision ? ' / no-provision' : ''}`),
    h('div', { class: 'fill', role: 'img', 'aria-label': `${fill.toFixed(0)} % used` }, h('span', { style: `width:${fill}%` })),
    h('div', { class: 'muted' }, `${fill.toFixed(0)} % used, ${num(d.regionCount)} regions, ${num(d.regionSnapshotCount)} snapshots`),
    caused.length ? h('div', {}, 'replacements: ', caused.map((r) => [h('a', { href: '#/replacements', title: r.replacementId }, `${short(r.replacementId)} (${requestState(r)})`), ' '])) : null,
    expunged ? null : h('button', { type: 'button', class: 'danger', onclick: () => expunge(d) }, `Expunge ${short(d.diskId)}…`));
}

// ---- replacements ----

function progress(r) {
  const c = r.stepCounts || {};
  const total = num(c.requested) + num(c.running) + num(c.complete) + num(c.collecting) + num(c.volumeDeleted);
  const done = num(c.volumeDeleted);
  const state = requestState(r);
  if (total > 0) return { pct: state === 'COMPLETE' ? 100 : Math.floor((100 * done) / total), text: `${done}/${total} steps done` };
  return { pct: state === 'COMPLETE' ? 100 : 0, text: state === 'COMPLETE' ? 'complete' : 'no steps yet' };
}

function traceID(tp) {
  const parts = (tp || '').split('-');
  return parts.length === 4 && parts[1].length === 32 && /[^0]/.test(parts[1]) ? parts[1] : '';
}

function replacements(data) {
  const reqs = data.requests || [];
  const out = [h('h1', {}, `Replacements: ${data.total || 0}`)];
  if (data.rackPause) out.push(h('p', { class: 'state-bad' }, `The rack is paused: ${data.rackPause.reason || ''}`));
  if (!reqs.length) out.push(h('p', {}, 'No replacement requests.'));
  for (const g of reqs) {
    const r = g.replacement;
    const p = progress(r);
    const state = requestState(r);
    const est = r.estimate || {};
    const tid = traceID(r.traceparent);
    const terminal = ['COMPLETE', 'CANCELLED', 'FAILED'].includes(state);
    out.push(h('section', { class: 'card', 'data-replacement-id': r.replacementId, 'aria-label': `request ${r.replacementId}` },
      h('h2', {}, `Request ${r.replacementId}`),
      h('div', { class: 'bar', role: 'progressbar', 'aria-label': `progress of ${short(r.replacementId)}`, 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': p.pct, 'data-progress': p.pct },
        h('span', { style: `width:${p.pct}%` })),
      h('p', {}, `${p.pct} % — ${p.text}`),
      kv([
        ['state', h('span', { class: `state-${state}` }, state)],
        ['kind', strip(r.kind, 'REPLACEMENT_KIND_')],
        ['priority', r.priority || 0],
        ['waiting for', r.wait ? `${strip(r.wait.kind, 'WAIT_KIND_')} since ${when(r.wait.since)}${r.wait.detail ? ` (${r.wait.detail})` : ''}` : '—'],
        ['attempts', r.attempts || 0],
        ['ETA', est.known ? `${dur(est.remaining)} (at ${when(est.completeTime)}; ${est.basis || ''})` : '—'],
        ['old target', h('span', { class: 'mono' }, r.oldTargetId || '—')],
        ['paused', r.pause ? `yes: ${r.pause.reason || ''}` : 'no'],
        ['last error', r.lastError || '—'],
        ['trace', tid && data.jaegerUrl ? h('a', { href: `${data.jaegerUrl}/trace/${tid}`, target: '_blank', rel: 'noopener' }, `trace ${tid.slice(0, 12)}…`) : (tid ? `trace id ${tid} (tracing UI not configured)` : '—')],
        ['saga', r.operatingSagaId ? h('a', { href: `#/saga/${r.operatingSagaId}` }, short(r.operatingSagaId)) : '—'],
      ]),
      terminal ? null : h('p', { class: 'buttons' },
        r.pause ? h('button', { type: 'button', onclick: () => act('resume', r.replacementId, `Resume request ${short(r.replacementId)}`) }, 'Resume…')
          : h('button', { type: 'button', onclick: () => act('pause', r.replacementId, `Pause request ${short(r.replacementId)}`) }, 'Pause…'),
        h('button', { type: 'button', class: 'danger', onclick: () => act('cancel', r.replacementId, `Cancel request ${short(r.replacementId)}`) }, 'Cancel…')),
      h('h3', {}, `Steps (${(g.steps || []).length})`),
      (g.steps || []).length ? table(['step', 'volume', 'state', 'waiting for', 'attempts', 'saga'], g.steps.map((s) => [
        h('span', { class: 'mono' }, short(s.stepId)), h('a', { href: `#/volume/${s.volumeId}` }, short(s.volumeId)), strip(s.state, 'STEP_STATE_'),
        s.wait ? strip(s.wait.kind, 'WAIT_KIND_') : '—', s.attempts || 0,
        s.operatingSagaId ? h('a', { href: `#/saga/${s.operatingSagaId}` }, short(s.operatingSagaId)) : '—'])) : null,
      (g.driveSteps || []).length ? [h('h3', {}, `Drive steps (${g.driveSteps.length})`),
        table(['time', 'type', 'attachment', 'endpoint'], g.driveSteps.map((d) => [when(d.time), d.stepType, short(d.attachmentId), d.endpoint || '—']))] : null));
  }
  return out;
}

// ---- volumes ----

function vcrTree(v) {
  if (!v) return h('li', {}, '(none)');
  if (v.volume) {
    return h('li', {}, `volume ${v.volume.id} block_size=${v.volume.blockSize || 0}`,
      h('ul', { class: 'vcr' }, (v.volume.subVolumes || []).map(vcrTree),
        v.volume.readOnlyParent ? h('li', {}, 'read-only parent:', h('ul', { class: 'vcr' }, vcrTree(v.volume.readOnlyParent))) : null));
  }
  if (v.region) {
    const o = v.region.opts || {};
    return h('li', {}, `region set (${o.readOnly ? 'read-only' : 'rw'}) gen=${v.region.gen || 0}`,
      h('ul', { class: 'vcr' }, (o.target || []).map((t) => h('li', { class: 'mono' }, t))));
  }
  if (v.file) return h('li', {}, `file ${v.file.id} ${v.file.path}`);
  if (v.url) return h('li', {}, `url ${v.url.id} ${v.url.url}`);
  return h('li', {}, '(unknown)');
}

function volume(data, id) {
  if (!id) {
    const vols = (data.volumes && data.volumes.volumes) || [];
    return [h('h1', {}, `Volumes: ${vols.length}`),
      table(['volume', 'purpose', 'created', 'targets'], vols.map((v) => [
        h('a', { href: `#/volume/${v.volumeId}` }, v.volumeId), strip(v.purpose, 'VOLUME_PURPOSE_'), when(v.timeCreated), (v.targets || []).length]))];
  }
  const v = (data.volume && data.volume.volume) || {};
  const red = data.volume && data.volume.redundancy;
  const disks = (data.disks && data.disks.disks) || [];
  const byDataset = new Map(disks.map((d) => [d.datasetId, d]));
  return [h('h1', {}, `Volume ${v.volumeId}`),
    kv([['purpose', strip(v.purpose, 'VOLUME_PURPOSE_')], ['created', when(v.timeCreated)], ['deleted', v.timeDeleted ? when(v.timeDeleted) : 'no'],
      ['redundancy', red ? `${red.redundancy || 0} live copies of the weakest region set` : `unknown (${data.redundancyError || 'not reported'})`]]),
    h('h2', {}, `Targets it reads (${(v.targets || []).length})`),
    table(['target', 'kind', 'state', 'address', 'disk', 'disk state'], (v.targets || []).map((t) => {
      const d = byDataset.get(t.datasetId);
      return [h('span', { class: 'mono' }, short(t.targetId)), strip(t.kind, 'TARGET_KIND_'), strip(t.state, 'TARGET_STATE_'), h('span', { class: 'mono' }, t.address || '—'),
        d ? h('span', { class: 'mono' }, short(d.diskId)) : '—', d ? `${strip(d.policy, 'POLICY_')} / ${strip(d.state, 'HARDWARE_STATE_')}` : '—'];
    })),
    red ? [h('h2', {}, 'Region sets'), table(['set', 'live copies'], (red.sets || []).map((s, i) => [String(i), s.liveCopies || 0]))] : null,
    h('h2', {}, 'Construction request (key material redacted)'), h('ul', { class: 'vcr' }, vcrTree(v.vcr))];
}

// ---- sagas ----

// dag draws a saga's nodes. With stages (SagaNode.stage) each stage is a
// column and runs after the whole stage before it: an edge from every node
// of a stage to every node of the next. The orchestrator leaves stage unset
// today, so a saga whose nodes all say stage 0 is drawn as what its node
// order is, a chain, wrapped into columns of chainRows.
function dag(nodes) {
  const W = 170, H = 44, BW = 150, BH = 30, chainRows = 8;
  const staged = new Set(nodes.map((n) => n.stage || 0)).size > 1 || nodes.length < 2;
  const pos = new Map();
  const edges = [];
  const key = (n) => n.nodeIndex || 0;
  let cols, rows;
  const edge = (pa, pb) => edges.push(pb.x > pa.x
    ? h('line', { x1: pa.x + BW, y1: pa.y + BH / 2, x2: pb.x, y2: pb.y + BH / 2 })
    : h('line', { x1: pa.x + BW / 2, y1: pa.y + BH, x2: pb.x + BW / 2, y2: pb.y }));
  if (staged) {
    const stages = new Map();
    for (const n of nodes) {
      const st = n.stage || 0;
      if (!stages.has(st)) stages.set(st, []);
      stages.get(st).push(n);
    }
    const order = [...stages.keys()].sort((a, b) => a - b);
    order.forEach((st, x) => stages.get(st).forEach((n, y) => pos.set(key(n), { x: 10 + x * W, y: 10 + y * H })));
    for (let i = 1; i < order.length; i++) {
      for (const a of stages.get(order[i - 1])) for (const b of stages.get(order[i])) edge(pos.get(key(a)), pos.get(key(b)));
    }
    cols = order.length;
    rows = Math.max(1, ...[...stages.values()].map((v) => v.length));
  } else {
    const sorted = [...nodes].sort((a, b) => key(a) - key(b));
    sorted.forEach((n, i) => pos.set(key(n), { x: 10 + Math.floor(i / chainRows) * W, y: 10 + (i % chainRows) * H }));
    for (let i = 1; i < sorted.length; i++) edge(pos.get(key(sorted[i - 1])), pos.get(key(sorted[i])));
    cols = Math.ceil(sorted.length / chainRows);
    rows = Math.min(chainRows, sorted.length);
  }
  const width = 20 + cols * W, height = 20 + rows * H;
  return h('svg', { class: 'dag', role: 'img', 'aria-label': `saga DAG with ${nodes.length} nodes`, viewBox: `0 0 ${width} ${height}`, width, height },
    h('title', {}, `saga DAG with ${nodes.length} nodes`), edges,
    nodes.map((n) => {
      const p = pos.get(key(n));
      const st = n.status || 'pending';
      return h('g', { class: `node status-${st}`, 'data-node': n.name, 'data-status': st },
        h('title', {}, `${n.name}: ${st}`),
        h('rect', { x: p.x, y: p.y, width: BW, height: BH, rx: 4 }),
        h('text', { x: p.x + 6, y: p.y + 13 }, n.name.length > 24 ? `${n.name.slice(0, 23)}…` : n.name),
        h('text', { x: p.x + 6, y: p.y + 25 }, st));
    }));
}

function saga(data, id) {
  if (!id) {
    const sagas = (data.sagas && data.sagas.sagas) || [];
    return [h('h1', {}, `Sagas: ${sagas.length}`),
      table(['saga', 'name', 'state', 'outcome', 'created', 'subject'], sagas.map((s) => [
        h('a', { href: `#/saga/${s.sagaId}` }, short(s.sagaId)), s.name, strip(s.state, 'SAGA_STATE_'), h('span', { class: `status-${s.outcome}` }, s.outcome || '—'),
        when(s.timeCreated), h('span', { class: 'mono' }, short(s.subjectId))]))];
  }
  const s = data.saga || {};
  const nodes = data.nodes || [];
  const done = ['DONE', 'ABANDONED'].includes(strip(s.state, 'SAGA_STATE_'));
  return [h('h1', {}, `Saga ${s.name} ${s.sagaId}`),
    kv([['state', strip(s.state, 'SAGA_STATE_')], ['outcome', h('span', { class: `status-${s.outcome}` }, s.outcome || '—')], ['created', when(s.timeCreated)],
      ['subject', h('span', { class: 'mono' }, s.subjectId || '—')], ['parameters', h('pre', {}, data.paramsJson || '—')]]),
    done ? null : h('p', { class: 'buttons' }, h('button', { type: 'button', class: 'danger', onclick: () => act('abandon', s.sagaId, `Abandon saga ${short(s.sagaId)}`,
      h('p', {}, `Abandoning unwinds saga ${s.name} ${s.sagaId}: every node that ran is undone.`)) }, 'Abandon…')),
    h('h2', {}, `DAG (${nodes.length} nodes)`), dag(nodes),
    h('h2', {}, 'Nodes'),
    table(['#', 'node', 'kind', 'stage', 'status', 'output (secrets redacted)'], nodes.map((n) => [n.nodeIndex || 0, n.name, n.kind, n.stage || 0,
      h('span', { class: `status-${n.status}` }, n.status || 'pending'), h('pre', {}, n.dataJson || '')])),
    h('h2', {}, `Log (${(data.events || []).length} events)`),
    table(['time', 'node', 'event', 'data (secrets redacted)'], (data.events || []).map((e) => [when(e.time), e.nodeName, e.eventType, h('pre', {}, e.dataJson || '')]))];
}

// ---- health ----

function health(data) {
  const lead = data.leadership || {};
  const f = data.databaseFormation || {};
  const c = f.connection || {};
  const m = f.monitor;
  return [h('h1', {}, 'Health'),
    h('h2', {}, 'Services'),
    table(['service', 'address', 'status', 'error'], (data.services || []).map((s) => [s.service, s.address, h('span', { class: s.status }, s.status), s.error || ''])),
    h('h2', {}, 'Orchestrator leadership'),
    data.leadershipError ? h('p', { class: 'state-bad' }, data.leadershipError)
      : kv([['leader', lead.holder || 'none'], ['epoch', lead.epoch || '0'], ['lease expires', when(lead.leaseExpiry)], ['answered by', `${lead.self || '—'}${lead.isLeader ? ' (the leader)' : ''}`]]),
    h('h2', {}, 'Database formation'),
    data.databaseFormationError ? h('p', { class: 'state-bad' }, data.databaseFormationError) : [
      kv([['orchestrator connects to', c.error ? h('span', { class: 'state-bad' }, c.error) : `${c.host || 'local socket'}:${c.port || '—'}/${c.database || '—'} (${c.primary ? 'primary' : 'NOT primary'}, WAL ${c.walLsn || '—'})`],
        ['synchronous standbys', c.synchronousStandbyNames || 'none'], ['observed', when(f.observedTime)]]),
      (c.standbys || []).length ? table(['standby', 'address', 'state', 'sync', 'replay lag (bytes)'], c.standbys.map((s) => [s.applicationName, s.clientAddr, s.state, s.syncState, s.replayLagBytes || '0'])) : null,
      m ? [h('h3', {}, `Monitor (${m.formation || 'formation'})`), m.error ? h('p', { class: 'state-bad' }, m.error) : null,
        table(['node', 'address', 'reported', 'assigned', 'health', 'LSN', 'lag (bytes)'], (m.nodes || []).map((n) => [n.name, `${n.host}:${n.port}`, n.reportedState, n.assignedState,
          strip(n.health, 'DATABASE_NODE_HEALTH_'), n.reportedLsn || '—', n.lagBytes ?? '—']))] : h('p', { class: 'muted' }, 'one PostgreSQL, no formation monitor')],
    h('h2', {}, 'Active alerts'),
    alertsSection(data.alerts || {}),
    h('h2', {}, 'Problems'),
    (data.problems || []).length ? h('ul', {}, data.problems.map((p) => h('li', { class: 'state-bad' }, p))) : h('p', {}, 'none')];
}

// alertsSection: Prometheus's pending and firing alerts, or why there
// are none to show (no Prometheus configured reads differently from "all
// clear").
function alertsSection(a) {
  if (!a.source) return h('p', { class: 'muted' }, 'no Prometheus configured (storctl console --alerts-url): alerts unknown');
  if (a.error) return h('p', { class: 'state-bad' }, `${a.source}: ${a.error}`);
  if (!(a.alerts || []).length) return h('p', {}, `none firing or pending (${a.source})`);
  return table(['alert', 'state', 'severity', 'since', 'summary', 'labels'], a.alerts.map((x) => [x.name,
    h('span', { class: x.state === 'firing' ? 'state-bad' : '' }, x.state), x.severity || '', when(x.activeAt), x.summary || '',
    Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ')]));
}

window.addEventListener('hashchange', route);
route();
