// The dashboard in a real Chromium (Debian's, driven by playwright-core) against the real fastvm
// binary and QEMU, in production mode (strict CSP). Fails on any page error, CSP violation or request
// to another host. Screenshots go to $FASTVM_SCREENSHOTS (default: frontend/screenshots).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, beforeEach, test } from 'node:test';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '..', '..');
const fastvm = join(root, 'target', 'debug', 'fastvm');
const vmrunner = join(root, 'target', 'debug', 'vmrunner');
const guestIso = process.env.FASTVM_TEST_GUEST_ISO || '/var/cache/fastvm/guest/fastvm-test-guest.iso';
const shots = process.env.FASTVM_SCREENSHOTS || join(root, 'frontend', 'screenshots');
const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let server;
let base;
let browser;
let dataDir;
const problems = [];

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function api(method, path, token, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function tokenOf(username, password) {
  const r = await api('POST', '/api/auth/login', null, { username, password });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.access_token;
}

before(async () => {
  for (const [what, path] of [['fastvm', fastvm], ['vmrunner', vmrunner], ['chromium', '/usr/bin/chromium'], ['the test guest ISO', guestIso]]) {
    assert.ok(existsSync(path), `${what} missing at ${path} (scripts/test.sh builds and installs it)`);
  }
  mkdirSync(shots, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-ui-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  // A test run keeps every server's log, at every level of our code, for tests/logs/scan_secrets.py.
  const keptLogs = process.env.FASTVM_TEST_LOGS;
  if (keptLogs) mkdirSync(keptLogs, { recursive: true });
  const stderr = keptLogs ? openSync(join(keptLogs, `ui-${port}.log`), 'w') : 'inherit';
  server = spawn(fastvm, ['serve'], {
    env: {
      ...(keptLogs && !process.env.RUST_LOG ? { RUST_LOG: 'info,controller=trace,fastvm=trace,tower_http=debug' } : {}),
      ...process.env,
      FASTVM_LISTEN: `127.0.0.1:${port}`,
      FASTVM_DATA_DIR: dataDir,
      FASTVM_RUN_DIR: join(dataDir, 'r'),
      FASTVM_PRODUCTION: '1',
      FASTVM_BCRYPT_COST: '4',
      FASTVM_LOGIN_RATE_LIMIT: 'off',
      FASTVM_ACCEL: 'tcg',
      FASTVM_ISO_DIRS: dirname(guestIso),
      FASTVM_PORT_FORWARD_BIND: '127.0.0.1',
      FASTVM_VMRUNNER: vmrunner,
      FASTVM_METRICS_INTERVAL: '2',
    },
    stdio: ['ignore', 'ignore', stderr],
  });
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(base + '/api/health')).ok) break;
    } catch {
      // not listening yet
    }
    assert.ok(i < 100, 'fastvm did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_FLAGS });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  if (process.env.FASTVM_TEST_LOGS && existsSync(join(dataDir, 'jwt_secret'))) {
    copyFileSync(join(dataDir, 'jwt_secret'), join(process.env.FASTVM_TEST_LOGS, `ui-${base.split(':').pop()}.secrets`));
  }
  // VMs this test started end with the server's data: force-stop what may still run.
  spawn('pkill', ['-f', dataDir]).once('exit', () => rmSync(dataDir, { recursive: true, force: true }));
});

// Each test answers for the problems of its own pages.
beforeEach(() => {
  problems.length = 0;
});

/** A page that records every problem: page errors, CSP violations, requests to other hosts. */
async function watchedPage(viewport) {
  const context = await browser.newContext({ viewport });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error('CSP violation: ' + e.violatedDirective));
  });
  return watch(await context.newPage());
}

/** Records the page's problems (also for a window the dashboard opens). */
function watch(page) {
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|CSP violation/.test(m.text())) problems.push(m.text());
  });
  page.on('request', (r) => {
    // blob: URLs are the page's own (screen thumbnails); data: never leaves the page.
    const raw = r.url().startsWith('blob:') ? r.url().slice(5) : r.url();
    const url = new URL(raw);
    if (url.protocol !== 'data:' && (!['http:', 'ws:'].includes(url.protocol) || url.host !== new URL(base).host)) {
      problems.push('request to another host: ' + r.url());
    }
  });
  return page;
}

async function shoot(page, name) {
  await page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
}

async function setTheme(page, theme) {
  const dark = await page.evaluate(() => document.documentElement.classList.contains('dark'));
  if ((theme === 'dark') !== dark) await page.getByRole('button', { name: /theme/ }).click();
}

