// End-to-end checks of the p11kms console in Debian's headless Chromium (playwright-core; no
// browser is ever downloaded), against a real daemon that tests/console.rs started.
//
//   node console/e2e/console.mjs <input.json>
//
// The input names the endpoint (https://127.0.0.1:<port>), the daemon's server certificate
// (its public key is the only one Chromium accepts without the CA), the users' credentials,
// the role to assume, the phase to run, the screenshot directory and the results file. Each
// phase runs in a fresh browser profile; every check that fails ends the run with a clear
// message and a non-zero exit status. Secrets are read from the input file, never from argv.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const results = {};
const requestUrls = [];
const sessionSecrets = [];
const problems = [];
const TIMEOUT = 30_000;

class CheckFailed extends Error {}

/** Fails the run with `message` unless `ok`. */
function check(ok, message) {
  if (!ok) throw new CheckFailed(message);
}

function log(message) {
  console.log(`[${input.phase}] ${message}`);
}

/** The base64 SHA-256 of the certificate's SubjectPublicKeyInfo (Chromium's SPKI pin). */
function spkiPin(certPath) {
  const cert = new crypto.X509Certificate(fs.readFileSync(certPath));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'p11kms-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1366, height: 860 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${spkiPin(input.serverCert)}`,
    ],
  });
  context.setDefaultTimeout(TIMEOUT);
  context.on('request', (r) => requestUrls.push(r.url()));
  context.on('response', (r) => {
    void collectSessionSecrets(r);
    void noteRequestIds(r);
  });
  context.on('page', watch);
  for (const p of context.pages()) watch(p);
  return { context, profile };
}

/** Page errors and CSP violations are failures of the console. */
function watch(page) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) problems.push(`CSP: ${t}`);
  });
}

/** AssumeRole's answer carries session credentials: they are secrets too. */
async function collectSessionSecrets(response) {
  const req = response.request();
  if (req.method() !== 'POST' || !(req.postData() ?? '').includes('Action=AssumeRole')) return;
  const body = await response.text().catch(() => '');
  for (const tag of ['SecretAccessKey', 'SessionToken']) {
    const m = new RegExp(`<${tag}>([^<]+)</${tag}>`).exec(body);
    if (m) sessionSecrets.push(m[1]);
  }
}

/** The request id the door gave each KMS operation the console called (last one wins). */
const requestIds = {};
async function noteRequestIds(response) {
  const target = (await response.request().allHeaders())['x-amz-target'];
  const id = response.headers()['x-amzn-requestid'];
  if (target && id) requestIds[target.split('.').pop()] = id;
}

/** Every visible form control on the page has a label a screen reader reads. */
async function checkLabels(page, name) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => el.offsetParent !== null && el.labels.length === 0 && !el.getAttribute('aria-label'))
      .map((el) => el.getAttribute('name') ?? el.outerHTML.slice(0, 60)),
  );
  check(unlabelled.length === 0, `${name}: form controls without a label: ${unlabelled.join(', ')}`);
}

async function shot(page, name) {
  if (!name.startsWith('failure')) await checkLabels(page, name);
  fs.mkdirSync(input.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(input.screenshots, `${name}.png`), fullPage: true });
  log(`screenshot ${name}.png`);
}

const url = (hash = '') => `${input.endpoint}/console/${hash}`;

/** Checks that the page shows the sign-in form and nothing of the signed-in console. */
async function expectSignInOnly(page, what) {
  await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor();
  check(await page.locator('#nav').isHidden(), `${what}: the navigation is shown to a signed-out browser`);
  check((await page.locator('main table, main .card:not(.signin)').count()) === 0, `${what}: signed-out page shows more than the sign-in form`);
}

