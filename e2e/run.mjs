// sockgate's browser client end to end: a real sockgate (debug build) on a
// fresh SQLite file, the system Chromium driven by playwright-core.
//
//   npm --prefix e2e ci      # once
//   npm --prefix e2e test
//
// Screenshots and the server log land in target/e2e-artifacts/.
// Environment: CHROMIUM (default /usr/bin/chromium), CARGO_TARGET_DIR.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target');
const ARTIFACTS = path.join(ROOT, 'target', 'e2e-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 15_000;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let tmp; // fresh per run: database, binary copy
let bin;
let server; // the sockgate child process
let serverEnv;
let port;
let base; // the allowed origin, http://127.0.0.1:<port>
let browser;

function log(msg) {
  process.stdout.write(`[e2e] ${msg}\n`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port: p } = srv.address();
      srv.close(() => resolve(p));
    });
  });
}

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function killServer() {
  if (server && server.exitCode === null && server.signalCode === null) {
    server.kill('SIGKILL');
  }
}

// Whatever happens, the server does not outlive this process.
process.on('exit', killServer);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killServer();
    process.exit(130);
  });
}

async function waitForHealthy(url, ms) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) break;
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`sockgate did not become healthy at ${url} (${last}); exit code ${server.exitCode}\n${serverLogTail()}`);
}

function serverLogTail() {
  try {
    const lines = readFileSync(path.join(ARTIFACTS, 'server.log'), 'utf8').trimEnd().split('\n');
    return `--- server.log (last 30 lines) ---\n${lines.slice(-30).join('\n')}`;
  } catch {
    return '(no server log)';
  }
}

function sqlite(sql) {
  return execFileSync('sqlite3', ['-cmd', '.timeout 5000', path.join(tmp, 'e2e.db'), sql], {
    encoding: 'utf8',
  }).trim();
}

// The session id inside a browser's signed connect.sid cookie.
async function sessionIdOf(context) {
  const cookie = (await context.cookies(base)).find((c) => c.name === 'connect.sid');
  assert.ok(cookie, 'the browser holds a connect.sid cookie');
  assert.equal(cookie.httpOnly, true, 'connect.sid is HttpOnly');
  const signed = decodeURIComponent(cookie.value);
  assert.match(signed, /^s:[A-Za-z0-9_-]+\.[A-Za-z0-9+/]{43}$/);
  return signed.slice(2, signed.lastIndexOf('.'));
}

async function shot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`  screenshot ${path.relative(ROOT, file)}`);
}

