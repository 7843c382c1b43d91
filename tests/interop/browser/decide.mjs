// The owner's side of CIBA in a real browser: the system's headless Chromium (Debian package),
// driven by playwright-core, opens Mandate's approval page, checks that it shows the binding
// message, signs in as the owner and clicks Approve or Deny. Screenshots are taken before and
// after each step. Prints one JSON object with what the pages said; exits non-zero if the page
// did not show the binding message or did not confirm the decision.
//
//   node decide.mjs <approval_url> <owner> <password> <approve|deny> <binding_message> <artifacts_dir> <name>
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const [approvalUrl, owner, password, decision, bindingMessage, artifacts, name] = process.argv.slice(2)
if (!['approve', 'deny'].includes(decision)) throw new Error(`decision must be approve or deny, not ${decision}`)
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
mkdirSync(artifacts, { recursive: true })
const shot = (page, step) => page.screenshot({ path: join(artifacts, `${name}-${step}.png`), fullPage: true })

// A fresh profile every run; the machine has no outbound network, so nothing may phone home.
const profile = mkdtempSync(join(tmpdir(), 'mandate-chromium-'))
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
})
let result
try {
  const page = context.pages()[0] ?? await context.newPage()
  const opened = await page.goto(approvalUrl)
  await shot(page, '1-opened')
  const heading = (await page.locator('h1').innerText()).trim()
  // The exact action must be on the page, as the owner sees it (visible text, not markup).
  const shown = await page.getByText(bindingMessage, { exact: true }).isVisible()

  await page.getByLabel('Owner name').fill(owner)
  await page.getByLabel('Password').fill(password)
  await shot(page, '2-signed-in')
  const button = page.getByRole('button', { name: decision === 'approve' ? 'Approve' : 'Deny', exact: true })
  const [answer] = await Promise.all([page.waitForNavigation(), button.click()])
  await shot(page, decision === 'approve' ? '3-approved' : '3-denied')
  const after = (await page.locator('h1').innerText()).trim()
  result = {
    page_status: opened.status(),
    page_heading: heading,
    binding_message_shown: shown,
    decision_status: answer.status(),
    decision_heading: after,
    decision_text: (await page.locator('main, body').first().innerText()).trim(),
    browser: context.browser()?.version() ?? null,
  }
} finally {
  await context.close()
  rmSync(profile, { recursive: true, force: true })
}
console.log(JSON.stringify(result))
const expected = decision === 'approve' ? 'Approved' : 'Denied'
if (!result.binding_message_shown || result.decision_heading !== expected) {
  console.error(`the approval page did not behave: ${JSON.stringify(result)}`)
  process.exit(1)
}
