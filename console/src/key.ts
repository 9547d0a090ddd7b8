// The key page: metadata, aliases, tags, rotation, grants, the key policy, and the state
// actions. Every action that cannot be undone asks first (confirmAction).

import {
  CancelKeyDeletionCommand,
  CreateGrantCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  DisableKeyRotationCommand,
  EnableKeyCommand,
  EnableKeyRotationCommand,
  GetKeyPolicyCommand,
  GetKeyRotationStatusCommand,
  GrantOperation,
  KeyMetadata,
  ListAliasesCommand,
  ListGrantsCommand,
  ListKeyRotationsCommand,
  ListResourceTagsCommand,
  PutKeyPolicyCommand,
  RetireGrantCommand,
  RevokeGrantCommand,
  RotateKeyOnDemandCommand,
  ScheduleKeyDeletionCommand,
  TagResourceCommand,
  UntagResourceCommand,
} from '@aws-sdk/client-kms';
import { kms } from './api';
import { busy, confirmAction, errorBox, facts, field, h, render, status, table, when } from './dom';
import { pointAtLine, validatePolicy } from './policy';

/** A section with a heading and a slot for its errors. */
function section(title: string, ...content: (Node | null)[]): { el: HTMLElement; slot: HTMLElement } {
  const slot = h('div', { class: 'slot' });
  const id = `sec-${title.toLowerCase().replace(/[^a-z]+/g, '-')}`;
  return { el: h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...content, slot), slot };
}

/** A button that runs `work` (after confirming, when `confirm` is given), then reloads. */
function action(label: string, slot: HTMLElement, work: () => Promise<unknown>, confirm?: [string, string], reload = true): HTMLButtonElement {
  const b = h('button', { type: 'button', class: confirm ? 'danger' : undefined }, label);
  b.addEventListener('click', async () => {
    if (confirm && !(await confirmAction(confirm[0], confirm[1], label))) return;
    await busy(b, slot, async () => {
      await work();
      if (reload) await keyPage(currentKey);
    });
  });
  return b;
}

let currentKey = '';

function metadataSection(m: KeyMetadata, aliases: string[]): HTMLElement {
  const s = section(
    'General configuration',
    facts([
      ['Key ID', m.KeyId],
      ['ARN', m.Arn],
      ['State', h('span', { class: `state state-${m.KeyState}`, 'data-testid': 'key-state' }, m.KeyState ?? '')],
      ['Description', m.Description || '—'],
      ['Created', when(m.CreationDate)],
      ['Key spec', m.KeySpec],
      ['Key usage', m.KeyUsage],
      ['Origin', m.Origin],
      ['Key store', m.CustomKeyStoreId ?? 'default'],
      ['Deletion date', m.DeletionDate ? when(m.DeletionDate) : '—'],
      ['Aliases', aliases.join(', ') || '—'],
    ]),
  );
  return s.el;
}

function stateSection(m: KeyMetadata): HTMLElement {
  const s = section('Key state');
  const days = h('input', { type: 'number', min: 7, max: 30, value: 30, name: 'pendingDays' });
  const id = m.KeyId!;
  const buttons: (Node | null)[] = [];
  if (m.KeyState === 'Enabled')
    buttons.push(action('Disable key', s.slot, () => kms().send(new DisableKeyCommand({ KeyId: id })), ['Disable this key?', `Requests that use ${id} will fail until it is enabled again.`]));
  if (m.KeyState === 'Disabled') buttons.push(action('Enable key', s.slot, () => kms().send(new EnableKeyCommand({ KeyId: id }))));
  if (m.KeyState === 'PendingDeletion') buttons.push(action('Cancel key deletion', s.slot, () => kms().send(new CancelKeyDeletionCommand({ KeyId: id }))));
  else
    buttons.push(
      field('Waiting period (days)', days),
      action('Schedule key deletion', s.slot, () => kms().send(new ScheduleKeyDeletionCommand({ KeyId: id, PendingWindowInDays: Number(days.value) })), [
        'Schedule deletion of this key?',
        `After the waiting period the key ${id} and everything encrypted under it are gone for good.`,
      ]),
    );
  s.el.insertBefore(h('div', { class: 'actions' }, ...buttons), s.slot);
  return s.el;
}