// Runs a step in its own browser context; on failure saves a screenshot.
async function inContext(name, fn) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') log(`  [browser console] ${m.text()}`);
  });
  const started = Date.now();
  try {
    await fn({ context, page });
    log(`${name}: ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    log(`${name}: FAILED after ${((Date.now() - started) / 1000).toFixed(1)} s at ${page.url()}`);
    await shot(page, `${name}-FAILED`).catch(() => {});
    throw e;
  } finally {
    await context.close();
  }
}

async function signIn(page, button, userId) {
  await page.goto(`${base}/login.html`);
  await page.getByRole('button', { name: button }).click();
  // The form posts to /dev/login, which answers 303 to /app.html, or an
  // error page that stays at /dev/login.
  await page.waitForURL((u) => ['/app.html', '/dev/login'].includes(u.pathname), { timeout: WAIT });
  if (new URL(page.url()).pathname !== '/app.html') {
    throw new Error(`"${button}" was refused: ${(await page.textContent('body')).trim()}`);
  }
  await page.getByText(`Connected as ${userId}`, { exact: true }).waitFor({ timeout: WAIT });
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium chromium-driver`);
  assert.ok(have('sqlite3'), 'the sqlite3 command is missing: apt-get install -y sqlite3');
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });

  let t = Date.now();
  // Exactly what `cargo test --workspace` builds (the binary included, for
  // the integration tests), so after the test suite this is a no-op. A
  // narrower `cargo build --bin sockgate --tests` resolves features for one
  // package only and rebuilt engineioxide, socketioxide and sockgate.
  log('cargo test --workspace --no-run');
  const build = spawnSync('cargo', ['test', '--workspace', '--no-run', ...(process.env.CI ? ['--locked'] : [])], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  assert.equal(build.status, 0, 'cargo build failed');
  log(`built in ${((Date.now() - t) / 1000).toFixed(1)} s`);

  // A private copy, so that another build into a shared target directory
  // cannot swap the binary under the test.
  tmp = mkdtempSync(path.join(tmpdir(), 'sockgate-e2e-'));
  bin = path.join(tmp, 'sockgate');
  copyFileSync(path.join(TARGET, 'debug', 'sockgate'), bin);

  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  // A clean environment: nothing from the caller's (CI's DATABASE_URL, a
  // SESSION_SECRET, ...) leaks into the development server.
  serverEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    RUST_BACKTRACE: '1',
    RUST_LOG: process.env.RUST_LOG || 'info,sqlx=warn,sea_orm=warn,socketioxide=warn,engineioxide=warn',
    NO_COLOR: '1',
    DATABASE_URL: `sqlite://${path.join(tmp, 'e2e.db')}?mode=rwc`,
    LISTEN_ADDR: `127.0.0.1:${port}`,
    SESSION_CHECK_INTERVAL: '1s',
    ALLOWED_ORIGINS: base,
  };
  t = Date.now();
  const out = createWriteStream(path.join(ARTIFACTS, 'server.log'));
  server = spawn(bin, [], { env: serverEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  server.stdout.pipe(out);
  server.stderr.pipe(out);
  await waitForHealthy(base, 30_000);
  log(`sockgate (pid ${server.pid}) healthy at ${base} in ${((Date.now() - t) / 1000).toFixed(1)} s; database ${serverEnv.DATABASE_URL}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  log(`Chromium ${browser.version()} from ${CHROMIUM}`);
});

after(async () => {
  await browser?.close().catch(() => {});
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    const timer = setTimeout(() => server.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    log('sockgate stopped');
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('(a)+(b) dev signs in and connects; deleting the session row ends it', { timeout: 60_000 }, async () => {
  await inContext('a-dev-connected', async ({ context, page }) => {
    log('(a) sign in as dev (admin), expect "Connected as 1"');
    await signIn(page, 'Sign in as dev (admin)', '1');
    await shot(page, 'a-connected-as-dev');

    log('(b) delete the session row, expect the expiry notice, then the sign-in page');
    const sid = await sessionIdOf(context);
    const deleted = sqlite(`DELETE FROM "session" WHERE sid = '${sid}'; SELECT changes();`);
    assert.equal(deleted, '1', 'exactly one session row deleted');
    const notice = page.locator('#notice');
    await notice.getByText('Your session has expired').waitFor({ timeout: WAIT });
    assert.match(await page.locator('#status').textContent(), /Session ended/);
    await shot(page, 'b-session-expired-notice');
    assert.equal(page.url(), `${base}/app.html`, 'the notice is shown before leaving');
    await page.waitForURL(`${base}/login.html?reason=session-expired`, { timeout: WAIT });
    await page.locator('#notice').getByText('Your session has expired').waitFor({ timeout: WAIT });
    await shot(page, 'b-back-at-login');
  });
});

test('(c) an admin locks the guest out: lock message, then the start page', { timeout: 60_000 }, async () => {
  await inContext('c-guest-locked', async ({ page }) => {
    log('(c) sign in as guest, expect "Connected as 2"');
    await signIn(page, 'Sign in as guest', '2');
    await shot(page, 'c-connected-as-guest');

    log('(c) mint an admin cookie with `sockgate session mint --user 1`');
    const minted = execFileSync(bin, ['session', 'mint', '--user', '1'], { env: serverEnv, encoding: 'utf8' });
    const cookieLine = minted.split('\n').find((l) => l.startsWith('Cookie: '));
    assert.ok(cookieLine, `session mint printed a Cookie line:\n${minted}`);
    const adminCookie = cookieLine.slice('Cookie: '.length).trim();

    log('(c) POST /api/admin/guest/1/disconnect as the admin');
    const reason = 'e2e: guest locked by an admin';
    const res = await fetch(`${base}/api/admin/guest/1/disconnect`, {
      method: 'POST',
      headers: { Cookie: adminCookie, Origin: base, 'Content-Type': 'application/json' },
      body: JSON.stringify({ reason }),
    });
    const body = await res.text();
    assert.equal(res.status, 200, `admin disconnect answered ${res.status}: ${body}`);
    const json = JSON.parse(body);
    assert.equal(json.success, true);
    assert.ok(json.disconnected >= 1, `disconnected ${json.disconnected} socket(s)`);

    await page.locator('#status').getByText('Guest access revoked').waitFor({ timeout: WAIT });
    const notice = (await page.locator('#notice').textContent()).trim();
    assert.match(notice, /Going to the start page/);
    const message = notice.replace(/\s*Going to the start page.*$/, '');
    assert.ok(message.length > 0, 'the lock message is shown');
    log(`  lock message: ${JSON.stringify(message)}`);
    await shot(page, 'c-lock-notice');
    await page.waitForURL(`${base}/?notice=guest-locked`, { timeout: WAIT });
    await page.locator('#notice').getByText(message, { exact: true }).waitFor({ timeout: WAIT });
    await shot(page, 'c-start-page-with-message');

    log('(c) the locked guest cannot reconnect: "Guest access revoked", back to the start page');
    await page.goto(`${base}/app.html`);
    await page.locator('#status').getByText('Guest access revoked').waitFor({ timeout: WAIT });
    await page.waitForURL(`${base}/?notice=guest-locked`, { timeout: WAIT });
    await page.locator('#notice').getByText('revoked').waitFor({ timeout: WAIT });
    await shot(page, 'c-reconnect-refused');
  });
});

test('(d) a page on a disallowed origin is refused and stays put', { timeout: 60_000 }, async () => {
  await inContext('d-origin-refused', async ({ page }) => {
    const foreign = `http://localhost:${port}`;
    log(`(d) open ${foreign}/app.html (not in ALLOWED_ORIGINS), expect "Connection refused"`);
    await page.goto(`${foreign}/app.html`);
    await page.locator('#notice').getByText('Connection refused').waitFor({ timeout: WAIT });
    assert.match(await page.locator('#status').textContent(), /Not connected/);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(page.url(), `${foreign}/app.html`, 'no redirect');
    await shot(page, 'd-connection-refused');
    const serverLog = readFileSync(path.join(ARTIFACTS, 'server.log'), 'utf8');
    assert.ok(serverLog.includes(`origin=${foreign}`), 'the server logged the rejected origin');
  });
});
