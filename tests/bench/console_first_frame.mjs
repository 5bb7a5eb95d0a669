#!/usr/bin/env node
// Benchmark: time from clicking a VM's SPICE or VNC console in the dashboard to the first frame of
// the guest's screen drawn in the page (ticket request, the client's code, the WebSocket relay and
// the protocol handshake included), against the usual peer set-up: the same clients (spice-html5,
// noVNC) through Python websockify straight onto the VM's sockets, timed from the connection
// (no ticket, code already loaded). Real Chromium, the test guest under TCG, alternating rounds.
//
// usage: node tests/bench/console_first_frame.mjs [--rounds N]
// Needs target/release/{fastvm,vmrunner} (cargo build --release; FASTVM_BIN/VMRUNNER_BIN to choose
// others), the dashboard built (frontend/dist), Chromium, websockify (apt-get install websockify)
// and the test guest ISO. Talks only to 127.0.0.1 and the VM's unix sockets.
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { createRequire } from 'node:module';

const root = resolve(import.meta.dirname, '..', '..');
const require = createRequire(join(root, 'frontend', 'package.json'));
const { chromium } = require('playwright-core');
const fastvm = process.env.FASTVM_BIN || join(root, 'target', 'release', 'fastvm');
const vmrunner = process.env.VMRUNNER_BIN || join(root, 'target', 'release', 'vmrunner');
const iso = process.env.FASTVM_TEST_GUEST_ISO || '/var/cache/fastvm/guest/fastvm-test-guest.iso';
const roundsArg = process.argv.indexOf('--rounds');
const rounds = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 5;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

for (const [what, path] of [['fastvm', fastvm], ['vmrunner', vmrunner], ['Chromium', '/usr/bin/chromium'], ['the test guest ISO', iso]]) {
  if (!existsSync(path)) throw new Error(`${what} missing at ${path}`);
}
execFileSync('sh', ['-c', 'command -v websockify'], { stdio: 'ignore' });