async function tagsSection(id: string): Promise<HTMLElement> {
  const s = section('Tags');
  const tags = (await kms().send(new ListResourceTagsCommand({ KeyId: id }))).Tags ?? [];
  const k = h('input', { name: 'newTagKey', autocomplete: 'off' });
  const v = h('input', { name: 'newTagValue', autocomplete: 'off' });
  const rows = tags.map((t) => [t.TagKey!, t.TagValue!, action(`Remove tag ${t.TagKey}`, s.slot, () => kms().send(new UntagResourceCommand({ KeyId: id, TagKeys: [t.TagKey!] })))]);
  s.el.insertBefore(table('Tags', ['Key', 'Value', ''], rows), s.slot);
  s.el.insertBefore(h('div', { class: 'toolbar' }, field('Tag key', k), field('Tag value', v), action('Add tag', s.slot, () => kms().send(new TagResourceCommand({ KeyId: id, Tags: [{ TagKey: k.value, TagValue: v.value }] })))), s.slot);
  return s.el;
}

async function rotationSection(m: KeyMetadata): Promise<HTMLElement> {
  const s = section('Key rotation');
  const id = m.KeyId!;
  if (m.KeySpec !== 'SYMMETRIC_DEFAULT') {
    s.el.insertBefore(h('p', {}, 'Only symmetric encryption keys rotate.'), s.slot);
    return s.el;
  }
  const st = await kms().send(new GetKeyRotationStatusCommand({ KeyId: id }));
  const hist = (await kms().send(new ListKeyRotationsCommand({ KeyId: id }))).Rotations ?? [];
  s.el.insertBefore(
    facts([
      ['Automatic rotation', st.KeyRotationEnabled ? `enabled, every ${st.RotationPeriodInDays} days` : 'disabled'],
      ['Next rotation', when(st.NextRotationDate)],
      ['On-demand rotation started', when(st.OnDemandRotationStartDate)],
    ]),
    s.slot,
  );
  s.el.insertBefore(table('Rotation history', ['Rotated', 'Type'], hist.map((r) => [when(r.RotationDate), r.RotationType ?? '']))
  , s.slot);
  const toggle = st.KeyRotationEnabled
    ? action('Disable automatic rotation', s.slot, () => kms().send(new DisableKeyRotationCommand({ KeyId: id })))
    : action('Enable automatic rotation', s.slot, () => kms().send(new EnableKeyRotationCommand({ KeyId: id })));
  const now = action('Rotate now', s.slot, () => kms().send(new RotateKeyOnDemandCommand({ KeyId: id })), ['Rotate this key now?', 'New key material becomes current; on-demand rotations are limited in number.']);
  s.el.insertBefore(h('div', { class: 'actions' }, toggle, now), s.slot);
  return s.el;
}

const GRANT_OPS = ['Encrypt', 'Decrypt', 'ReEncryptFrom', 'ReEncryptTo', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'DescribeKey', 'CreateGrant', 'RetireGrant', 'Sign', 'Verify', 'GetPublicKey', 'GenerateMac', 'VerifyMac'];

async function grantsSection(id: string): Promise<HTMLElement> {
  const s = section('Grants');
  const grants = (await kms().send(new ListGrantsCommand({ KeyId: id }))).Grants ?? [];
  const rows = grants.map((g) => [
    g.GrantId!,
    g.Name || '—',
    g.GranteePrincipal ?? '',
    (g.Operations ?? []).join(', '),
    h(
      'div',
      { class: 'actions' },
      action('Retire', s.slot, () => kms().send(new RetireGrantCommand({ KeyId: id, GrantId: g.GrantId })), ['Retire this grant?', `Grant ${g.GrantId} stops allowing its operations, for good.`]),
      action('Revoke', s.slot, () => kms().send(new RevokeGrantCommand({ KeyId: id, GrantId: g.GrantId! })), ['Revoke this grant?', `Grant ${g.GrantId} is deleted, for good.`]),
    ),
  ]);
  s.el.insertBefore(table('Grants', ['Grant ID', 'Name', 'Grantee', 'Operations', ''], rows), s.slot);
  const grantee = h('input', { name: 'grantee', autocomplete: 'off', placeholder: 'arn:aws:iam::111122223333:user/name' });
  const name = h('input', { name: 'grantName', autocomplete: 'off' });
  const ops = h('select', { name: 'grantOperations', multiple: true, size: 6 });
  for (const o of GRANT_OPS) ops.appendChild(h('option', { value: o }, o));
  const create = action('Create grant', s.slot, () =>
    kms().send(new CreateGrantCommand({ KeyId: id, GranteePrincipal: grantee.value.trim(), Name: name.value || undefined, Operations: [...ops.selectedOptions].map((o) => o.value as GrantOperation) })),
  );
  s.el.insertBefore(h('div', { class: 'toolbar' }, field('Grantee principal', grantee), field('Grant name', name), field('Operations', ops), create), s.slot);
  return s.el;
}

