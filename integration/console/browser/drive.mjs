// The console's browser test, driven by integration/console (console_test.go):
// Debian's chromium through playwright-core, axe-core in each page.
//
// Screenshots of each page and results.json (the measurements) are left in
// OUT_DIR (.run/console) as the test's artifacts.
//
// Environment: CONSOLE_URL (a console acting as an operator), VIEWER_URL (a
// console that reads and acts as a viewer), OUT_DIR (screenshots), CHROMIUM
// (default /usr/bin/chromium). Protocol on stdio: this script prints READY
// once the replacements page is open, then reads one JSON line naming what
// the demo did ({diskId, replacementId, volumeId, sagaId, sagaName, requests}), checks every
// page, and prints one line "RESULT <json>" with its measurements. Any
// failed check exits 1 with the reason. Every wait has a deadline.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const axePath = require.resolve('axe-core/axe.min.js');
const { CONSOLE_URL, VIEWER_URL, OUT_DIR } = process.env;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.WAIT_MS || 60000);

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exitCode = 1;
  throw new Error(msg);
}

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function axeCheck(page, name) {
  await page.addScriptTag({ path: axePath });
  const res = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) fail(`${name}: axe: ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ')}`).join(' | ')}`);
  return res.violations.length;
}

async function shot(page, name) {
  await page.screenshot({ path: join(OUT_DIR, `${name}.png`), fullPage: true });
}

// weigh loads one page in a fresh tab with the cache off and counts what
// it took to draw its first snapshot: the bytes Chromium received for each
// finished request (the document, its module and its stylesheet: headers
// and bodies, encodedDataLength) plus the first event of the page's stream
// (its data as the page received it; the stream never finishes, so the
// network layer's count for it is not final when the page draws).
async function weigh(context, url) {
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
  const finished = new Map();
  cdp.on('Network.loadingFinished', (e) => finished.set(e.requestId, e.encodedDataLength));
  await page.goto(url);
  await page.waitForFunction(() => window.__console && window.__console.renders.length > 0, null, { timeout: WAIT });
  await page.waitForLoadState('load');
  const event = await page.evaluate(() => window.__console.renders[0].bytes);
  let assets = 0;
  for (const n of finished.values()) assets += n;
  await page.close();
  return { assets, firstEvent: event, total: assets + event };
}

async function main() {
  mkdirSync(OUT_DIR, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'console-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    bypassCSP: true, // axe-core is injected as an inline script
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const result = { axeViolations: {}, pageBytes: {}, screenshots: [] };
  try {
    const page = await context.newPage();
    page.on('pageerror', (e) => fail(`page error: ${e.message}`));
    await page.goto(`${CONSOLE_URL}#/replacements`);
    await page.waitForFunction(() => window.__console.renders.length > 0, null, { timeout: WAIT });
    // A reload would lose this mark: its survival proves the page never
    // reloaded while the replacement ran.
    await page.evaluate(() => { window.__notReloaded = true; });
    console.log('READY');

    const next = await stdinLines.next();
    if (next.done) fail('no demo result on stdin');
    const demo = JSON.parse(next.value);

    // Replacements: the request's bar reaches 100 % live.
    const card = `[data-replacement-id="${demo.replacementId}"]`;
    await page.waitForSelector(`${card} [role=progressbar][data-progress="100"]`, { timeout: WAIT });
    if (!(await page.evaluate(() => window.__notReloaded === true))) fail('the replacements page reloaded');
    result.traceLink = await page.getAttribute(`${card} a[href*="/trace/"]`, 'href');
    if (!result.traceLink) fail('no trace link on the request');
    const renders = await page.evaluate(() => window.__console.renders);
    const seen = renders.filter((r) => r.view === 'replacements').map((r) => {
      const q = (r.requests || []).find((x) => x.id === demo.replacementId);
      return { at: r.at, shown: r.shown, done: q ? Number(q.counts.volumeDeleted || 0) : -1 };
    });
    const distinct = new Set(seen.map((s) => s.done));
    result.progressRenders = seen.length;
    result.progressValuesSeen = [...distinct].sort((a, b) => a - b);
    // Latency: each step's completion as the orchestrator recorded it (its
    // time_modified once done) against the page's first render showing that
    // many steps done.
    const snap = await page.evaluate(async () => (await fetch('/api/snapshot?view=replacements')).json());
    const g = snap.data.requests.find((x) => x.replacement.replacementId === demo.replacementId);
    const doneTimes = (g.steps || []).filter((s) => s.state === 'STEP_STATE_VOLUME_DELETED').map((s) => Date.parse(s.timeModified)).sort((a, b) => a - b);
    const lat = [], server = [];
    doneTimes.forEach((t, i) => {
      const r = seen.find((s) => s.done >= i + 1);
      if (r) { lat.push(r.shown - t); server.push(r.at - t); }
    });
    const stats = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? { n: s.length, min: s[0], median: s[Math.floor(s.length / 2)], max: s[s.length - 1] } : null; };
    result.eventToDisplayMs = stats(lat);
    result.eventToServerSnapshotMs = stats(server);
    result.steps = doneTimes.length;
    await shot(page, 'replacements');
    result.axeViolations.replacements = await axeCheck(page, 'replacements');

    // Rack: the expunged disk is marked.
    await page.evaluate(() => { location.hash = '#/rack'; });
    const diskSel = `[data-disk-id="${demo.diskId}"][data-expunged="true"]`;
    await page.waitForSelector(diskSel, { timeout: WAIT });
    // Each of the demo's requests is shown on the disk it replaces from.
    await page.waitForFunction(([sel, n]) => document.querySelectorAll(`${sel} a`).length === n, [diskSel, demo.requests], { timeout: WAIT })
      .catch(async () => fail(`expunged disk lists ${await page.$$eval(`${diskSel} a`, (as) => as.length)} requests, want ${demo.requests}`));
    await shot(page, 'rack');
    result.axeViolations.rack = await axeCheck(page, 'rack');

    // Volume: its VCR tree and targets, and no key.
    await page.evaluate((id) => { location.hash = `#/volume/${id}`; }, demo.volumeId);
    await page.waitForFunction((id) => document.querySelector('h1')?.textContent === `Volume ${id}`, demo.volumeId, { timeout: WAIT });
    await shot(page, 'volume');
    result.axeViolations.volume = await axeCheck(page, 'volume');

    // Saga: every node of the rsr-start (ro-replacement-start) saga drawn.
    await page.evaluate((id) => { location.hash = `#/saga/${id}`; }, demo.sagaId);
    await page.waitForSelector('svg.dag g[data-node]', { timeout: WAIT });
    const sagaSnap = await page.evaluate(async (id) => (await fetch(`/api/snapshot?view=saga&id=${id}`)).json(), demo.sagaId);
    const names = (sagaSnap.data.nodes || []).map((n) => n.name);
    if (sagaSnap.data.saga.name !== demo.sagaName) fail(`saga ${demo.sagaId} is ${sagaSnap.data.saga.name}, want ${demo.sagaName}`);
    const drawn = await page.$$eval('svg.dag g[data-node]', (gs) => gs.map((g) => g.getAttribute('data-node')));
    for (const n of names) if (!drawn.includes(n)) fail(`saga node ${n} not drawn (drawn: ${drawn.join(', ')})`);
    if (names.length < 2) fail(`saga has ${names.length} nodes`);
    result.sagaNodes = names.length;
    await shot(page, 'saga');
    result.axeViolations.saga = await axeCheck(page, 'saga');

    // Health.
    await page.evaluate(() => { location.hash = '#/health'; });
    // Every service serving, and the leader named.
    await page.waitForFunction(() => document.querySelector('h1')?.textContent === 'Health'
      && document.querySelectorAll('span.SERVING').length === 4 && /leader/.test(document.querySelector('main').textContent), null, { timeout: WAIT });
    await shot(page, 'health');
    result.axeViolations.health = await axeCheck(page, 'health');

    // An operator action through the console, for the audit check: pause
    // the (finished) request. Its outcome is the orchestrator's; the call
    // itself is what gets audited with the console's identity.
    result.operatorPause = await page.evaluate(async (id) => {
      const r = await fetch('/api/actions/pause', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Storagecp-Console': '1' }, body: JSON.stringify({ id, reason: 'console test' }) });
      const b = await r.json();
      return { status: r.status, code: b.error ? b.error.code : 'OK', identity: b.identity };
    }, demo.replacementId);
    await page.close();

    // A viewer console: the expunge is offered, previewed, confirmed, and
    // the service's refusal shown.
    const vp = await context.newPage();
    await vp.goto(`${VIEWER_URL}#/rack`);
    const target = await vp.waitForSelector('[data-expunged="false"] button', { timeout: WAIT });
    await target.click();
    await vp.waitForSelector('dialog#confirm[open]', { timeout: WAIT });
    await vp.click('#confirm-ok');
    await vp.waitForFunction(() => /PermissionDenied/.test(document.getElementById('flash').textContent), null, { timeout: WAIT });
    result.viewerRefusal = await vp.textContent('#flash');
    await shot(vp, 'viewer-refused');
    result.axeViolations.viewerRefused = await axeCheck(vp, 'viewer-refused');
    await vp.close();

    for (const view of ['rack', 'replacements', `volume/${demo.volumeId}`, `saga/${demo.sagaId}`, 'health']) {
      result.pageBytes[view.split('/')[0]] = await weigh(context, `${CONSOLE_URL}#/${view}`);
    }
    result.screenshots = ['replacements', 'rack', 'volume', 'saga', 'health', 'viewer-refused'].map((n) => join(OUT_DIR, `${n}.png`));
    writeFileSync(join(OUT_DIR, 'results.json'), `${JSON.stringify(result, null, 2)}\n`);
    console.log(`RESULT ${JSON.stringify(result)}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().then(() => process.exit(process.exitCode || 0), (e) => { console.error(e.stack || String(e)); process.exit(1); });
