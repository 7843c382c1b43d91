// The owner's journey through Mandate's web console (/ui) in a real browser: the system's
// headless Chromium (Debian package), driven by playwright-core. Two phases, so the Python test
// can act between them:
//   approve: sign in, find the agent with the search box, open its page, approve the pending
//            request showing <binding_message>;
//   revoke:  sign in, open the agent, pull the kill switch (typing the name to confirm), then
//            filter the audit trail by the agent and read the revocation.
// Screenshots before and after each step go to <artifacts_dir>. Prints one JSON object with what
// the pages said; exits non-zero if a step did not land where it should.
//
//   node console.mjs <base_url> <owner> <password> <agent> <binding_message> <approve|revoke> <artifacts_dir>
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const [base, owner, password, agent, bindingMessage, phase, artifacts] = process.argv.slice(2)
if (!['approve', 'revoke'].includes(phase)) throw new Error(`phase must be approve or revoke, not ${phase}`)
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
mkdirSync(artifacts, { recursive: true })
const shot = (page, step) =>
  page.screenshot({ path: join(artifacts, `console-${phase}-${step}.png`), fullPage: true })
const heading = async (page) => (await page.locator('h1').first().innerText()).trim()

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
const result = { phase }
let failure = null
try {
  const page = context.pages()[0] ?? await context.newPage()
  await page.goto(`${base}/ui/agents`)
  result.login_url = new URL(page.url()).pathname
  await shot(page, '1-login')
  const ownerForm = page.locator('form', { has: page.getByRole('button', { name: 'Sign in as owner' }) })
  await ownerForm.getByLabel('Owner name').fill(owner)
  await ownerForm.getByLabel('Password').fill(password)
  await Promise.all([page.waitForNavigation(), ownerForm.getByRole('button', { name: 'Sign in as owner' }).click()])
  result.after_login = await heading(page)
  result.signed_in_as = (await page.locator('.who strong').innerText()).trim()
  await shot(page, '2-agents')

  await page.getByLabel('Search').fill(agent)
  await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Search', exact: true }).click()])
  result.search_hits = await page.locator('tbody tr a').allInnerTexts()
  await shot(page, '3-search')
  await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: agent, exact: true }).click()])
  result.agent_heading = await heading(page)
  result.live_tokens = await page.locator('tr.token').count()
  await shot(page, '4-agent')

  if (phase === 'approve') {
    await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: 'Approvals', exact: true }).click()])
    const request = page.locator('section.approval', { hasText: bindingMessage })
    result.binding_message_shown = await request.getByText(bindingMessage, { exact: true }).isVisible()
    await shot(page, '5-approvals')
    const [answer] = await Promise.all([
      page.waitForNavigation(),
      request.getByRole('button', { name: 'Approve', exact: true }).click(),
    ])
    result.decision_status = answer.status()
    result.decision_heading = await heading(page)
    await shot(page, '6-approved')
    if (!result.binding_message_shown || result.decision_heading !== 'Approved') failure = 'the approval did not go through'
  } else {
    await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: /Kill switch/ }).click()])
    result.confirm_heading = await heading(page)
    result.confirm_summary = (await page.locator('p.notice').first().innerText()).trim()
    await shot(page, '5-confirm')
    await page.getByLabel(/to confirm/).fill(agent)
    await shot(page, '6-typed')
    const [answer] = await Promise.all([
      page.waitForNavigation(),
      page.getByRole('button', { name: 'Revoke', exact: true }).click(),
    ])
    result.revoke_status = answer.status()
    result.revoke_heading = await heading(page)
    await shot(page, '7-revoked')

    await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: 'Audit trail', exact: true }).click()])
    await page.getByLabel('Agent').fill(agent)
    await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Filter' }).click()])
    result.log_status = (await page.locator('#log-status').innerText()).trim()
    result.revocation_rows = await page.locator('tr', { hasText: 'revoke.agent' }).count()
    await shot(page, '8-audit')
    if (result.revoke_heading !== 'Revoked' || result.revocation_rows < 1) failure = 'the kill switch did not show in the trail'
  }
} finally {
  await context.close()
  rmSync(profile, { recursive: true, force: true })
}
console.log(JSON.stringify(result))
if (failure) {
  console.error(`${failure}: ${JSON.stringify(result)}`)
  process.exit(1)
}