test('an admin signs in, changes the password, creates, starts, watches and deletes a VM', async () => {
  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await shoot(page, 'login');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('admin');
  await page.getByRole('button', { name: 'Sign in' }).click();

  await page.getByRole('heading', { name: 'Choose a new password' }).waitFor();
  await shoot(page, 'change-password');
  await page.getByLabel('Current password').fill('admin');
  await page.getByLabel('New password', { exact: true }).fill('browser-pass-1');
  await page.getByLabel('New password again').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Change password' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  const token = await tokenOf('admin', 'browser-pass-1');
  assert.equal((await api('GET', '/api/auth/me', token)).body.must_change_password, false);

  // Create through the form; a bad value shows the server's message and keeps what was typed.
  await page.getByRole('button', { name: 'New VM' }).click();
  await page.getByLabel('Name').fill('browser/vm');
  await page.getByLabel('Memory (MiB)').fill('256');
  await page.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('alert').filter({ hasText: 'name' }).waitFor();
  await shoot(page, 'create-error');
  assert.equal(await page.getByLabel('Memory (MiB)').inputValue(), '256', 'the form keeps what was typed');
  await page.getByLabel('Name').fill('browser vm');
  await page.getByLabel('Disk (GB)').fill('1');
  await page.getByLabel('Boot ISO').selectOption({ label: 'fastvm-test-guest.iso' });
  await page.getByLabel('Firmware').selectOption('bios');
  await page.getByRole('button', { name: 'Create' }).click();
  const card = page.locator('article[data-vm="browser vm"]');
  await card.waitFor();
  const vms = (await api('GET', '/api/vms', token)).body;
  const vm = vms.find((v) => v.name === 'browser vm');
  assert.ok(vm, 'the API has the VM');
  assert.equal(vm.iso_path, guestIso);

  // Edit it: more memory, a forwarded port, the CD first in the boot order.
  await card.getByRole('button', { name: 'Edit' }).click();
  await page.getByRole('heading', { name: 'Edit browser vm' }).waitFor();
  await page.getByLabel('Memory (MiB)').fill('300');
  await page.getByRole('button', { name: 'Add port forward' }).click();
  await page.getByLabel('Host port').fill('18080');
  await page.getByLabel('Guest port').fill('22');
  await page.getByRole('button', { name: 'Move cdrom up' }).click();
  await shoot(page, 'edit-form-dark-desktop');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.getByRole('dialog').waitFor({ state: 'detached' });
  const edited = (await api('GET', `/api/vms/${vm.id}`, token)).body;
  assert.equal(edited.memory, 300);
  assert.deepEqual(edited.networks[0].port_forwards, [{ host_port: 18080, guest_port: 22, protocol: 'tcp' }]);
  assert.deepEqual(edited.boot_order, ['cdrom', 'disk']);
  assert.equal(edited.networks[0].mac_address, vm.networks[0].mac_address, 'the MAC is kept');

  await card.getByRole('button', { name: 'Start' }).click();
  await card.getByTestId('status').filter({ hasText: 'running' }).waitFor({ timeout: 60000 });
  // Paused and resumed from its card: the state shows, the buttons follow it.
  await card.getByRole('button', { name: 'Pause' }).click();
  await card.getByTestId('status').filter({ hasText: 'paused' }).waitFor({ timeout: 10000 });
  assert.equal((await api('GET', `/api/vms/${vm.id}`, token)).body.state, 'paused');
  await card.getByRole('button', { name: 'Pause' }).waitFor({ state: 'hidden' });
  await shoot(page, 'vm-paused-card');
  await card.getByRole('button', { name: 'Resume' }).click();
  await card.getByTestId('status').filter({ hasText: 'running' }).waitFor({ timeout: 10000 });
  await page.getByTestId('live-mode').filter({ hasText: 'Live' }).waitFor();
  assert.equal(await page.getByTestId('count-running').textContent(), '1');
  // Its card shows its screen (a thumbnail refreshed while the dashboard shows).
  const thumb = card.getByTestId('thumbnail');
  await thumb.waitFor({ timeout: 30000 });
  await page.waitForFunction((el) => el.complete && el.naturalWidth === 320, await thumb.elementHandle());
  await shoot(page, 'dashboard-thumbnail');

  // Its page: the guest's serial output shows it booted; a snapshot of the running guest (with RAM).
  await card.getByRole('link', { name: 'browser vm' }).click();
  await page.getByTestId('vm-name').filter({ hasText: 'browser vm' }).waitFor();
  const deadline = Date.now() + 180000;
  while (!(await page.getByTestId('serial-log').textContent()).includes('FASTVM-GUEST-READY')) {
    assert.ok(Date.now() < deadline, 'the serial log view never showed FASTVM-GUEST-READY');
    await page.waitForTimeout(2000);
    await page.getByRole('button', { name: 'Refresh' }).click();
  }
  // The guest agent answers (the test guest runs qemu-ga).
  while (!(await page.getByTestId('guest-info').textContent()).includes('fastvm-guest')) {
    assert.ok(Date.now() < deadline, 'the guest agent never answered: ' + (await page.getByTestId('guest-reason').textContent()));
    await page.waitForTimeout(2000);
    await page.getByRole('button', { name: 'Refresh' }).click();
  }
  // The serial terminal: its code loads only now; what is typed runs in the guest.
  const chunks = [];
  page.on('request', (r) => {
    if (/\/assets\/chunk-/.test(r.url())) chunks.push(r.url());
  });
  assert.deepEqual(chunks, [], 'no console code before a console opens');
  await page.getByRole('button', { name: 'Open serial terminal' }).click();
  const terminal = page.getByTestId('serial-terminal');
  await terminal.locator('.xterm-rows').filter({ hasText: 'FASTVM' }).waitFor({ timeout: 30000 });
  assert.equal(chunks.length, 1, 'the terminal came in its own chunk (and nothing of the graphical consoles)');
  await terminal.click();
  await page.keyboard.type('echo FASTVM-SERIAL-$((40+2))');
  await page.keyboard.press('Enter');
  await terminal.locator('.xterm-rows').filter({ hasText: 'FASTVM-SERIAL-42' }).waitFor({ timeout: 30000 });
  await shoot(page, 'vm-serial-terminal');
  await page.getByRole('button', { name: 'Close terminal' }).click();
  await page.getByRole('button', { name: 'Refresh' }).click();
  await page.getByTestId('serial-log').filter({ hasText: 'FASTVM-SERIAL-42' }).waitFor();

  // A new volume, hot-plugged into the running guest.
  await page.getByLabel('New volume').fill('hot disk');
  await page.getByLabel('GB', { exact: true }).fill('1');
  await page.getByRole('button', { name: 'Create and attach' }).click();
  await page.locator('li[data-attached="hot disk"]').waitFor({ timeout: 60000 });
  const hot = (await api('GET', '/api/volumes', token)).body.find((v) => v.name === 'hot disk');
  assert.equal(hot.attached_to, vm.id);
  await page.getByLabel('Snapshot name').fill('first');
  await page.getByRole('button', { name: 'Take snapshot' }).click();
  await page.locator('li[data-snapshot="first"]').getByText('with RAM').waitFor({ timeout: 120000 });
  const snaps = (await api('GET', `/api/vms/${vm.id}/snapshots`, token)).body;
  assert.deepEqual(snaps.map((x) => [x.name, x.vm_state]), [['first', true]]);
  for (const theme of ['dark', 'light']) {
    await setTheme(page, theme);
    await shoot(page, `vm-page-${theme}-desktop`);
  }
  await setTheme(page, 'dark');
  // A backup of the running guest, its progress bar reaching 100%; a nightly schedule.
  await page.getByRole('button', { name: 'Back up now' }).click();
  await page.getByTestId('backup-job').filter({ hasText: 'backup done' }).waitFor({ timeout: 120000 });
  assert.equal(await page.getByRole('progressbar', { name: 'Backup progress' }).getAttribute('aria-valuenow'), '100');
  const backups = (await api('GET', '/api/backups', token)).body.filter((b) => b.vm_id === vm.id);
  assert.equal(backups.length, 1);
  await page.getByRole('button', { name: 'Set schedule' }).click();
  await page.getByTestId('schedule').filter({ hasText: 'cron 0 3 * * *' }).waitFor();
  assert.equal((await api('GET', `/api/vms/${vm.id}/backup-schedule`, token)).body.keep, 7);
  await page.getByRole('button', { name: /^Jobs/ }).click();
  await page.locator('aside [data-job="backup"]').first().waitFor();
  await shoot(page, 'vm-page-jobs-dark-desktop');
  await page.getByRole('button', { name: 'Close', exact: true }).click();
  // That backup restored as a new VM, from the Backups view.
  await page.getByRole('link', { name: 'Backups' }).click();
  const entry = page.locator(`li[data-backup="${backups[0].id}"]`);
  await entry.getByLabel('New VM name').fill('browser restored');
  await entry.getByRole('button', { name: 'Restore' }).click();
  await page.locator('nav').getByText('browser restored').waitFor({ timeout: 120000 });
  const restored = (await api('GET', '/api/vms', token)).body.find((v) => v.name === 'browser restored');
  assert.ok(restored && restored.memory === 300, 'the restored VM has the configuration backed up');
  await page.goto(base + '/#/vm/' + vm.id);
  const item = page.locator(`li[data-vm-backup="${backups[0].id}"]`);
  const [download] = await Promise.all([page.waitForEvent('download'), item.getByRole('button', { name: 'Download' }).click()]);
  // One standalone archive, packed from the chunks (a zstd stream).
  assert.deepEqual([...readFileSync(await download.path()).subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
  await item.getByRole('button', { name: 'Delete' }).click();
  await item.waitFor({ state: 'detached' });
  assert.equal((await api('GET', '/api/backups', token)).body.length, 0);

  // The snapshot goes again (a clone of a VM with snapshots is a full copy; this one is copy-on-write).
  await page.locator('li[data-snapshot="first"]').getByRole('button', { name: 'Delete' }).click();
  await page.locator('li[data-snapshot="first"]').waitFor({ state: 'detached', timeout: 60000 });
  assert.deepEqual((await api('GET', `/api/vms/${vm.id}/snapshots`, token)).body, []);
  await page.getByRole('link', { name: 'Dashboard' }).click();
  // Stopped behind the page's back: the push tells it, with no reload.
  assert.equal((await api('POST', `/api/vms/${vm.id}/stop?force=true`, token)).status, 200);
  await card.getByTestId('status').filter({ hasText: 'stopped' }).waitFor({ timeout: 10000 });
  assert.equal(await page.getByTestId('count-running').textContent(), '0');

  // Clone it (copy-on-write) from its card.
  await card.getByRole('button', { name: 'Clone' }).click();
  await page.getByLabel('Name').fill('browser clone');
  await page.getByRole('button', { name: 'Clone' }).last().click();
  await page.locator('article[data-vm="browser clone"]').waitFor();
  const clone = (await api('GET', '/api/vms', token)).body.find((v) => v.name === 'browser clone');
  assert.ok(clone && clone.memory === 300, 'the clone has the source\'s memory');

  for (const theme of ['dark', 'light']) {
    await setTheme(page, theme);
    await page.setViewportSize({ width: 1280, height: 800 });
    await shoot(page, `dashboard-${theme}-desktop`);
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    assert.equal(overflow, false, `horizontal scrolling at 390 px (${theme})`);
    await shoot(page, `dashboard-${theme}-390`);
  }
  await setTheme(page, 'dark');
  await page.setViewportSize({ width: 1280, height: 800 });

  await card.getByRole('button', { name: 'Delete' }).click();
  await page.getByText('Delete browser vm with its disk?').waitFor();
  await shoot(page, 'confirm-delete');
  await page.getByRole('alertdialog').getByRole('button', { name: 'Delete' }).click();
  await card.waitFor({ state: 'detached' });
  assert.equal((await api('GET', `/api/vms/${vm.id}`, token)).status, 404);
  assert.equal((await api('DELETE', `/api/volumes/${hot.id}`, token)).status, 200, 'its volume was let go');
  assert.equal((await api('DELETE', `/api/vms/${restored.id}`, token)).status, 200);
  for (const v of (await api('GET', '/api/volumes', token)).body) {
    assert.equal((await api('DELETE', `/api/volumes/${v.id}`, token)).status, 200, 'the restored VM\'s copy of the volume');
  }
  assert.deepEqual(problems, []);
});

/** Resolves once the console's canvas shows something other than one colour. */
async function screenDrawn(page, selector = '#console-screen canvas') {
  await page.waitForFunction((sel) => {
    const canvas = document.querySelector(sel);
    if (!canvas || canvas.width < 100) return false;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 4; i < data.length; i += 4 * 97) if (data[i] !== data[0] || data[i + 1] !== data[1]) return true;
    return false;
  }, selector, { timeout: 30000 }).catch(async (e) => {
    await shoot(page, 'console-not-drawn');
    // What the page saw, so that a failure in CI says why without its screenshot.
    const seen = await page.evaluate((sel) => {
      const canvas = document.querySelector(sel);
      const colours = new Set();
      if (canvas && canvas.width > 0 && canvas.height > 0) {
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 0; i < data.length; i += 4 * 97) colours.add(data.slice(i, i + 3).join(','));
      }
      return {
        note: document.querySelector('[data-testid="console-note"]')?.textContent,
        visibility: document.visibilityState,
        canvas: canvas ? `${canvas.width}x${canvas.height}` : 'none',
        colours: [...colours].slice(0, 5),
      };
    }, selector).catch((err) => ({ error: String(err) }));
    e.message += ` (the console: ${JSON.stringify(seen)})`;
    throw e;
  });
}

