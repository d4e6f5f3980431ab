import { chromium } from 'playwright-core';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.route('**/ws/socket.io/**', r => r.continue({ headers: { ...r.request().headers(), 'accept-encoding': 'identity' } }));
await page.goto('http://127.0.0.1:47111/'); await page.waitForTimeout(1000); await browser.close();