function freePort() {
  return new Promise((ok) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function api(base, method, path, token, body) {
  const r = await fetch(base + path, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: 'Bearer ' + token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// Put in both pages before their scripts: polls (every animation frame) until the first canvas under
// `selector` shows more than one colour; resolves to milliseconds since `t0` (performance.now()).
function defineDrawnSince() {
  window.drawnSince = (selector, t0) => new Promise((done, fail) => {
    const look = () => {
      const c = document.querySelector(selector);
      if (c && c.width >= 100) {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 4; i < d.length; i += 4 * 97) if (d[i] !== d[0] || d[i + 1] !== d[1]) return done(performance.now() - t0);
      }
      if (performance.now() > t0 + 30000) return fail(new Error('no frame within 30 s'));
      requestAnimationFrame(look);
    };
    look();
  });
}

// The peer's page: the same npm clients as ES modules straight from node_modules.
const PEER_HTML = `<!doctype html><meta charset="utf-8"><body style="margin:0">
<div id="screen" style="width:1024px;height:768px"></div>
<script type="module">
import RFB from '/nm/@novnc/novnc/core/rfb.js';
import { SpiceMainConn } from '/nm/@spice-project/spice-html5/src/main.js';
window.vnc = (url) => { const t0 = performance.now(); window.rfb = new RFB(document.getElementById('screen'), url); return drawnSince('#screen canvas', t0); };
window.spice = (url, password) => { const t0 = performance.now(); window.sc = new SpiceMainConn({ uri: url, password, screen_id: 'screen' }); return drawnSince('#screen canvas', t0); };
window.reset = () => { if (window.rfb) window.rfb.disconnect(); if (window.sc) window.sc.stop(); window.rfb = window.sc = null; document.getElementById('screen').replaceChildren(); };
</script>`;

function peerServer(port) {
  const nm = join(root, 'frontend', 'node_modules');
  const types = { '.js': 'text/javascript', '.html': 'text/html' };
  return createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      return res.end(PEER_HTML);
    }
    const file = normalize(join(nm, path.replace(/^\/nm\//, '')));
    if (!path.startsWith('/nm/') || !file.startsWith(nm) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { 'Content-Type': types[extname(file)] || 'application/octet-stream' });
    createReadStream(file).pipe(res);
  }).listen(port, '127.0.0.1');
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];

const dataDir = mkdtempSync(join(tmpdir(), 'fastvm-bench-frame-'));
const children = [];
let browser;
try {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  children.push(spawn(fastvm, ['serve'], {
    env: {
      ...process.env, FASTVM_LISTEN: `127.0.0.1:${port}`, FASTVM_DATA_DIR: dataDir, FASTVM_RUN_DIR: join(dataDir, 'r'),
      FASTVM_BCRYPT_COST: '4', FASTVM_ACCEL: 'tcg', FASTVM_ISO_DIRS: dirname(iso), FASTVM_VMRUNNER: vmrunner,
      FASTVM_PORT_FORWARD_BIND: '127.0.0.1',
    },
    stdio: 'ignore',
  }));
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(base + '/api/health')).ok) break;
    } catch {
      // not yet listening
    }
    if (i > 200) throw new Error('fastvm did not start');
    await sleep(50);
  }
  const first = (await api(base, 'POST', '/api/auth/login', null, { username: 'admin', password: 'admin' })).access_token;
  // The dashboard asks for a new password before anything else.
  await api(base, 'POST', '/api/auth/change-password', first, { current_password: 'admin', new_password: 'bench-password' });
  const token = (await api(base, 'POST', '/api/auth/login', null, { username: 'admin', password: 'bench-password' })).access_token;
  const { vm } = await api(base, 'POST', '/api/vms', token, {
    name: 'frame-bench', memory: 256, cpus: 1, disk_size: 1, iso_path: iso, firmware: 'bios', boot_order: ['cdrom', 'disk'],
  });
  await api(base, 'POST', `/api/vms/${vm.id}/start`, token);
  for (let i = 0; !(await api(base, 'GET', `/api/vms/${vm.id}/logs?lines=50`, token)).serial_log.includes('FASTVM-GUEST-READY'); i++) {
    if (i > 240) throw new Error('the guest never became READY');
    await sleep(1000);
  }
  const run = join(dataDir, 'r', vm.id);
  const [vncPort, spicePort, pagePort] = await Promise.all([freePort(), freePort(), freePort()]);
  for (const [sock, p] of [['vnc.sock', vncPort], ['spice.sock', spicePort]]) {
    children.push(spawn('websockify', ['--unix-target=' + join(run, sock), `127.0.0.1:${p}`], { stdio: 'ignore' }));
  }
  const peer = peerServer(pagePort);
  await sleep(1000);

  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'] });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  await context.addInitScript((t) => localStorage.setItem('fastvm.token', t), token);
  await context.addInitScript(defineDrawnSince);
  const page = await context.newPage();
  await page.goto(`${base}/#/vm/${vm.id}`);
  await page.getByRole('button', { name: 'SPICE console' }).waitFor();
  const peerPage = await context.newPage();
  await peerPage.goto(`http://127.0.0.1:${pagePort}/`);
  await peerPage.waitForFunction(() => typeof window.vnc === 'function');

  const times = { 'fastvm SPICE': [], 'fastvm VNC': [], 'websockify SPICE': [], 'websockify VNC': [] };
  // Both are timed in their page, from the click (or the connection) to the frame.
  // A tab in the background gets an animation frame about once a second: each page is timed in front.
  const timeDashboard = async (name) => {
    await page.bringToFront();
    const ms = await page.evaluate((label) => {
      const button = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === label);
      const t0 = performance.now();
      button.click();
      return window.drawnSince('#console-screen canvas', t0);
    }, name);
    await page.getByRole('button', { name: 'Close console' }).click();
    return ms;
  };
  for (let r = 0; r < rounds; r++) {
    times['fastvm SPICE'].push(await timeDashboard('SPICE console'));
    times['fastvm VNC'].push(await timeDashboard('VNC console'));
    // The peer connects with a SPICE password the API set (QEMU's SPICE is ticketed).
    const { password } = await api(base, 'GET', `/api/vms/${vm.id}/spice`, token);
    await peerPage.bringToFront();
    times['websockify SPICE'].push(await peerPage.evaluate(([u, p]) => window.spice(u, p), [`ws://127.0.0.1:${spicePort}`, password]));
    await peerPage.evaluate(() => window.reset());
    times['websockify VNC'].push(await peerPage.evaluate((u) => window.vnc(u), `ws://127.0.0.1:${vncPort}`));
    await peerPage.evaluate(() => window.reset());
    await sleep(500);
  }
  peer.close();
  console.log(`Console first-frame benchmark (${rounds} rounds, TCG guest, text-mode screen 720x400)`);
  for (const [name, xs] of Object.entries(times)) {
    console.log(`  ${name.padEnd(17)}: median ${median(xs).toFixed(0).padStart(5)} ms, p90 ${p90(xs).toFixed(0).padStart(5)} ms`);
  }
  console.log('  (fastvm: from the click, ticket and code loading included; websockify: from the connection)');
} finally {
  if (browser) await browser.close();
  for (const c of children) c.kill('SIGTERM');
  await sleep(1000);
  spawn('pkill', ['-f', dataDir]).once('exit', () => rmSync(dataDir, { recursive: true, force: true }));
}