/** Waits until the VM's serial log holds `marker` `times` times. */
async function serialShows(token, id, marker, times = 1) {
  const deadline = Date.now() + 60000;
  for (;;) {
    const log = (await api('GET', `/api/vms/${id}/logs?lines=200`, token)).body.serial_log;
    if (log.split(marker).length - 1 >= times) return;
    assert.ok(Date.now() < deadline, `the serial log never showed ${marker} (${times}×)`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

test('the graphical consoles (SPICE and VNC) and the monitoring charts, on a running guest', async () => {
  const token = await tokenOf('admin', 'browser-pass-1');
  const made = await api('POST', '/api/vms', token, {
    name: 'console vm', memory: 256, cpus: 1, disk_size: 1, iso_path: guestIso, firmware: 'bios', boot_order: ['cdrom', 'disk'],
  });
  assert.equal(made.status, 200, JSON.stringify(made.body));
  const vm = made.body.vm;
  assert.equal((await api('POST', `/api/vms/${vm.id}/start`, token)).status, 200);
  await serialShows(token, vm.id, 'FASTVM-GUEST-READY');

  const page = await watchedPage({ width: 1440, height: 900 });
  const chunks = [];
  page.on('request', (r) => {
    if (/\/assets\/chunk-/.test(r.url())) chunks.push(r.url());
  });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.goto(base + '/#/vm/' + vm.id);
  await page.getByTestId('vm-name').filter({ hasText: 'console vm' }).waitFor();
  // The page's charts have drawn the VM's history (their code came in its own chunk).
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="page-cpu"]')?.dataset.points) > 1, null, { timeout: 30000 });
  const beforeConsole = chunks.length;

  // SPICE in the split panel: its code comes only now; the guest's screen is drawn.
  let clicked = Date.now();
  await page.getByRole('button', { name: 'SPICE console' }).click();
  await screenDrawn(page);
  const spiceFrameMs = Date.now() - clicked;
  assert.ok(chunks.length > beforeConsole, 'the SPICE client came in a chunk of its own when the console opened');
  const spiceChunks = chunks.slice(beforeConsole);
  assert.equal(await page.getByTestId('console-title').textContent(), 'console vm · SPICE');
  // "Type text" reaches the shell on the guest's first console, which writes to the serial port.
  await page.getByLabel('Text to type').fill('echo FASTVM-KEYS-OK > /dev/ttyS0');
  await page.getByRole('button', { name: 'Type text' }).click();
  await serialShows(token, vm.id, 'FASTVM-KEYS-OK');
  // Ctrl+Alt+Del reaches the guest's keyboard: the test guest reports it on serial.
  await page.getByRole('button', { name: 'Ctrl+Alt+Del' }).click();
  await serialShows(token, vm.id, 'FASTVM-CTRL-ALT-DEL');
  await shoot(page, 'console-spice-split');
  // The split panel is resized by its edge; the screen stays scaled inside it.
  const edge = page.getByRole('separator', { name: 'Resize the console' });
  const box = await edge.boundingBox();
  await page.mouse.move(box.x + 3, box.y + 200);
  await page.mouse.down();
  await page.mouse.move(box.x - 200, box.y + 200, { steps: 5 });
  await page.mouse.up();
  const fit = await page.evaluate(() => {
    const panel = document.getElementById('console-panel');
    const canvas = document.querySelector('#console-screen canvas');
    return { panel: panel.clientWidth, canvas: canvas.getBoundingClientRect().width };
  });
  assert.ok(fit.panel > Math.round(1440 / 2) + 150, `the panel grew: ${fit.panel}px`);
  assert.ok(fit.panel <= 1440 - 560, 'the view keeps its room');
  assert.ok(fit.canvas <= fit.panel, 'the screen fits the panel');
  // Fullscreen, and back.
  await page.getByRole('button', { name: 'Fullscreen' }).click();
  await page.waitForFunction(() => document.fullscreenElement && document.fullscreenElement.id === 'console-panel');
  await shoot(page, 'console-spice-fullscreen');
  await page.evaluate(() => document.exitFullscreen());
  // A remote-viewer file for the same console.
  const [vv] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'remote-viewer file' }).click()]);
  const vvText = readFileSync(await vv.path(), 'utf8');
  assert.match(vvText, /^\[virt-viewer\]\ntype=spice\n/);
  assert.match(vvText, /\npassword=\w{24}\n/);

  // Popped out into a window of its own: the console leaves this page for it.
  const [popup] = await Promise.all([page.waitForEvent('popup'), page.getByRole('button', { name: 'Pop out' }).click()]);
  watch(popup);
  await screenDrawn(popup);
  await page.getByRole('complementary', { name: 'Console' }).waitFor({ state: 'hidden' });
  await popup.setViewportSize({ width: 1024, height: 800 });
  await shoot(popup, 'console-popped-out');
  // Its Close button closes the window (the click itself may not see its end).
  await Promise.all([popup.waitForEvent('close'), popup.getByRole('button', { name: 'Close console' }).click().catch(() => {})]);
  // Back to the main window, as a user would be (a page behind another window may not draw).
  await page.bringToFront();

  // noVNC: the same drawing and typing; a combination from the key menu.
  clicked = Date.now();
  await page.getByRole('button', { name: 'VNC console' }).click();
  await screenDrawn(page);
  const vncFrameMs = Date.now() - clicked;
  assert.ok(chunks.slice(beforeConsole).some((c) => !spiceChunks.includes(c)), 'noVNC came in its own chunk');
  await page.getByLabel('Text to type').fill('echo FASTVM-VNC-KEYS-OK > /dev/ttyS0');
  await page.getByRole('button', { name: 'Type text' }).click();
  await serialShows(token, vm.id, 'FASTVM-VNC-KEYS-OK');
  await page.getByLabel('Send keys').selectOption('Ctrl+Alt+Del');
  await serialShows(token, vm.id, 'FASTVM-CTRL-ALT-DEL', 2);
  await shoot(page, 'console-vnc-split');
  await page.getByRole('button', { name: 'Close console' }).click();
  console.log(`# first frame after clicking Console: SPICE ${spiceFrameMs} ms, VNC ${vncFrameMs} ms`);

  // Monitoring: make the guest busy through the serial terminal; the VM's CPU line rises live.
  await page.getByRole('link', { name: 'Monitoring' }).click();
  await page.getByRole('heading', { name: 'Monitoring' }).waitFor();
  await page.getByLabel('VM to show').selectOption(vm.id);
  const cpuOf = async () => Number.parseFloat(await page.locator('[data-chart="vm-cpu"] [data-testid="chart-latest"]').textContent()) || 0;
  const hostPoints = async () => Number(await page.locator('[data-chart="host-cpu"]').getAttribute('data-points'));
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="host-cpu"]')?.dataset.points) > 2, null, { timeout: 30000 });
  const idle = await cpuOf();
  const pointsBefore = await hostPoints();
  await page.getByRole('link', { name: 'console vm' }).click();
  await page.getByRole('button', { name: 'Open serial terminal' }).click();
  const terminal = page.getByTestId('serial-terminal');
  await terminal.locator('.xterm-rows').filter({ hasText: 'FASTVM' }).waitFor({ timeout: 30000 });
  await terminal.click();
  await page.keyboard.type('while :; do :; done &');
  await page.keyboard.press('Enter');
  await page.getByRole('link', { name: 'Monitoring' }).click();
  await page.getByLabel('VM to show').selectOption(vm.id);
  const busyDeadline = Date.now() + 60000;
  let busy = await cpuOf();
  while (!(busy >= 70 && busy > idle + 20)) {
    assert.ok(Date.now() < busyDeadline, `the VM's CPU line never rose (idle ${idle} %, now ${busy} %)`);
    await page.waitForTimeout(1000);
    busy = await cpuOf();
  }
  assert.ok((await hostPoints()) > pointsBefore, 'the host charts move with live data');
  for (const theme of ['dark', 'light']) {
    await setTheme(page, theme);
    await page.getByRole('button', { name: '10 min' }).click();
    await page.waitForFunction(() => Number(document.querySelector('[data-chart="vm-cpu"]')?.dataset.points) > 2);
    await shoot(page, `monitoring-${theme}-desktop`);
  }
  await setTheme(page, 'dark');
  await page.getByRole('button', { name: '24 h' }).click();
  await page.getByRole('button', { name: '24 h' }).and(page.locator('.btn-primary')).waitFor();

  // The VM stops under an open console: the panel says so.
  await page.getByRole('link', { name: 'console vm' }).click();
  await page.getByRole('button', { name: 'SPICE console' }).click();
  await screenDrawn(page);
  assert.equal((await api('POST', `/api/vms/${vm.id}/stop?force=true`, token)).status, 200);
  await page.getByTestId('console-note').filter({ hasText: 'VM stopped' }).waitFor({ timeout: 20000 });
  await page.getByRole('button', { name: 'Reconnect' }).click();
  await page.getByTestId('console-note').filter({ hasText: 'VM stopped' }).waitFor({ timeout: 20000 });
  await shoot(page, 'console-vm-stopped');
  await page.getByRole('button', { name: 'Close console' }).click();
  assert.equal((await api('DELETE', `/api/vms/${vm.id}`, token)).status, 200);
  assert.deepEqual(problems, []);
});