async function policySection(id: string): Promise<HTMLElement> {
  const s = section('Key policy');
  const text = (await kms().send(new GetKeyPolicyCommand({ KeyId: id, PolicyName: 'default' }))).Policy ?? '';
  let pretty = text;
  try {
    pretty = JSON.stringify(JSON.parse(text), null, 4);
  } catch {
    /* shown as stored */
  }
  const area = h('textarea', { name: 'keyPolicy', rows: 24, spellcheck: 'false', class: 'code', readonly: true }, pretty);
  const edit = h('button', { type: 'button' }, 'Edit');
  const save = h('button', { type: 'button', class: 'danger', hidden: true }, 'Save policy');
  const discard = h('button', { type: 'button', hidden: true }, 'Discard changes');
  const problem = h('div', { class: 'slot' });
  edit.addEventListener('click', () => {
    area.readOnly = false;
    save.hidden = false;
    discard.hidden = false;
    edit.hidden = true;
    area.focus();
  });
  discard.addEventListener('click', () => void keyPage(currentKey));
  save.addEventListener('click', async () => {
    problem.replaceChildren();
    const p = validatePolicy(area.value);
    if (p) {
      problem.replaceChildren(h('div', { class: 'error', role: 'alert' }, h('strong', {}, `Line ${p.line}`), `: ${p.message}`));
      pointAtLine(area, p.line);
      return;
    }
    if (!(await confirmAction('Replace the key policy?', 'The new policy takes effect at once and replaces the current one.', 'Save policy'))) return;
    await busy(save, problem, async () => {
      await kms().send(new PutKeyPolicyCommand({ KeyId: id, PolicyName: 'default', Policy: area.value }));
      await keyPage(currentKey);
    });
  });
  s.el.insertBefore(field('Policy document', area), s.slot);
  s.el.insertBefore(h('div', { class: 'actions' }, edit, save, discard), s.slot);
  s.el.insertBefore(problem, s.slot);
  return s.el;
}

/** A section built by `make`, or its error in its place (one failing call spoils no other). */
async function guarded(title: string, make: () => Promise<HTMLElement>): Promise<HTMLElement> {
  try {
    return await make();
  } catch (e) {
    return section(title, errorBox(e)).el;
  }
}

/** Renders the page of key `id`. */
export async function keyPage(id: string): Promise<void> {
  currentKey = id;
  const info = status('Loading the key…');
  render(h('h1', {}, `Key ${id}`), info);
  let meta: KeyMetadata;
  try {
    meta = (await kms().send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!;
  } catch (e) {
    render(h('h1', {}, `Key ${id}`), errorBox(e));
    return;
  }
  const aliases = ((await kms().send(new ListAliasesCommand({ KeyId: meta.KeyId })).catch(() => ({ Aliases: [] }))).Aliases ?? []).map((a) => a.AliasName!);
  const parts = await Promise.all([
    guarded('Tags', () => tagsSection(meta.KeyId!)),
    guarded('Key rotation', () => rotationSection(meta)),
    guarded('Grants', () => grantsSection(meta.KeyId!)),
    guarded('Key policy', () => policySection(meta.KeyId!)),
  ]);
  if (currentKey !== id) return;
  const main = render(h('h1', { 'data-key-id': meta.KeyId }, `Key ${aliases[0] ?? meta.KeyId}`), metadataSection(meta, aliases), stateSection(meta), ...parts);
  main.querySelector('h1')?.focus();
}