/** Signs in with the keyboard only, checking that the focused control is visibly marked. */
async function signInByKeyboard(page, user) {
  await page.goto(url('#/keys'));
  await expectSignInOnly(page, 'before sign-in');
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute('name') ?? document.activeElement?.tagName);
  check((await focused()) === 'accessKeyId', `the sign-in page does not focus the access key field: ${await focused()}`);
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  check(outline !== 'none', 'the focused field has no visible focus outline');
  await page.keyboard.type(user.accessKeyId);
  for (const [name, text] of [['secretAccessKey', user.secretAccessKey], ['sessionToken', ''], ['region', null], ['roleArn', '']]) {
    await page.keyboard.press('Tab');
    check((await focused()) === name, `Tab does not reach ${name} (at ${await focused()})`);
    if (text) await page.keyboard.type(text);
  }
  await page.keyboard.press('Tab');
  check((await focused()) === 'BUTTON', 'Tab does not reach the Sign in button');
  await page.keyboard.press('Enter');
  await page.locator('#who', { hasText: 'Signed in as' }).waitFor();
  log(`${await page.locator('#who').innerText()} (by keyboard)`);
}

/** Signs in through the form; `role` makes it an AssumeRole sign-in. */
async function signIn(page, user, role) {
  await page.goto(url('#/keys'));
  await expectSignInOnly(page, 'before sign-in');
  await page.getByLabel('Access key ID').fill(user.accessKeyId);
  await page.getByLabel('Secret access key').fill(user.secretAccessKey);
  await page.getByLabel('Region').fill('us-east-1');
  if (role) await page.getByLabel('Role ARN').fill(role);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who', { hasText: 'Signed in as' }).waitFor();
  const who = await page.locator('#who').innerText();
  log(who);
  return who;
}

async function go(page, hash, heading) {
  await page.goto(url(hash));
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
}

/**
 * Waits for `locator`; if an error box appears in `scope` first, fails with the AWS exception
 * name and message the console shows (faster and clearer than a timeout).
 */
async function waitOrFail(locator, scope, what) {
  const error = scope.locator('.error').first();
  await Promise.race([locator.waitFor(), error.waitFor()]);
  if (await error.isVisible()) throw new CheckFailed(`${what}: the console shows ${await error.innerText()}`);
}

/** The error box's text, after waiting for it. */
async function errorText(scope) {
  const box = scope.locator('.error').first();
  await box.waitFor();
  return box.innerText();
}

// ------------------------------------------------------------------------------------------
// Phase "create": signed-out view, sign-in, the wizard end to end.

async function wizardConfigure(page) {
  await page.getByRole('navigation').getByRole('link', { name: 'Create key' }).click();
  await page.getByRole('heading', { level: 2, name: 'Configure key' }).waitFor();
  await page.getByLabel('Symmetric', { exact: true }).check();
  check((await page.getByLabel('Key spec').inputValue()) === 'SYMMETRIC_DEFAULT', 'symmetric key spec');
  await shot(page, '03-wizard-1-configure');
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByLabel('Alias').fill('console-e2e');
  await page.getByLabel('Description').fill('made by the console end-to-end test');
  await page.getByRole('button', { name: 'Add tag' }).click();
  await page.getByLabel('Tag 1 key').fill('team');
  await page.getByLabel('Tag 1 value').fill('console');
  await shot(page, '04-wizard-2-labels');
  await page.getByRole('button', { name: 'Next' }).click();
}

async function wizardPeople(page) {
  await page.getByRole('heading', { level: 2, name: 'Define key administrative permissions' }).waitFor();
  const admins = page.getByRole('group', { name: 'Key administrators' });
  for (const u of ['admin', 'alice', 'bob']) {
    check((await admins.getByRole('checkbox', { name: new RegExp(`^${u} \\(User\\)`) }).count()) === 1, `the administrator picker does not list ${u}`);
  }
  check((await admins.getByRole('checkbox', { name: /^Engineering \(Role\)/ }).count()) === 1, 'the picker does not list the role');
  await admins.getByRole('checkbox', { name: /^admin \(User\)/ }).check();
  await shot(page, '05-wizard-3-administrators');
  await page.getByRole('button', { name: 'Next' }).click();
  const users = page.getByRole('group', { name: 'Key users' });
  await users.getByRole('checkbox', { name: /^alice \(User\)/ }).check();
  await shot(page, '06-wizard-4-users');
  await page.getByRole('button', { name: 'Next' }).click();
}

