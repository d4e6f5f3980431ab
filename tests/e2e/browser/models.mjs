#!/usr/bin/env node
// Model access and quotas in the real InvokeAI web UI through the guard (headless Chromium, playwright-core).
//
//   node models.mjs --base GUARD_URL --setup models.json --version V --out report.json
//                   [--shots DIR] [--log FILE] [--batch-out FILE] [--chromium /usr/bin/chromium]
//
// models.json is written by models_setup.py: dana (group interns of models-groups.toml: no SDXL main model, no
// "detail" LoRA, at most one queued item) and the names of the installed tiny models. The flow, as dana:
//   1. log in through the login form; the Generate tab;
//   2. open the main model picker: the SD 1.5 model is offered, the SDXL one is not (the guard filtered the list
//      the picker is filled from; InvokeAI itself would list it);
//   3. open the LoRA picker: the style LoRA is offered, the detail LoRA is not;
//   4. pick the SD 1.5 model, add the style LoRA, type a prompt, Invoke: the batch the UI builds is accepted (no
//      false deny; it stays queued, the processor is paused) and is saved to --batch-out;
//   5. Invoke again: over her quota of one queued item; the UI's error toast shows the guard's message.
// Prints one line per check and `PASS n/N leaks=L false_denies=F (InvokeAI V web UI models)` last.
// Exit status: 0 all checks passed, 1 a check failed, 2 usage/setup error.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    a[argv[i].slice(2)] = argv[i + 1];
  }
  for (const req of ['base', 'setup', 'version', 'out']) if (!a[req]) throw new Error(`missing --${req}`);
  return a;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`models.mjs: ${e.message}`);
  process.exit(2);
}
const BASE = args.base.replace(/\/+$/, '');
const CHROMIUM = args.chromium || '/usr/bin/chromium';
const S = JSON.parse(fs.readFileSync(args.setup, 'utf8'));
const t0 = Date.now();
if (args.log) fs.writeFileSync(args.log, '');
const say = (line) => {
  console.log(line);
  if (args.log) fs.appendFileSync(args.log, `${line}\n`);
};
const log = (msg) => say(`[models ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

const checks = [];
const CHECK_IDS = [
  'login accepted', 'generate tab shown', 'main model picker offers her model', 'main model picker hides the SDXL model',
  'LoRA picker offers the style LoRA', 'LoRA picker hides the detail LoRA', 'her web-UI batch is accepted',
  'over quota: the UI shows the guard\'s message',
];
const KIND = {
  'main model picker hides the SDXL model': 'LEAK', 'LoRA picker hides the detail LoRA': 'LEAK',
  'main model picker offers her model': 'FALSE_DENY', 'LoRA picker offers the style LoRA': 'FALSE_DENY',
  'her web-UI batch is accepted': 'FALSE_DENY',
};
function check(name, ok, detail = '') {
  checks.push({ name, ok: !!ok, detail });
  log(`${ok ? 'ok  ' : (KIND[name] || 'FAIL')} ${name}${detail ? ` (${detail})` : ''}`);
}

const toasts = [];
const enqueues = [];
let context;
let page;
const shot = async (name) => {
  if (!args.shots || !page) return;
  fs.mkdirSync(args.shots, { recursive: true });
  try { await page.screenshot({ path: path.join(args.shots, `models-${name}.png`) }); } catch { /* ignore */ }
};

/** Open a ModelPicker (its button shows the selected model's name or the placeholder) and read its options: the
 *  picker is the popover dialog holding the search field. */
async function pickerOptions(button) {
  await button.click();
  const search = page.locator('input[placeholder="Search"]:visible').first();
  await search.waitFor({ state: 'visible', timeout: 10000 });
  const pop = search.locator('xpath=ancestor::section[contains(@class, "chakra-popover__content")][1]');
  await page.waitForTimeout(500);
  const text = await pop.innerText();
  return { pop, text };
}

try {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found`);
  const profile = fs.mkdtempSync('/tmp/ig-models-profile-');
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 900 },
  });
  context.setDefaultTimeout(30000);
  await context.exposeBinding('__igToast', (_src, t) => { toasts.push(t); });
  await context.addInitScript(() => {
    const seen = new WeakSet();
    const scan = () => {
      for (const el of document.querySelectorAll('.chakra-toast .chakra-alert, [role="status"] .chakra-alert')) {
        if (seen.has(el)) continue;
        seen.add(el);
        const title = el.querySelector('.chakra-alert__title')?.textContent || '';
        const desc = el.querySelector('.chakra-alert__desc')?.textContent || '';
        window.__igToast({ status: el.getAttribute('data-status') || '', title, desc });
      }
    };
    new MutationObserver(scan).observe(document, { childList: true, subtree: true });
  });
  context.on('response', async (response) => {
    const req = response.request();
    if (!response.url().startsWith(BASE) || !new URL(response.url()).pathname.endsWith('/enqueue_batch')) return;
    const rec = { status: response.status(), retryAfter: response.headers()['retry-after'] || null, body: null, sent: null };
    try { rec.sent = JSON.parse(req.postData() || 'null'); } catch { /* ignore */ }
    try { rec.body = await response.json(); } catch { /* ignore */ }
    enqueues.push(rec);
  });
  page = context.pages()[0] || await context.newPage();

  // 1. log in
  await page.goto(`${BASE}/`, { waitUntil: 'domcontentloaded' });
  const email = page.locator('input[type=email]');
  await email.waitFor({ state: 'visible', timeout: 60000 });
  await email.fill(S.user.email);
  await page.locator('input[type=password]').fill(S.user.password);
  const loginResp = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/v1/auth/login');
  await page.locator('button[type=submit]').click();
  check('login accepted', (await loginResp).status() === 200);
  await page.locator('[data-testid="Workflows"]').waitFor({ state: 'visible', timeout: 30000 });
  await page.locator('[data-testid="Generate"]').click();
  await page.waitForLoadState('networkidle', { timeout: 8000 }).catch(() => {});
  const invoke = page.locator('button:has-text("Invoke")').first();
  const genShown = await invoke.waitFor({ state: 'visible', timeout: 20000 }).then(() => true, () => false);
  await shot('01-generate');
  check('generate tab shown', genShown);

  // 2. the main model picker: the button next to the "Model" label
  // (the Generation accordion's; the launchpad has a second one)
  const mainButton = page.locator(`button:has-text("${S.allowed_main}"), button:has-text("Select Model"), button:has-text("${S.restricted_main}")`).last();
  const { pop: mainPop, text: mainText } = await pickerOptions(mainButton);
  await shot('02-main-picker');
  log(`main picker lists: ${JSON.stringify(mainText.slice(0, 300))}`);
  check('main model picker offers her model', mainText.includes(S.allowed_main));
  check('main model picker hides the SDXL model', !mainText.includes(S.restricted_main), mainText.includes(S.restricted_main) ? 'listed' : '');
  const option = mainPop.getByText(S.allowed_main, { exact: true }).first();
  if (await option.count()) await option.click();
  else await page.keyboard.press('Escape');
  await page.waitForTimeout(500);

  // 3. the LoRA picker (in the LoRAs accordion; opened when collapsed)
  let loraButton = page.locator('button:has-text("Add LoRA"), button:has-text("Select LoRA")').first();
  if (!(await loraButton.isVisible().catch(() => false))) {
    const acc = page.locator('button:has-text("LoRAs")').first();
    if (await acc.count()) await acc.click();
    await page.waitForTimeout(500);
    loraButton = page.locator('button:has-text("Add LoRA"), button:has-text("Select LoRA")').first();
  }
  let loraText = '';
  if (await loraButton.isVisible().catch(() => false)) {
    const { pop: loraPop, text } = await pickerOptions(loraButton);
    loraText = text;
    await shot('03-lora-picker');
    // Add the style LoRA: the batch the UI builds then carries a LoRA (selector, collection loader, metadata).
    const loraOption = loraPop.getByText(S.allowed_lora, { exact: true }).first();
    if (await loraOption.count()) await loraOption.click();
    else await page.keyboard.press('Escape');
    await page.waitForTimeout(500);
  } else {
    await shot('03-no-lora-picker');
  }
  log(`LoRA picker lists: ${JSON.stringify(loraText.slice(0, 300))}`);
  check('LoRA picker offers the style LoRA', loraText.includes(S.allowed_lora));
  check('LoRA picker hides the detail LoRA', loraText !== '' && !loraText.includes(S.restricted_lora),
    loraText.includes(S.restricted_lora) ? 'listed' : '');

  // 4. a prompt, then Invoke: accepted (her first queued item)
  const prompt = page.locator('textarea').first();
  await prompt.click();
  await prompt.fill('a tiny red cube');
  await page.waitForTimeout(500);
  const first = page.waitForResponse((r) => new URL(r.url()).pathname.endsWith('/enqueue_batch'), { timeout: 30000 });
  await invoke.click();
  const firstResp = await first.catch(() => null);
  await page.waitForTimeout(1000);
  await shot('04-invoked');
  const withLora = JSON.stringify(enqueues[0]?.sent || '').includes(S.allowed_lora);
  check('her web-UI batch is accepted', firstResp && firstResp.status() === 200 && withLora,
    firstResp ? `${firstResp.status()}${withLora ? '' : ' (the batch holds no LoRA)'} ${JSON.stringify(enqueues[0]?.body || '').slice(0, 160)}` : 'no enqueue request');
  if (args['batch-out'] && enqueues[0]?.sent) fs.writeFileSync(args['batch-out'], JSON.stringify(enqueues[0].sent, null, 1));

  // 5. Invoke again: over the quota; the guard's message in the UI's toast
  const before = toasts.length;
  const second = page.waitForResponse((r) => new URL(r.url()).pathname.endsWith('/enqueue_batch'), { timeout: 30000 });
  await invoke.click();
  const secondResp = await second.catch(() => null);
  await page.waitForFunction((n) => document.querySelectorAll('.chakra-toast .chakra-alert').length > 0 || n < 0, before, { timeout: 10000 }).catch(() => {});
  await page.waitForTimeout(1500);
  await shot('05-over-quota');
  const shown = toasts.slice(before).find((t) => /the limit for your group \(interns\) is 1/.test(`${t.title} ${t.desc}`));
  check('over quota: the UI shows the guard\'s message', !!shown,
    `${secondResp ? secondResp.status() : 'no request'} retry-after=${enqueues[1]?.retryAfter}; toasts: ${JSON.stringify(toasts.slice(before)).slice(0, 300)}`);
} catch (e) {
  log(`stopped: ${e.message}`);
  await shot('99-error');
} finally {
  if (context) await context.close().catch(() => {});
}

const got = new Map(checks.map((c) => [c.name, c]));
const all = CHECK_IDS.map((n) => got.get(n) || { name: n, ok: false, detail: 'not reached' });
const passed = all.filter((c) => c.ok).length;
const leaks = all.filter((c) => !c.ok && KIND[c.name] === 'LEAK').length;
const fdeny = all.filter((c) => !c.ok && KIND[c.name] === 'FALSE_DENY').length;
fs.writeFileSync(args.out, JSON.stringify({ checks: all, toasts, enqueues: enqueues.map(({ sent, ...r }) => r) }, null, 1));
say(`${passed === all.length ? 'PASS' : 'FAIL'} ${passed}/${all.length} leaks=${leaks} false_denies=${fdeny} (InvokeAI ${args.version} web UI models)`);
process.exit(passed === all.length ? 0 : 1);
