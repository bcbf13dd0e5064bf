#!/usr/bin/env node
// Browser test of web/index.html: Debian chromium, headless, driven by playwright-core.
//
//   node tests/browser/page_test.mjs --url http://127.0.0.1:PORT/
//        [--cross-origin-url 'http://127.0.0.1:OTHER/index.html?ws=ws://127.0.0.1:PORT/']
//        [--screenshot PATH] [--timeout MS] [--chromium PATH] [--expect-deflate]
//
// For each mode (same origin; cross origin when given) it loads the page, checks 10 rows
// 未开始, clicks 发送, awaits every row 已完成, progress 10/10 and the close line showing 1000,
// then clicks 新批次 and checks a second batch completes without a reload. One line per check,
// then `page: N passed, N failed`; exit 1 on any failure.
//
// --expect-deflate: the server runs with permessage_deflate=true. The handshakes are read
// through the Chrome DevTools Protocol (Network.webSocketHandshakeResponseReceived): each
// socket's 101 must answer Chromium's permessage-deflate offer.
//
// chromium.launch() always gives the browser a fresh temporary --user-data-dir of its own
// (mkdtemp in $TMPDIR, removed on close); Playwright refuses --user-data-dir in `args`.

import { chromium } from 'playwright-core';

const TASKS = 10;
const IDLE = '未开始';
const RUNNING = '进行中';
const DONE = '已完成';

function usage(msg) {
  if (msg) console.error(`page_test: ${msg}`);
  console.error('usage: node page_test.mjs --url URL [--cross-origin-url URL] [--screenshot PATH] ' +
    '[--timeout MS] [--chromium PATH] [--expect-deflate]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { url: null, crossOriginUrl: null, screenshot: null, timeout: 30000,
    chromium: process.env.CHROMIUM || '/usr/bin/chromium', expectDeflate: false };
  const names = { '--url': 'url', '--cross-origin-url': 'crossOriginUrl', '--screenshot': 'screenshot',
    '--timeout': 'timeout', '--chromium': 'chromium' };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s, 2);
    if (flag === '-h' || flag === '--help') usage();
    if (flag === '--expect-deflate') {
      opts.expectDeflate = true;
      continue;
    }
    const key = names[flag];
    if (!key) usage(`unknown option ${flag}`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) usage(`${flag} needs a value`);
    }
    opts[key] = value;
  }
  if (!opts.url) usage('--url is required');
  opts.timeout = Number(opts.timeout);
  if (!(opts.timeout > 0)) usage('--timeout must be a positive number of milliseconds');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
let passed = 0;
let failed = 0;

function ok(name) {
  passed++;
  console.log(`ok   ${name}`);
}

function fail(name, why) {
  failed++;
  console.log(`FAIL ${name}: ${String(why).split('\n').join('\n     ')}`);
}

class Fatal extends Error {}