test('a regular user sees neither Users nor Audit, nor other users\' VMs', async () => {
  const admin = await tokenOf('admin', 'browser-pass-1');
  assert.equal((await api('POST', '/api/auth/users', admin, { username: 'carol', password: 'carol-pass-1', is_admin: false })).status, 200);
  assert.equal((await api('POST', '/api/vms', admin, { name: 'admins vm', memory: 256, cpus: 1, disk_size: 1 })).status, 200);
  const carol = await tokenOf('carol', 'carol-pass-1');
  assert.equal((await api('POST', '/api/vms', carol, { name: 'carols vm', memory: 256, cpus: 1, disk_size: 1 })).status, 200);

  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('carol');
  await page.getByLabel('Password').fill('carol-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  await page.locator('article[data-vm="carols vm"]').waitFor();
  assert.equal(await page.locator('article[data-vm="admins vm"]').count(), 0);
  assert.equal(await page.getByRole('link', { name: 'Users' }).count(), 0);
  assert.equal(await page.getByRole('link', { name: 'Audit' }).count(), 0);
  await page.goto(base + '/#/users');
  await page.getByText('This view is for admins only.').waitFor();
  await shoot(page, 'regular-user-admin-view');
  assert.deepEqual(problems, []);
});

test('volumes, ISOs and backups are managed from their views', async () => {
  const token = await tokenOf('admin', 'browser-pass-1');
  const made = await api('POST', '/api/vms', token, { name: 'storage vm', memory: 256, cpus: 1, disk_size: 1, firmware: 'bios' });
  assert.equal(made.status, 200, JSON.stringify(made.body));
  const vmId = made.body.vm.id;
  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();

  // A volume: created, attached to the (stopped) VM, detached, deleted.
  await page.getByRole('link', { name: 'Volumes' }).click();
  await page.getByLabel('Name').fill('data disk');
  await page.getByLabel('Size (GB)').fill('2');
  await page.getByRole('button', { name: 'Create volume' }).click();
  const row = page.locator('li[data-volume="data disk"]');
  await row.waitFor();
  // Attached from the VM's own page, seen attached in the Volumes view.
  await page.goto(base + '/#/vm/' + vmId);
  await page.getByLabel('Volume to attach').selectOption({ label: 'data disk' });
  await page.locator('[aria-label="Volumes of this VM"]').getByRole('button', { name: 'Attach', exact: true }).click();
  await page.locator('li[data-attached="data disk"]').waitFor();
  await page.getByRole('link', { name: 'Volumes' }).click();
  await row.getByTestId('attachment').filter({ hasText: 'attached to storage vm' }).waitFor();
  const [vol] = (await api('GET', '/api/volumes', token)).body;
  assert.equal(vol.attached_to, vmId);
  await shoot(page, 'volumes-dark-desktop');
  await row.getByRole('button', { name: 'Detach' }).click();
  await row.getByTestId('attachment').filter({ hasText: 'not attached' }).waitFor();
  await row.getByRole('button', { name: 'Delete' }).click();
  await row.waitFor({ state: 'detached' });
  assert.deepEqual((await api('GET', '/api/volumes', token)).body, []);

  // An ISO upload (8 MiB) with its progress bar, then its deletion.
  await page.getByRole('link', { name: 'ISOs' }).click();
  const percents = [];
  page.on('console', () => {});
  await page.exposeFunction('recordPercent', (p) => percents.push(p));
  await page.evaluate(() => {
    new MutationObserver(() => {
      const el = document.querySelector('[data-testid="upload-percent"]');
      if (el) window.recordPercent(el.textContent);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.getByLabel('ISO file').setInputFiles({ name: 'tools.iso', mimeType: 'application/octet-stream', buffer: Buffer.alloc(8 << 20) });
  const iso = page.locator('li[data-iso="tools.iso"]');
  await iso.waitFor();
  assert.ok(percents.length > 0, 'the progress bar showed');
  assert.ok((await api('GET', '/api/isos', token)).body.some((i) => i.name === 'tools.iso'));
  await shoot(page, 'isos-dark-desktop');
  await iso.getByRole('button', { name: 'Delete' }).click();
  await iso.waitFor({ state: 'detached' });

  // A cloud-init seed, given to the VM as its second ISO.
  await page.getByLabel('Hostname').fill('seeded');
  await page.getByLabel('User', { exact: true }).fill('ops');
  await page.getByLabel("User's password").fill('ops-password');
  await page.getByLabel(/^Packages/).fill('curl, htop');
  await page.getByRole('button', { name: 'Create seed' }).click();
  const seedPath = (await page.getByTestId('seed-path').textContent()).trim();
  assert.ok(seedPath.includes('/cloudinit/seeded-'), seedPath);
  assert.ok((await api('GET', '/api/isos', token)).body.some((i) => i.path === seedPath));
  await page.getByLabel('VM to give the seed').selectOption({ label: 'storage vm' });
  await page.getByRole('button', { name: 'Use as second ISO' }).click();
  await page.getByText('storage vm gets the seed').waitFor();
  assert.equal((await api('GET', `/api/vms/${vmId}`, token)).body.secondary_iso_path, seedPath);
  await shoot(page, 'isos-cloudinit-dark-desktop');

  // A backup, restored as a new VM from the Backups view, then deleted.
  assert.equal((await api('POST', `/api/vms/${vmId}/backup`, token)).status, 200);
  await page.getByRole('link', { name: 'Backups' }).click();
  const [backup] = (await api('GET', '/api/backups', token)).body;
  const entry = page.locator(`li[data-backup="${backup.id}"]`);
  await entry.waitFor();
  await entry.getByLabel('New VM name').fill('from backup');
  await entry.getByRole('button', { name: 'Restore' }).click();
  await page.locator('nav').getByText('from backup').waitFor();
  assert.ok((await api('GET', '/api/vms', token)).body.some((v) => v.name === 'from backup'));
  // Verified from the list: every chunk read again and checked.
  assert.match(await entry.getByTestId('backup-kind').textContent(), /^full, read /);
  await entry.getByRole('button', { name: 'Verify' }).click();
  await page.getByText('backup verified').waitFor();
  await entry.getByText('verified', { exact: false }).last().waitFor();
  assert.ok((await api('GET', '/api/backups', token)).body.find((b) => b.id === backup.id).verified);
  await shoot(page, 'backups-dark-desktop');

  // Downloaded through a ticketed link (the browser writes it to disk), uploaded again to restore.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    entry.getByRole('button', { name: 'Download' }).click(),
  ]);
  const saved = join(dataDir, 'downloaded.tar.zst');
  await download.saveAs(saved);
  assert.ok(statSync(saved).size > 0);
  await page.getByLabel('Name of the restored VM (optional)').fill('from upload');
  await page.getByLabel('Backup archive').setInputFiles(saved);
  await page.locator('nav').getByText('from upload').waitFor({ timeout: 60000 });
  assert.ok((await api('GET', '/api/vms', token)).body.some((v) => v.name === 'from upload'));

  await entry.getByRole('button', { name: 'Delete' }).click();
  await entry.waitFor({ state: 'detached' });
  for (const b of (await api('GET', '/api/backups', token)).body) {
    assert.equal((await api('DELETE', `/api/backups/${b.id}`, token)).status, 200);
  }
  for (const v of (await api('GET', '/api/vms', token)).body) {
    assert.equal((await api('DELETE', `/api/vms/${v.id}?force=true`, token)).status, 200);
  }
  assert.deepEqual(problems, []);
});

test('an admin manages users and reads the audit log', async () => {
  const token = await tokenOf('admin', 'browser-pass-1');
  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByLabel('Username').fill('erin');
  await page.getByLabel('Password', { exact: true }).fill('erin-pass-1');
  await page.getByRole('button', { name: 'Create user' }).click();
  const erin = page.locator('li[data-user="erin"]');
  await erin.waitFor();
  assert.ok((await api('GET', '/api/auth/users', token)).body.some((u) => u.username === 'erin'));
  await erin.getByLabel('New password for this user').fill('reset-by-admin');
  await erin.getByRole('button', { name: 'Set password' }).click();
  await erin.getByText('must change password').waitFor();
  await tokenOf('erin', 'reset-by-admin');
  await shoot(page, 'users-dark-desktop');
  await erin.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('alertdialog').getByRole('button', { name: 'Take over their things' }).click();
  await erin.waitFor({ state: 'detached' });
  assert.ok(!(await api('GET', '/api/auth/users', token)).body.some((u) => u.username === 'erin'));

  await page.getByRole('link', { name: 'Audit' }).click();
  await page.getByLabel('Action').fill('user.create');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('tbody tr')];
    return rows.length > 0 && rows.every((r) => r.dataset.action === 'user.create');
  });
  await shoot(page, 'audit-dark-desktop');
  assert.deepEqual(problems, []);
});

