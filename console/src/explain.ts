// "Why was I denied?": a principal, an action, a key and an encryption context go to
// P11kmsAdmin.ExplainAccess; the decision is shown with its deciding statements, highlighted in
// the key policy (GetKeyPolicy) when the key policy is among the policies that decided.

import { GetKeyPolicyCommand } from '@aws-sdk/client-kms';
import { admin, caller, kms } from './api';
import { busy, errorBox, facts, field, h, render, select, table } from './dom';
import { renderPolicy } from './policy';
import { listPrincipals } from './wizard';

/** ExplainAccess's answer (src/api/aws_json/kms/explain.rs). */
interface Explained {
  Decision: 'Allow' | 'Deny';
  Reason: string;
  Message: string;
  Resource: string;
  DecidingStatements: { PolicyType: string; PolicyName: string; Statement: string }[];
}

const ACTIONS = [
  'kms:Encrypt', 'kms:Decrypt', 'kms:ReEncryptFrom', 'kms:ReEncryptTo', 'kms:GenerateDataKey', 'kms:GenerateDataKeyWithoutPlaintext',
  'kms:GenerateDataKeyPair', 'kms:DescribeKey', 'kms:GetPublicKey', 'kms:Sign', 'kms:Verify', 'kms:GenerateMac', 'kms:VerifyMac',
  'kms:CreateGrant', 'kms:ListGrants', 'kms:RevokeGrant', 'kms:GetKeyPolicy', 'kms:PutKeyPolicy', 'kms:EnableKey', 'kms:DisableKey',
  'kms:ScheduleKeyDeletion', 'kms:CancelKeyDeletion', 'kms:TagResource', 'kms:UntagResource', 'kms:RotateKeyOnDemand',
];

/** Parses "key=value" lines; throws on a line without "=". */
function parseContext(text: string): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const at = line.indexOf('=');
    if (at < 1) throw new Error(`Encryption context line ${i + 1}: write key=value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return Object.keys(out).length ? out : undefined;
}

async function showDecision(r: Explained, keyId: string, out: HTMLElement): Promise<void> {
  const deciding = r.DecidingStatements ?? [];
  const parts: Node[] = [
    h('p', { class: `decision decision-${r.Decision}`, 'data-decision': r.Decision }, `${r.Decision} (${r.Reason})`),
    facts([['Message', r.Message], ['Resource', r.Resource]]),
    deciding.length
      ? table('Deciding statements', ['Policy type', 'Policy', 'Statement'], deciding.map((d) => [d.PolicyType, d.PolicyName, h('strong', { class: 'deciding-name' }, d.Statement)]))
      : h('p', { class: 'no-deciding' }, 'No statement decided: nothing allows this request, so it is denied by default (implicit deny).'),
  ];
  const fromKeyPolicy = new Set(deciding.filter((d) => d.PolicyType === 'KeyPolicy').map((d) => d.Statement));
  try {
    const text = (await kms().send(new GetKeyPolicyCommand({ KeyId: keyId, PolicyName: 'default' }))).Policy ?? '{}';
    parts.push(h('h2', {}, 'The key policy'), renderPolicy(JSON.parse(text), fromKeyPolicy));
  } catch (e) {
    parts.push(h('h2', {}, 'The key policy'), errorBox(e));
  }
  out.replaceChildren(...parts);
}

/** Renders the explain page. */
export async function explainPage(): Promise<void> {
  const principal = h('input', { name: 'principal', list: 'principal-list', autocomplete: 'off', value: caller().arn, spellcheck: 'false' });
  const list = h('datalist', { id: 'principal-list' });
  const action = select('action', ACTIONS.map((a) => [a, a]), 'kms:Decrypt');
  const key = h('input', { name: 'keyId', autocomplete: 'off', spellcheck: 'false', required: true, placeholder: 'key id, key ARN or alias/name' });
  const ctx = h('textarea', { name: 'encryptionContext', rows: 3, spellcheck: 'false', placeholder: 'purpose=example' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Explain');
  const slot = h('div', { class: 'slot' });
  const out = h('div', { class: 'explain-result', 'aria-live': 'polite' });
  const form = h(
    'form',
    { class: 'card' },
    field('Principal (ARN)', principal),
    list,
    field('Action', action),
    field('Key', key),
    field('Encryption context (one key=value a line)', ctx),
    h('div', { class: 'actions' }, submit),
    slot,
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(submit, slot, async () => {
      out.replaceChildren();
      const body = { Principal: principal.value.trim(), Action: action.value, KeyId: key.value.trim(), EncryptionContext: parseContext(ctx.value) };
      const r = await admin<Explained>('ExplainAccess', body);
      await showDecision(r, key.value.trim(), out);
    });
  });
  render(h('h1', {}, 'Why was I denied?'), h('p', { class: 'lead' }, 'Evaluates a request as the daemon would, and shows which statements decided it.'), form, out);
  listPrincipals().then(
    (ps) => list.replaceChildren(...ps.map((p) => h('option', { value: p.Arn }, p.Name))),
    () => undefined,
  );
}
