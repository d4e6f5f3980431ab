import { chromium } from 'playwright-core';
import fs from 'fs';
const base = process.argv[2];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync'] });
const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
const page = await ctx.newPage();
page.on('response', r => console.log('RESP', r.status(), r.request().method(), r.url()));
page.on('console', m => console.log('CONSOLE', m.type(), m.text().slice(0,200)));
page.on('websocket', ws => console.log('WS', ws.url()));
await page.goto(base + '/', { waitUntil: 'load' });
await page.waitForTimeout(5000);
await page.screenshot({ path: '/tmp/bx/s1.png' });
fs.writeFileSync('/tmp/bx/s1.html', await page.content());
await browser.close();