/** The wizard's review policy for a key type (and usage), admin administering, alice using. */
async function reviewPolicyFor(page, type, usage) {
  // The navigation's link, also when the wizard is already shown: it starts afresh.
  await page.getByRole('navigation').getByRole('link', { name: 'Create key' }).click();
  await page.getByRole('heading', { level: 2, name: 'Configure key' }).waitFor();
  await page.getByLabel(type, { exact: true }).check();
  if (usage) await page.getByLabel(usage, { exact: true }).check();
  for (let i = 0; i < 2; i++) await page.getByRole('button', { name: 'Next' }).click();
  await page.getByRole('group', { name: 'Key administrators' }).getByRole('checkbox', { name: /^admin \(User\)/ }).check();
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByRole('group', { name: 'Key users' }).getByRole('checkbox', { name: /^alice \(User\)/ }).check();
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByRole('heading', { level: 2, name: 'Review' }).waitFor();
  return JSON.parse(await page.getByLabel('Key policy').inputValue());
}

/** The key users' statements AWS's console writes for asymmetric and HMAC keys (no grants). */
async function checkOtherKindsPolicies(page) {
  const kinds = [
    ['HMAC', undefined, ['kms:DescribeKey', 'kms:GenerateMac', 'kms:VerifyMac']],
    ['Asymmetric', 'SIGN_VERIFY', ['kms:DescribeKey', 'kms:GetPublicKey', 'kms:Sign', 'kms:Verify']],
    ['Asymmetric', 'ENCRYPT_DECRYPT', ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:DescribeKey', 'kms:GetPublicKey']],
  ];
  for (const [type, usage, actions] of kinds) {
    const doc = await reviewPolicyFor(page, type, usage);
    const sids = doc.Statement.map((st) => st.Sid);
    const use = doc.Statement.find((st) => st.Sid === 'Allow use of the key');
    check(sids.join() === 'Enable IAM User Permissions,Allow access for Key Administrators,Allow use of the key', `${type} ${usage ?? ''}: statements ${sids}`);
    check(JSON.stringify(use.Action) === JSON.stringify(actions) && use.Principal.AWS === input.users.alice.arn, `${type} ${usage ?? ''}: key users' statement ${JSON.stringify(use)}`);
  }
  log('the wizard writes AWS console policies for HMAC and asymmetric keys too');
}

/** Breaks the review's policy with a trailing comma and checks the error names its line. */
async function wizardValidation(page, area, policy) {
  const lines = policy.split('\n');
  const at = lines.findIndex((l) => l.includes('"Resource": "*"'));
  lines[at] += ',';
  await area.fill(lines.join('\n'));
  await page.getByRole('button', { name: 'Create key' }).click();
  const text = await errorText(page.locator('.step-body'));
  check(text.includes(`Line ${at + 2}`), `the JSON error does not point at line ${at + 2}: ${text}`);
  log(`a broken policy is pointed at: ${text.split('\n')[0]}`);
  await shot(page, '07-wizard-5-review-invalid');
  await page.getByRole('button', { name: 'Reset to the generated policy' }).click();
  check((await area.inputValue()) === policy, 'reset does not restore the generated policy');
}

async function phaseCreate(page) {
  await page.goto(url('#/audit'));
  await expectSignInOnly(page, 'signed out, #/audit');
  await shot(page, '01-signin');
  await signInByKeyboard(page, input.users.admin);
  await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
  await shot(page, '02-keys-empty');
  await page.locator('.skip').focus();
  await page.keyboard.press('Enter');
  check(page.url().endsWith('#/keys'), `the skip link changed the route: ${page.url()}`);
  check(await page.evaluate(() => document.activeElement?.id === 'main'), 'the skip link does not move focus to the page');
  await checkOtherKindsPolicies(page);
  await wizardConfigure(page);
  await wizardPeople(page);
  await page.getByRole('heading', { level: 2, name: 'Review' }).waitFor();
  const area = page.getByLabel('Key policy');
  const policy = await area.inputValue();
  const doc = JSON.parse(policy);
  check(doc.Id === 'key-consolepolicy-3', `policy Id ${doc.Id}`);
  await shot(page, '07-wizard-5-review');
  await wizardValidation(page, area, policy);
  await page.getByRole('button', { name: 'Create key' }).click();
  const h1 = page.locator('h1[data-key-id]');
  await h1.waitFor();
  results.keyId = await h1.getAttribute('data-key-id');
  results.policy = policy;
  results.createKeyRequestId = requestIds.CreateKey;
  check(results.createKeyRequestId, 'the CreateKey response had no request id');
  check(/^[0-9a-f-]{36}$/.test(results.keyId ?? ''), `created key id ${results.keyId}`);
  check((await page.getByTestId('key-state').innerText()) === 'Enabled', 'the new key is not Enabled');
  log(`created key ${results.keyId}`);
  await shot(page, '08-key-page');
}

// ------------------------------------------------------------------------------------------
// Phase "inspect": keys list, explain, the lockout refusal, audit verified, health.

async function explain(page, principal, name, context = '') {
  await go(page, '#/explain', 'Why was I denied?');
  await page.getByLabel('Principal (ARN)').fill(principal);
  await page.getByLabel('Encryption context (one key=value a line)').fill(context);
  await page.getByLabel('Action').selectOption('kms:Encrypt');
  await page.getByLabel('Key', { exact: true }).fill(input.keyId);
  await page.getByRole('button', { name: 'Explain' }).click();
  const decision = page.locator('[data-decision]');
  await waitOrFail(decision, page.locator('main'), `explaining ${principal}`);
  await page.locator('.policy-view').waitFor();
  await shot(page, name);
  return {
    decision: await decision.getAttribute('data-decision'),
    named: await page.locator('.deciding-name').allInnerTexts(),
    highlighted: await page.locator('.statement.deciding').evaluateAll((els) => els.map((e) => e.dataset.statement)),
    none: await page.locator('.no-deciding').count(),
    message: await page.locator('.facts dd').first().innerText(),
  };
}

async function checkExplain(page) {
  const alice = await explain(page, input.users.alice.arn, '11-explain-alice-allowed', 'purpose=console-e2e\ntenant=acme');
  check(alice.decision === 'Allow', `alice's Encrypt: ${alice.decision}`);
  check(alice.named.includes('Allow use of the key'), `alice's deciding statements: ${alice.named}`);
  check(alice.highlighted.length === 1 && alice.highlighted[0] === 'Allow use of the key', `highlighted for alice: ${alice.highlighted}`);
  const bob = await explain(page, input.users.bob.arn, '12-explain-bob-denied');
  check(bob.decision === 'Deny', `bob's Encrypt: ${bob.decision}`);
  check(bob.named.length === 0 && bob.highlighted.length === 0 && bob.none === 1, `bob's denial names statements: ${bob.named}`);
  check(bob.message.includes(`${input.users.bob.arn} is not authorized to perform: kms:Encrypt`), `bob's denial message: ${bob.message}`);
  log('explain: alice allowed by "Allow use of the key"; bob denied, no statement allows');
}

/** The key ids of the keys list's current page, once `caption` says it is shown. */
async function keysOnPage(page, caption) {
  await page.locator('caption', { hasText: caption }).waitFor();
  return page.locator('tbody tr:not(.empty) td:first-child').allInnerTexts();
}

/** Pages through the keys list (20 a page): every key once; Previous goes back. */
async function checkPaging(page) {
  const first = await keysOnPage(page, 'page 1,');
  check(first.length === 20, `page 1 shows ${first.length} keys`);
  await page.getByRole('button', { name: 'Next page' }).click();
  const second = await keysOnPage(page, 'page 2,');
  check(first.length + second.length === input.totalKeys && !second.some((k) => first.includes(k)), `pages 1 and 2 show ${first.length} + ${second.length} keys of ${input.totalKeys}`);
  check(await page.getByRole('button', { name: 'Next page' }).isDisabled(), 'a third page is offered');
  await shot(page, '10-keys-page-2');
  await page.getByRole('button', { name: 'Previous page' }).click();
  check((await keysOnPage(page, 'page 1,')).join() === first.join(), 'Previous page does not show page 1 again');
  return second.includes(input.keyId) ? 2 : 1;
}

async function checkKeysList(page) {
  await go(page, '#/keys', 'Keys');
  if ((await checkPaging(page)) === 2) await page.getByRole('button', { name: 'Next page' }).click();
  const row = page.locator('tbody tr', { hasText: input.keyId });
  await row.waitFor();
  const text = await row.innerText();
  for (const want of ['alias/console-e2e', 'Enabled', 'SYMMETRIC_DEFAULT', 'ENCRYPT_DECRYPT', 'AWS_KMS']) check(text.includes(want), `keys list row lacks ${want}: ${text}`);
  check(/Encrypt|Decrypt/.test(text), `the last use (boto3's Encrypt) is not shown: ${text}`);
  await page.getByLabel('Filter (id, alias, description, spec)').fill('no-such-key');
  check((await page.locator('tbody tr:not(.empty)').count()) === 0, 'the filter does not filter');
  await page.getByLabel('Filter (id, alias, description, spec)').fill('console-e2e');
  check((await page.locator('tbody tr:not(.empty)').count()) === 1, 'the filter loses the key');
  await shot(page, '10-keys-list-filtered');
}

/** Cancelling a confirmation changes nothing. */
async function checkConfirmCancel(page) {
  await page.getByRole('button', { name: 'Disable key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Disable this key?' });
  await dialog.waitFor();
  await shot(page, '13-confirm-disable');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  check((await page.getByTestId('key-state').innerText()) === 'Enabled', 'cancelled Disable changed the key');
}

/** An edit that would lock the caller out is refused with AWS's exception and message. */
async function checkLockout(page) {
  await go(page, `#/keys/${input.keyId}`, /^Key /);
  await page.getByRole('heading', { level: 2, name: 'Key policy' }).waitFor();
  await checkConfirmCancel(page);
  const doc = JSON.parse(input.policy);
  const onlyUsers = { ...doc, Statement: doc.Statement.filter((s) => s.Sid === 'Allow use of the key') };
  const section = page.locator('section', { has: page.getByRole('heading', { name: 'Key policy' }) });
  await section.getByRole('button', { name: 'Edit' }).click();
  await page.getByLabel('Policy document').fill(JSON.stringify(onlyUsers, null, 4));
  await section.getByRole('button', { name: 'Save policy' }).click();
  await page.getByRole('dialog', { name: 'Replace the key policy?' }).getByRole('button', { name: 'Save policy' }).click();
  const text = await errorText(section);
  check(text.startsWith('MalformedPolicyDocumentException'), `lockout refusal: ${text}`);
  check(text.includes('The new key policy will not allow you to update the key policy in the future.'), `lockout message: ${text}`);
  log(`lockout refused: ${text}`);
  await shot(page, '14-key-policy-lockout-refused');
  await go(page, '#/keys', 'Keys');
  await go(page, `#/keys/${input.keyId}`, /^Key /);
  await page.getByLabel('Policy document').waitFor();
  check((await page.getByLabel('Policy document').inputValue()).includes('Allow access for Key Administrators'), 'the refused policy changed the key');
}

/** A section of the key page, by its heading. */
function keySection(page, name) {
  return page.locator('section', { has: page.getByRole('heading', { level: 2, name }) });
}

/**
 * Clicks `label` in the key page's section `sectionName` (accepting its confirmation
 * `confirm`, when the action asks one), then waits for `done` to appear, failing with the
 * console's AWS error if one shows instead.
 */
async function keyAction(page, sectionName, label, confirm, done, what) {
  const section = keySection(page, sectionName);
  await section.getByRole('button', { name: label, exact: true }).first().click();
  if (confirm) await page.getByRole('dialog', { name: confirm }).getByRole('button', { name: label }).click();
  await waitOrFail(done, page.locator('main'), what);
}

/** The key state shown on the key page, once it reads `state`. */
function keyState(page, state) {
  return page.locator('[data-testid="key-state"]', { hasText: new RegExp(`^${state}$`) });
}

/** The key page's actions, each done through the console and read back from the daemon. */
async function checkKeyActions(page) {
  await go(page, `#/keys/${input.keyId}`, /^Key /);
  const tags = keySection(page, 'Tags');
  await tags.getByLabel('Tag key', { exact: true }).fill('stage');
  await tags.getByLabel('Tag value', { exact: true }).fill('e2e');
  const tagRow = keySection(page, 'Tags').locator('tbody tr', { hasText: 'stage' });
  await keyAction(page, 'Tags', 'Add tag', null, tagRow, 'tagging the key');
  await keySection(page, 'Tags').getByRole('button', { name: 'Remove tag stage' }).click();
  await tagRow.waitFor({ state: 'detached' });
  // The page is drawn again from the daemon's answers: the wizard's tag, and not the removed one.
  await waitOrFail(keySection(page, 'Tags').locator('tbody tr', { hasText: 'team' }), page.locator('main'), 'untagging the key');
  check((await tagRow.count()) === 0, 'the removed tag is listed again');

  const every = keySection(page, 'Key rotation').getByText(/^enabled, every 365 days$/);
  await keyAction(page, 'Key rotation', 'Enable automatic rotation', null, every, 'enabling rotation');
  const onDemand = keySection(page, 'Key rotation').locator('tbody tr', { hasText: 'ON_DEMAND' });
  await keyAction(page, 'Key rotation', 'Rotate now', 'Rotate this key now?', onDemand, 'rotating the key now');

  const grants = keySection(page, 'Grants');
  await grants.getByLabel('Grantee principal').fill(input.users.alice.arn);
  await grants.getByLabel('Grant name').fill('console-e2e-grant');
  await grants.getByLabel('Operations').selectOption(['Encrypt', 'Decrypt']);
  const grantRow = keySection(page, 'Grants').locator('tbody tr', { hasText: 'console-e2e-grant' });
  await keyAction(page, 'Grants', 'Create grant', null, grantRow, 'creating a grant');
  const granted = await grantRow.innerText();
  check(/\bDecrypt, Encrypt\b/.test(granted) && granted.includes(input.users.alice.arn), `the grant: ${granted}`);
  await shot(page, '14b-key-actions');
  const noGrant = keySection(page, 'Grants').locator('tbody tr.empty');
  await keyAction(page, 'Grants', 'Revoke', 'Revoke this grant?', noGrant, 'revoking the grant');

  await keyAction(page, 'Key state', 'Disable key', 'Disable this key?', keyState(page, 'Disabled'), 'disabling the key');
  await keyAction(page, 'Key state', 'Enable key', null, keyState(page, 'Enabled'), 'enabling the key');
  await keySection(page, 'Key state').getByLabel('Waiting period (days)').fill('7');
  await keyAction(page, 'Key state', 'Schedule key deletion', 'Schedule deletion of this key?', keyState(page, 'PendingDeletion'), 'scheduling deletion');
  await keyAction(page, 'Key state', 'Cancel key deletion', null, keyState(page, 'Disabled'), 'cancelling deletion');
  await keyAction(page, 'Key state', 'Enable key', null, keyState(page, 'Enabled'), 'enabling the key again');
  log('key page: tag, rotation, grant, disable/enable, schedule/cancel deletion done');
}

/** Searches the trail with the audit page's form; returns the result rows' texts. */
async function searchTrail(page, fields, expect) {
  await page.getByLabel('Key (id or ARN)').fill(fields.key ?? '');
  await page.getByLabel('Principal (ARN)').fill(fields.principal ?? '');
  await page.getByLabel('Operation').fill(fields.operation ?? '');
  await page.getByLabel('Outcome').selectOption(fields.outcome ?? '');
  await page.getByRole('button', { name: 'Search' }).click();
  await waitOrFail(page.locator('.audit-results tbody tr', { hasText: expect }).first(), page.locator('main'), `searching the trail for ${expect}`);
  return page.locator('.audit-results tbody tr:not(.empty)').allInnerTexts();
}

async function checkAuditVerified(page) {
  await go(page, '#/audit', 'Audit trail');
  const v = page.locator('[data-verified]');
  await waitOrFail(v, page.locator('main'), 'verifying the trail');
  check((await v.getAttribute('data-verified')) === 'true', `the untouched trail does not verify: ${await v.innerText()}`);
  // The test's daemon signs a checkpoint every few events: the page says they were checked.
  const said = await v.innerText();
  check(/\d+ HSM-signed checkpoints? check out/.test(said), `no HSM-signed checkpoint was verified: ${said}`);
  const admin = input.users.admin.arn;
  const byKey = await searchTrail(page, { key: input.keyId }, 'PutKeyPolicy');
  for (const op of ['GetKeyPolicy', 'PutKeyPolicy']) check(byKey.some((r) => r.includes(op) && r.includes(admin)), `the audit page does not list the console's ${op}: ${byKey.join(' | ')}`);
  const failed = await searchTrail(page, { key: input.keyId, outcome: 'Failure' }, 'PutKeyPolicy');
  check(failed.every((r) => !r.includes('Success')), `Outcome=Failure lists successes: ${failed.join(' | ')}`);
  check(failed.some((r) => r.includes('PutKeyPolicy') && r.includes('MalformedPolicyDocumentException')), 'the refused PutKeyPolicy is not listed as a failure');
  await shot(page, '15-audit-failures');
  const later = new Date(Date.now() + 3_600_000).toISOString().slice(0, 16);
  await page.getByLabel('From').fill(later);
  await page.getByRole('button', { name: 'Search' }).click();
  await waitOrFail(page.locator('.audit-results tbody tr.empty'), page.locator('main'), 'searching the trail from an hour ahead');
  await page.getByLabel('From').fill('');
  // A CreateKey record names no key (the key did not exist when it was asked for): found by
  // operation and principal, it is the request the browser was answered.
  // (A change has two records: its intent, written before it is made, and its outcome.)
  const requestId = input.createKeyRequestId;
  const rows = await searchTrail(page, { principal: admin, operation: 'CreateKey' }, requestId);
  const created = rows.filter((r) => r.includes(requestId) && !r.includes('Intent'));
  check(rows.every((r) => r.includes('CreateKey') && r.includes(admin)), `the search by operation and principal lists others: ${rows.join(' | ')}`);
  check(created.length === 1 && created[0].includes('Success'), `the console's CreateKey (request ${requestId}) is not listed once: ${created.join(' | ')}`);
  await page.locator('.audit-results tbody tr', { hasText: requestId }).filter({ hasNotText: 'Intent' }).getByRole('button', { name: /^Show event/ }).click();
  const full = await page.locator('pre.event').innerText();
  check(full.includes('"eventName": "CreateKey"') && full.includes('made by the console end-to-end test') && full.includes('key-consolepolicy-3'), 'the event in full is not the console\'s CreateKey');
  await shot(page, '16-audit-verified-event');
}

async function checkHealth(page) {
  await go(page, '#/health', 'Health');
  await waitOrFail(page.locator('[data-health="HSM"]'), page.locator('main'), 'the health page');
  check((await page.locator('[data-health="HSM"]').innerText()).includes('healthy'), 'HSM health');
  check((await page.locator('svg.chart').count()) === 2, 'the health page has no charts');
  check((await page.locator('svg.chart rect').count()) > 0, 'the request chart shows no requests');
  await shot(page, '17-health');
}

async function phaseInspect(page) {
  await signIn(page, input.users.admin);
  await checkKeysList(page);
  await checkExplain(page);
  await checkLockout(page);
  await checkAuditVerified(page);
  await checkKeyActions(page);
  await checkHealth(page);
  await page.reload();
  await expectSignInOnly(page, 'after a reload (the credentials were in memory only)');
  await signIn(page, input.users.admin);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expectSignInOnly(page, 'after sign-out');
  await page.goto(url('#/health'));
  await expectSignInOnly(page, 'after sign-out, #/health');
}

// ------------------------------------------------------------------------------------------
// Phase "tampered": the edited record is found; a role sign-in; a fresh signed-out browser.

async function phaseTampered(page, context) {
  await signIn(page, input.users.admin);
  await go(page, '#/audit', 'Audit trail');
  const v = page.locator('[data-verified]');
  await waitOrFail(v, page.locator('main'), 'verifying the trail');
  check((await v.getAttribute('data-verified')) === 'false', 'the edited trail still verifies');
  const problems = await page.locator('.verify-result tbody tr').allInnerTexts();
  check(problems.some((p) => p.includes('edited') && p.includes(input.tampered.file) && p.includes(String(input.tampered.line))), `no problem names ${input.tampered.file} line ${input.tampered.line}: ${problems.join(' | ')}`);
  await shot(page, '20-audit-tampered');
  await page.getByRole('button', { name: 'Sign out' }).click();
  const who = await signIn(page, input.users.bob, input.roleArn);
  check(who.includes(':assumed-role/Engineering/'), `the role sign-in is ${who}`);
  await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
  const seen = await keysOnPage(page, 'page 1,');
  check(seen.length === 20, `the role sees ${seen.length} keys on page 1`);
  await shot(page, '21-keys-as-role');
  await go(page, '#/audit', 'Audit trail');
  const denied = await errorText(page.locator('main'));
  check(denied.startsWith('AccessDeniedException'), `the role reads the audit trail: ${denied}`);
  await shot(page, '22-audit-denied-to-role');
  await page.getByRole('button', { name: 'Sign out' }).click();
  const fresh = await context.newPage();
  const before = requestUrls.length;
  await fresh.goto(url('#/keys'));
  await expectSignInOnly(fresh, 'a fresh signed-out page');
  await shot(fresh, '23-signed-out-fresh');
  const api = requestUrls.slice(before).filter((u) => !new URL(u).pathname.startsWith('/console'));
  check(api.length === 0, `a signed-out page called the API: ${api}`);
}

// ------------------------------------------------------------------------------------------

/** No secret in any URL requested, in web storage, or in cookies. */
async function checkSecretsStayInMemory(context, page) {
  const secrets = [...Object.values(input.users).map((u) => u.secretAccessKey), ...sessionSecrets];
  for (const u of requestUrls) for (const s of secrets) check(!u.includes(s) && !u.includes(encodeURIComponent(s)), `a secret is in a requested URL: ${u.slice(0, 60)}…`);
  check(requestUrls.length > 0, 'no request was recorded');
  for (const p of context.pages()) {
    if (p.isClosed() || !p.url().startsWith(input.endpoint)) continue;
    const stored = await p.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }, document.cookie]));
    for (const s of secrets) check(!stored.includes(s), 'a secret is in web storage or document.cookie');
  }
  const cookies = JSON.stringify(await context.cookies());
  for (const s of secrets) check(!cookies.includes(s), 'a secret is in a cookie');
  check(page !== undefined, 'no page');
  log(`no secret in ${requestUrls.length} request URLs, web storage or cookies (${secrets.length} secrets checked)`);
}

async function main() {
  const { context, profile } = await launch();
  const page = context.pages()[0] ?? (await context.newPage());
  try {
    if (input.phase === 'create') await phaseCreate(page);
    else if (input.phase === 'inspect') await phaseInspect(page);
    else if (input.phase === 'tampered') await phaseTampered(page, context);
    else throw new CheckFailed(`unknown phase ${input.phase}`);
    await checkSecretsStayInMemory(context, page);
    check(problems.length === 0, `the console logged problems:\n${problems.join('\n')}`);
    fs.writeFileSync(input.results, JSON.stringify(results, null, 2));
  } catch (e) {
    await shot(page, `failure-${input.phase}`).catch(() => undefined);
    throw e;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => log('all checks passed'),
  (e) => {
    console.error(`FAIL [${input.phase}]: ${e instanceof CheckFailed ? e.message : e.stack ?? e}`);
    process.exit(1);
  },
);