// One check: fn returns nothing (pass) or throws (fail). A failed fatal check ends the mode.
async function check(name, fn, { fatal = false } = {}) {
  try {
    await fn();
    ok(name);
    return true;
  } catch (e) {
    fail(name, e && e.message ? e.message : e);
    if (fatal) throw new Fatal(name);
    return false;
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// What the page shows, for assertions and for failure messages.
function snapshot(page) {
  return page.evaluate(() => {
    const rows = [...document.querySelectorAll('#main li[data-id]')].map((li) => ({
      id: li.dataset.id,
      text: li.querySelector('.id') ? li.querySelector('.id').textContent : null,
      status: li.querySelector('span.status') ? li.querySelector('span.status').textContent : null,
    }));
    const p = document.getElementById('progress');
    const text = (id) => (document.getElementById(id) || {}).textContent || '';
    return {
      rows,
      progress: p ? { tag: p.tagName, value: p.value, max: p.max } : null,
      progressText: text('progress-text'),
      error: text('error'),
      close: text('close'),
      sendDisabled: document.getElementById('send')?.disabled,
      newDisabled: document.getElementById('new-batch')?.disabled,
      marker: window.__pageTestMarker,
    };
  });
}

function describe(s) {
  const rows = s.rows.map((r) => `${r.id}:${r.status}`).join(' ');
  return `rows [${rows}] progress ${s.progress ? `${s.progress.value}/${s.progress.max}` : 'none'} ` +
    `text "${s.progressText}" error "${s.error}" close "${s.close}"`;
}

// Install a MutationObserver that records the page's state at the first DOM change after
// the next click: the click handler's own synchronous work (rows → 进行中, buttons disabled),
// before any WebSocket frame can have arrived.
function armObserver(page) {
  return page.evaluate(() => {
    window.__afterClick = null;
    const obs = new MutationObserver(() => {
      obs.disconnect();
      window.__afterClick = {
        statuses: [...document.querySelectorAll('#main li[data-id] span.status')].map((s) => s.textContent),
        ids: [...document.querySelectorAll('#main li[data-id]')].map((li) => li.dataset.id),
        sendDisabled: document.getElementById('send').disabled,
        newDisabled: document.getElementById('new-batch').disabled,
      };
    });
    obs.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });
}

// Await: every row done, progress value == max == TASKS, and the close line shows code 1000.
async function awaitBatchDone(page, label) {
  await check(`${label}: all ${TASKS} rows reach ${DONE}`, async () => {
    try {
      await page.waitForFunction(({ n, done }) => {
        const st = [...document.querySelectorAll('#main li[data-id] span.status')];
        return st.length === n && st.every((s) => s.textContent === done);
      }, { n: TASKS, done: DONE }, { timeout: opts.timeout, polling: 'raf' });
    } catch (e) {
      throw new Error(`not within ${opts.timeout} ms: ${describe(await snapshot(page))}`);
    }
  }, { fatal: true });
  await check(`${label}: progress ${TASKS}/${TASKS}`, async () => {
    try {
      await page.waitForFunction((n) => {
        const p = document.getElementById('progress');
        const t = document.getElementById('progress-text');
        return p && p.value === n && p.max === n && t && t.textContent.includes(`${n}/${n}`);
      }, TASKS, { timeout: 5000 });
    } catch (e) {
      throw new Error(describe(await snapshot(page)));
    }
  });
  await check(`${label}: close line shows 1000`, async () => {
    try {
      await page.waitForFunction(() => /\bclosed 1000\b/.test(document.getElementById('close').textContent),
        null, { timeout: opts.timeout });
    } catch (e) {
      throw new Error(describe(await snapshot(page)));
    }
  });
  await check(`${label}: no error shown, buttons enabled again`, async () => {
    const s = await snapshot(page);
    assert(s.error.trim() === '', `error element says "${s.error}"`);
    assert(s.sendDisabled === false && s.newDisabled === false,
      `send disabled=${s.sendDisabled}, new batch disabled=${s.newDisabled}`);
  });
}

async function checkAfterClick(page, label, expectIds) {
  await check(`${label}: click marks all rows ${RUNNING} and disables the buttons`, async () => {
    await page.waitForFunction(() => window.__afterClick !== null, null, { timeout: 5000 });
    const a = await page.evaluate(() => window.__afterClick);
    assert(a.statuses.length === TASKS, `${a.statuses.length} rows after click`);
    assert(a.statuses.every((s) => s === RUNNING), `statuses after click: ${a.statuses.join(',')}`);
    assert(a.sendDisabled && a.newDisabled, `send disabled=${a.sendDisabled}, new batch disabled=${a.newDisabled}`);
    if (expectIds) assert(JSON.stringify(a.ids) === JSON.stringify(expectIds), 'ids changed on send');
  });
}

async function runMode(browser, mode, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleErrors = [];
  const pageErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => pageErrors.push(e.message || String(e)));
  const sent = [];
  page.on('websocket', (ws) => {
    const entry = { url: ws.url(), frames: [] };
    sent.push(entry);
    ws.on('framesent', (f) => entry.frames.push(typeof f.payload === 'string' ? f.payload : '<binary>'));
  });
  let loads = 0;
  page.on('load', () => { loads++; });
  const handshakes = []; // { offer, answer } per WebSocket, from the DevTools protocol
  if (opts.expectDeflate) {
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const byId = new Map();
    const header = (h, name) => Object.entries(h || {})
      .filter(([k]) => k.toLowerCase() === name).map(([, v]) => v).join(', ');
    cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => {
      const hs = { offer: header(e.request.headers, 'sec-websocket-extensions'), answer: null };
      byId.set(e.requestId, hs);
      handshakes.push(hs);
    });
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
      const hs = byId.get(e.requestId);
      if (hs) hs.answer = header(e.response.headers, 'sec-websocket-extensions');
    });
  }

  try {
    await check(`${mode}: page loads (${url})`, async () => {
      const res = await page.goto(url, { waitUntil: 'load', timeout: opts.timeout });
      assert(res && res.ok(), `HTTP ${res ? res.status() : 'no response'}`);
    }, { fatal: true });

    let firstIds = [];
    await check(`${mode}: ${TASKS} rows, random 5-digit ids, all ${IDLE}, progress 0/${TASKS}`, async () => {
      const s = await snapshot(page);
      assert(s.rows.length === TASKS, `${s.rows.length} rows`);
      firstIds = s.rows.map((r) => r.id);
      assert(s.rows.every((r) => /^[1-9]\d{4}$/.test(r.id)), `ids: ${firstIds.join(',')}`);
      assert(s.rows.every((r) => r.text === r.id), 'shown id differs from data-id');
      assert(new Set(firstIds).size === TASKS, `duplicate ids: ${firstIds.join(',')}`);
      assert(s.rows.every((r) => r.status === IDLE), describe(s));
      assert(s.progress && s.progress.tag === 'PROGRESS', 'no <progress id="progress">');
      assert(s.progress.value === 0 && s.progress.max === TASKS, describe(s));
      assert(s.progressText.includes(`0/${TASKS}`), `progress text "${s.progressText}"`);
      assert(s.sendDisabled === false, 'send button disabled before any job');
    }, { fatal: true });

    await page.evaluate(() => { window.__pageTestMarker = 'no-reload'; });
    await armObserver(page);
    await page.getByRole('button', { name: '发送' }).click();
    await checkAfterClick(page, `${mode} batch 1`, firstIds);
    await awaitBatchDone(page, `${mode} batch 1`);

    await check(`${mode} batch 1: socket to the expected URL, batch sent as JSON with string ids`, async () => {
      assert(sent.length === 1, `${sent.length} WebSockets opened`);
      const expected = expectedWsUrl(url);
      assert(sent[0].url === expected, `opened ${sent[0].url}, expected ${expected}`);
      assert(sent[0].frames.length === 1, `${sent[0].frames.length} frames sent`);
      const batch = JSON.parse(sent[0].frames[0]);
      assert(Array.isArray(batch) && batch.length === TASKS, 'not an array of 10');
      assert(batch.every((t) => typeof t.id === 'string' && t.status === RUNNING), sent[0].frames[0]);
      assert(JSON.stringify(batch.map((t) => t.id)) === JSON.stringify(firstIds), 'ids differ from rows');
    });

    await armObserver(page);
    await page.getByRole('button', { name: '新批次' }).click();
    let secondIds = [];
    await check(`${mode} batch 2: new batch has ${TASKS} fresh 5-digit ids`, async () => {
      await page.waitForFunction(() => window.__afterClick !== null, null, { timeout: 5000 });
      secondIds = (await page.evaluate(() => window.__afterClick)).ids;
      assert(secondIds.length === TASKS && new Set(secondIds).size === TASKS, `ids: ${secondIds.join(',')}`);
      assert(secondIds.every((id) => /^[1-9]\d{4}$/.test(id)), `ids: ${secondIds.join(',')}`);
      assert(JSON.stringify(secondIds) !== JSON.stringify(firstIds), 'same ids as batch 1');
    });
    await checkAfterClick(page, `${mode} batch 2`, null);
    await awaitBatchDone(page, `${mode} batch 2`);

    await check(`${mode} batch 2: ran without a page reload, on a second socket`, async () => {
      const s = await snapshot(page);
      assert(s.marker === 'no-reload' && loads === 1, `page reloaded (loads=${loads})`);
      assert(sent.length === 2, `${sent.length} WebSockets opened`);
      const ids = JSON.parse(sent[1].frames[0]).map((t) => t.id);
      assert(JSON.stringify(ids) === JSON.stringify(secondIds), 'batch 2 frame ids differ from rows');
    });

    if (opts.expectDeflate) {
      await check(`${mode}: both sockets negotiated permessage-deflate`, async () => {
        assert(handshakes.length === 2, `${handshakes.length} handshakes seen`);
        for (const hs of handshakes) {
          assert(/permessage-deflate/.test(hs.offer), `Chromium offered "${hs.offer}"`);
          assert(/^permessage-deflate(;|$)/.test(hs.answer || ''),
            `offer "${hs.offer}" answered "${hs.answer}"`);
        }
      });
    }
  } catch (e) {
    if (!(e instanceof Fatal)) fail(`${mode}: unexpected`, e && e.stack ? e.stack : e);
  }

  if (consoleErrors.length) {
    fail(`${mode}: no console errors`, consoleErrors.join('\n'));
  } else {
    ok(`${mode}: no console errors`);
  }
  if (pageErrors.length) {
    fail(`${mode}: no uncaught page errors`, pageErrors.join('\n'));
  } else {
    ok(`${mode}: no uncaught page errors`);
  }
  return { context, page };
}

// The URL the page should connect to: ?ws= if given, else its own origin with path "/".
function expectedWsUrl(pageUrl) {
  const u = new URL(pageUrl);
  const given = u.searchParams.get('ws');
  if (given) return new URL(given, u).href;
  return `${u.protocol === 'https:' ? 'wss:' : 'ws:'}//${u.host}/`;
}

async function main() {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: opts.chromium,
      headless: true,
      timeout: 60000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    ok(`chromium launched (${opts.chromium}, ${browser.version()})`);
  } catch (e) {
    fail('chromium launched', e && e.message ? e.message : e);
    return;
  }
  try {
    const modes = [['same-origin', opts.url]];
    if (opts.crossOriginUrl) modes.push(['cross-origin', opts.crossOriginUrl]);
    let last = null;
    for (const [mode, url] of modes) {
      if (last) await last.context.close();
      last = await runMode(browser, mode, url);
    }
    if (opts.screenshot && last) {
      await check(`screenshot saved to ${opts.screenshot}`, async () => {
        await last.page.screenshot({ path: opts.screenshot, fullPage: true });
      });
    }
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  fail('unexpected', e && e.stack ? e.stack : e);
}
console.log(`page: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
