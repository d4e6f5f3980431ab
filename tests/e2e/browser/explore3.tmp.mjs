import { chromium } from 'playwright-core';
import fs from 'fs';
const base = process.argv[2];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync'] });
const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
const page = await ctx.newPage();
await page.route('**/ws/socket.io/**', async route => {
  const h = { ...(await route.request().allHeaders()), 'accept-encoding': 'identity' };
  const resp = await route.fetch({ headers: h });
  await route.fulfill({ response: resp });
});
page.on('response', async r => { if (r.url().includes('socket.io')) console.log('RESP', r.status(), r.request().method(), r.url().replace(base,''), JSON.stringify(await r.request().allHeaders())); });
page.on('websocket', ws => { console.log('WS', ws.url()); ws.on('framereceived', f => console.log('WSF<', String(f.payload).slice(0,150))); ws.on('framesent', f => console.log('WSF>', String(f.payload).slice(0,150))); ws.on('socketerror', e=>console.log('WSERR', e)); ws.on('close', ()=>console.log('WSCLOSE'));});
await page.goto(base + '/', { waitUntil: 'load' });
await page.locator('input[type=email]').fill('alice@example.com');
await page.locator('input[type=password]').fill('AlicePass123');
console.log('--- LOGIN');
await page.locator('button[type=submit]').click();
await page.waitForTimeout(8000);
await page.screenshot({ path: '/tmp/bx/s3.png' });
fs.writeFileSync('/tmp/bx/s3.html', await page.content());
await browser.close();