test('a dashboard of 200 VMs is drawn, and how long it takes is measured', async () => {
  const token = await tokenOf('admin', 'browser-pass-1');
  for (let i = 0; i < 200; i += 20) {
    const batch = [];
    for (let k = i; k < i + 20; k++) {
      batch.push(api('POST', '/api/vms', token, { name: `load ${String(k).padStart(3, '0')}`, memory: 256, cpus: 1, disk_size: 1 }));
    }
    for (const r of await Promise.all(batch)) assert.equal(r.status, 200);
  }
  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  const total = (await api('GET', '/api/vms', token)).body.length;
  assert.ok(total >= 200, `${total} VMs`);
  const runs = [];
  for (let run = 0; run < 5; run++) {
    const started = Date.now();
    await page.reload();
    await page.waitForFunction((n) => document.querySelectorAll('article[data-vm]').length === n, total);
    runs.push(Date.now() - started);
  }
  runs.sort((a, b) => a - b);
  const line = `dashboard with ${total} VMs: navigation to all cards drawn, median of 5: ${runs[2]} ms (runs ${runs.join(', ')} ms)`;
  console.log(line);
  writeFileSync(join(shots, 'dashboard-200.txt'), line + '\n');
  await shoot(page, 'dashboard-200-dark-desktop');
  for (const v of (await api('GET', '/api/vms', token)).body) {
    assert.equal((await api('DELETE', `/api/vms/${v.id}?force=true`, token)).status, 200);
  }
  assert.deepEqual(problems, []);
});

test('bulk actions, your own password, modals that keep the keyboard, and every view in both themes and sizes', async () => {
  const token = await tokenOf('admin', 'browser-pass-1');
  for (const name of ['bulk a', 'bulk b']) {
    assert.equal((await api('POST', '/api/vms', token, { name, memory: 256, cpus: 1, disk_size: 1 })).status, 200);
  }
  const page = await watchedPage({ width: 1280, height: 800 });
  await page.goto(base + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('browser-pass-1');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('article[data-vm="bulk b"]').waitFor();

  // Every view, dark and light, desktop and 390 px wide, none scrolling sideways.
  const bulkA = (await api('GET', '/api/vms', token)).body.find((v) => v.name === 'bulk a');
  for (const route of ['dashboard', 'vm/' + bulkA.id, 'volumes', 'backups', 'isos', 'monitoring', 'users', 'audit']) {
    await page.goto(base + '/#/' + route);
    await page.waitForTimeout(300);
    for (const theme of ['dark', 'light']) {
      await setTheme(page, theme);
      for (const [size, viewport] of [['desktop', { width: 1280, height: 800 }], ['390', { width: 390, height: 844 }]]) {
        await page.setViewportSize(viewport);
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
        assert.equal(overflow, false, `${route} scrolls sideways at ${size} (${theme})`);
        await shoot(page, `view-${route.split('/')[0]}-${theme}-${size}`);
      }
    }
  }
  await setTheme(page, 'dark');
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(base + '/#/dashboard');

  // Select both, delete them together after a confirmation that names them.
  for (const name of ['bulk a', 'bulk b']) await page.getByLabel('Select ' + name).check();
  await page.getByText('2 selected').waitFor();
  await page.getByRole('button', { name: 'Delete selected' }).click();
  await shoot(page, 'bulk-confirm');
  // Named in name order, whatever order the VMs were listed in.
  await page.getByText('Delete 2 VMs (bulk a, bulk b) with their disks?').waitFor();
  // The dialog keeps Tab inside it and closes with Escape.
  for (let i = 0; i < 4; i++) await page.keyboard.press('Tab');
  assert.ok(await page.evaluate(() => document.querySelector('[aria-modal="true"]').contains(document.activeElement)));
  await page.keyboard.press('Escape');
  await page.getByRole('alertdialog').waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Delete selected' }).click();
  await page.getByRole('alertdialog').getByRole('button', { name: 'Delete' }).click();
  await page.locator('article[data-vm="bulk a"]').waitFor({ state: 'detached' });
  await page.locator('article[data-vm="bulk b"]').waitFor({ state: 'detached' });
  assert.ok(!(await api('GET', '/api/vms', token)).body.some((v) => v.name.startsWith('bulk')));

  // Your own password, from the account button.
  await page.getByRole('button', { name: 'admin', exact: true }).click();
  await page.getByLabel('Current password').fill('browser-pass-1');
  await page.getByLabel('New password', { exact: true }).fill('browser-pass-2');
  await page.getByLabel('New password again').fill('browser-pass-2');
  await page.getByRole('dialog').getByRole('button', { name: 'Change password' }).click();
  await page.getByRole('dialog').waitFor({ state: 'detached' });
  await tokenOf('admin', 'browser-pass-2');
  assert.equal((await api('POST', '/api/auth/login', null, { username: 'admin', password: 'browser-pass-1' })).status, 401);
  assert.deepEqual(problems, []);
});
