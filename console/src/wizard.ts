// The create-key wizard, step by step as AWS's console: key type, usage, spec and origin;
// alias, description and tags; key administrators; key users (both from the identity
// directory, P11kmsAdmin.ListPrincipals); the generated key policy for review (editable);
// then CreateKey (and CreateAlias).

import {
  CreateAliasCommand,
  CreateKeyCommand,
  CustomKeyStoresListEntry,
  DescribeCustomKeyStoresCommand,
  KeySpec,
  KeyUsageType,
  OriginType,
} from '@aws-sdk/client-kms';
import { admin, caller, kms } from './api';
import { busy, errorBox, field, h, render, select, uid } from './dom';
import { consolePolicy, KeyKind, pointAtLine, validatePolicy } from './policy';

/** A principal of the identity directory (ListPrincipals). */
interface Principal {
  Arn: string;
  Type: 'User' | 'Role';
  Name: string;
}

interface ListPrincipalsResponse {
  Principals: Principal[];
  Truncated: boolean;
  NextMarker?: string;
}

/** Every user and role of the identity directory. */
export async function listPrincipals(): Promise<Principal[]> {
  const all: Principal[] = [];
  let marker: string | undefined;
  do {
    const out = await admin<ListPrincipalsResponse>('ListPrincipals', marker ? { Limit: 1000, Marker: marker } : { Limit: 1000 });
    all.push(...out.Principals);
    marker = out.Truncated ? out.NextMarker : undefined;
  } while (marker);
  return all;
}

type KeyType = 'SYMMETRIC' | 'ASYMMETRIC' | 'HMAC';

/** Everything the wizard has chosen so far. */
interface Choices {
  type: KeyType;
  usage: KeyUsageType;
  spec: KeySpec;
  origin: OriginType;
  customKeyStoreId: string;
  xksKeyId: string;
  alias: string;
  description: string;
  tags: { TagKey: string; TagValue: string }[];
  admins: string[];
  adminsMayDelete: boolean;
  users: string[];
  policy: string;
}

const SPECS: Record<string, KeySpec[]> = {
  'SYMMETRIC/ENCRYPT_DECRYPT': ['SYMMETRIC_DEFAULT'],
  'ASYMMETRIC/ENCRYPT_DECRYPT': ['RSA_2048', 'RSA_3072', 'RSA_4096'],
  'ASYMMETRIC/SIGN_VERIFY': ['RSA_2048', 'RSA_3072', 'RSA_4096', 'ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521', 'ECC_SECG_P256K1'],
  'ASYMMETRIC/KEY_AGREEMENT': ['ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521'],
  'HMAC/GENERATE_VERIFY_MAC': ['HMAC_224', 'HMAC_256', 'HMAC_384', 'HMAC_512'],
} as Record<string, KeySpec[]>;

const USAGES: Record<KeyType, KeyUsageType[]> = {
  SYMMETRIC: ['ENCRYPT_DECRYPT'],
  ASYMMETRIC: ['ENCRYPT_DECRYPT', 'SIGN_VERIFY', 'KEY_AGREEMENT'],
  HMAC: ['GENERATE_VERIFY_MAC'],
} as Record<KeyType, KeyUsageType[]>;

const STEPS = ['Configure key', 'Add labels', 'Define key administrative permissions', 'Define key usage permissions', 'Review'];

function kindOf(c: Choices): KeyKind {
  if (c.type === 'SYMMETRIC') return 'SYMMETRIC';
  if (c.type === 'HMAC') return 'HMAC';
  return c.usage as KeyKind;
}

function generatedPolicy(c: Choices): string {
  const p = consolePolicy({ account: caller().account, kind: kindOf(c), admins: c.admins, users: c.users, adminsMayDelete: c.adminsMayDelete });
  return JSON.stringify(p, null, 4);
}

function radioGroup(legend: string, name: string, options: [string, string][], value: string, onChange: (v: string) => void): HTMLElement {
  const set = h('fieldset', { class: 'radios' }, h('legend', {}, legend));
  for (const [v, text] of options) {
    const id = uid(name);
    const input = h('input', { type: 'radio', name, id, value: v, checked: v === value });
    input.addEventListener('change', () => onChange(v));
    set.appendChild(h('div', { class: 'radio' }, input, h('label', { for: id }, text)));
  }
  return set;
}

/** Step 1: type, usage, spec, origin (and the custom key store). */
function stepConfigure(c: Choices, stores: CustomKeyStoresListEntry[], redraw: () => void): HTMLElement {
  const specs = SPECS[`${c.type}/${c.usage}`] ?? [];
  if (!specs.includes(c.spec)) c.spec = specs[0];
  const spec = select('keySpec', specs.map((s) => [s, s]), c.spec);
  spec.addEventListener('change', () => (c.spec = spec.value as KeySpec));
  const origin = select('origin', [
    ['AWS_KMS', 'p11kms (key material made in the HSM)'],
    ['EXTERNAL', 'External (import key material)'],
    ['AWS_CLOUDHSM', 'Custom key store (an HSM key store)'],
    ['EXTERNAL_KEY_STORE', 'External key store (XKS)'],
  ], c.origin);
  origin.addEventListener('change', () => {
    c.origin = origin.value as OriginType;
    redraw();
  });
  const store = select('customKeyStoreId', [['', 'Choose a key store'], ...stores.map((s) => [s.CustomKeyStoreId!, `${s.CustomKeyStoreName} (${s.CustomKeyStoreId}, ${s.ConnectionState})`] as [string, string])], c.customKeyStoreId);
  store.addEventListener('change', () => (c.customKeyStoreId = store.value));
  const xks = h('input', { name: 'xksKeyId', value: c.xksKeyId, autocomplete: 'off' });
  xks.addEventListener('input', () => (c.xksKeyId = xks.value));
  const needsStore = c.origin === 'AWS_CLOUDHSM' || c.origin === 'EXTERNAL_KEY_STORE';
  return h(
    'div',
    {},
    radioGroup('Key type', 'keyType', [['SYMMETRIC', 'Symmetric'], ['ASYMMETRIC', 'Asymmetric'], ['HMAC', 'HMAC']], c.type, (v) => {
      c.type = v as KeyType;
      c.usage = USAGES[c.type][0];
      redraw();
    }),
    c.type === 'ASYMMETRIC'
      ? radioGroup('Key usage', 'keyUsage', USAGES.ASYMMETRIC.map((u) => [u, u]), c.usage, (v) => {
          c.usage = v as KeyUsageType;
          redraw();
        })
      : h('p', {}, `Key usage: ${c.usage}`),
    field('Key spec', spec),
    field('Key material origin', origin),
    needsStore ? field('Custom key store', store, stores.length ? undefined : 'No custom key stores are visible to you.') : null,
    c.origin === 'EXTERNAL_KEY_STORE' ? field('External key ID (XKS)', xks) : null,
  );
}

function tagRow(c: Choices, i: number, redraw: () => void): HTMLElement {
  const t = c.tags[i];
  const k = h('input', { name: `tagKey${i}`, value: t.TagKey, autocomplete: 'off' });
  const v = h('input', { name: `tagValue${i}`, value: t.TagValue, autocomplete: 'off' });
  k.addEventListener('input', () => (t.TagKey = k.value));
  v.addEventListener('input', () => (t.TagValue = v.value));
  const remove = h('button', { type: 'button', 'aria-label': `Remove tag ${i + 1}` }, 'Remove');
  remove.addEventListener('click', () => {
    c.tags.splice(i, 1);
    redraw();
  });
  return h('div', { class: 'tag-row' }, field(`Tag ${i + 1} key`, k), field(`Tag ${i + 1} value`, v), remove);
}

/** Step 2: alias, description, tags. */
function stepLabels(c: Choices, redraw: () => void): HTMLElement {
  const alias = h('input', { name: 'alias', value: c.alias, autocomplete: 'off', placeholder: 'alias/my-key' });
  alias.addEventListener('input', () => (c.alias = alias.value));
  const desc = h('textarea', { name: 'description', rows: 2 }, c.description);
  desc.addEventListener('input', () => (c.description = desc.value));
  const add = h('button', { type: 'button' }, 'Add tag');
  add.addEventListener('click', () => {
    c.tags.push({ TagKey: '', TagValue: '' });
    redraw();
  });
  return h(
    'div',
    {},
    field('Alias', alias, 'Optional; "alias/" is added when missing.'),
    field('Description', desc),
    h('fieldset', {}, h('legend', {}, 'Tags'), ...c.tags.map((_, i) => tagRow(c, i, redraw)), add),
  );
}

/** One checkbox of a principal picker, kept in step with `chosen`. */
function principalBox(name: string, p: Principal, chosen: string[]): HTMLElement {
  const id = uid(name);
  const box = h('input', { type: 'checkbox', name, id, value: p.Arn, checked: chosen.includes(p.Arn) });
  box.addEventListener('change', () => {
    const at = chosen.indexOf(p.Arn);
    if (box.checked && at < 0) chosen.push(p.Arn);
    if (!box.checked && at >= 0) chosen.splice(at, 1);
  });
  return h('div', { class: 'check' }, box, h('label', { for: id }, `${p.Name} (${p.Type})`, h('small', { class: 'arn' }, p.Arn)));
}

/**
 * A checkbox list of the directory's principals (or why it could not be read), plus a field
 * for a principal it does not list (another account's, say); `chosen` is updated in place.
 */
function principalPicker(legend: string, name: string, all: Principal[], chosen: string[], loadError: unknown): HTMLElement {
  const set = h('fieldset', { class: 'picker' }, h('legend', {}, legend));
  const list = h('div', {});
  if (loadError) list.appendChild(h('div', {}, h('p', {}, 'The identity directory could not be read:'), errorBox(loadError)));
  else if (!all.length) list.appendChild(h('p', {}, 'The identity directory has no users or roles.'));
  const known = new Set(all.map((p) => p.Arn));
  const extra = chosen.filter((a) => !known.has(a)).map((a): Principal => ({ Arn: a, Type: a.includes(':role/') ? 'Role' : 'User', Name: a.split(/[:/]/).pop() ?? a }));
  for (const p of [...all, ...extra]) list.appendChild(principalBox(name, p, chosen));
  const other = h('input', { name: `${name}Other`, autocomplete: 'off', spellcheck: 'false', placeholder: 'arn:aws:iam::444455556666:root' });
  const add = h('button', { type: 'button' }, 'Add principal');
  add.addEventListener('click', () => {
    const arn = other.value.trim();
    if (!/^arn:aws[a-z-]*:iam::\d{12}:(root|user\/.+|role\/.+)$/.test(arn) || chosen.includes(arn)) {
      other.setCustomValidity('Enter a user, role or account root ARN not already chosen.');
      other.reportValidity();
      return;
    }
    other.setCustomValidity('');
    chosen.push(arn);
    list.appendChild(principalBox(name, { Arn: arn, Type: arn.includes(':role/') ? 'Role' : 'User', Name: arn.split(/[:/]/).pop() ?? arn }, chosen));
    other.value = '';
  });
  set.append(list, h('div', { class: 'toolbar' }, field(`Other principal (${legend.toLowerCase()})`, other), add));
  return set;
}

/** Step 5: the generated policy for review, editable, validated; then create. */
function stepReview(c: Choices, area: HTMLTextAreaElement, problem: HTMLElement): HTMLElement {
  const reset = h('button', { type: 'button' }, 'Reset to the generated policy');
  reset.addEventListener('click', () => {
    c.policy = generatedPolicy(c);
    area.value = c.policy;
  });
  area.addEventListener('input', () => (c.policy = area.value));
  return h(
    'div',
    {},
    h(
      'dl',
      { class: 'facts' },
      ...[
        ['Key type', `${c.type} / ${c.usage}`],
        ['Key spec', c.spec],
        ['Origin', c.origin + (c.customKeyStoreId ? ` (${c.customKeyStoreId})` : '')],
        ['Alias', c.alias || '—'],
        ['Description', c.description || '—'],
        ['Tags', c.tags.filter((t) => t.TagKey).map((t) => `${t.TagKey}=${t.TagValue}`).join(', ') || '—'],
        ['Key administrators', c.admins.join(', ') || '—'],
        ['Key users', c.users.join(', ') || '—'],
      ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
    ),
    field('Key policy', area, 'The policy AWS’s console generates for these choices. You may edit it.'),
    reset,
    problem,
  );
}

function normalAlias(a: string): string {
  const t = a.trim();
  return !t || t.startsWith('alias/') ? t : `alias/${t}`;
}

/** Creates the key (and its alias); returns its id. */
async function create(c: Choices): Promise<string> {
  const meta = (
    await kms().send(
      new CreateKeyCommand({
        KeySpec: c.spec,
        KeyUsage: c.usage,
        Origin: c.origin,
        CustomKeyStoreId: c.customKeyStoreId || undefined,
        XksKeyId: c.origin === 'EXTERNAL_KEY_STORE' ? c.xksKeyId : undefined,
        Description: c.description || undefined,
        Tags: c.tags.filter((t) => t.TagKey).length ? c.tags.filter((t) => t.TagKey) : undefined,
        Policy: c.policy,
      }),
    )
  ).KeyMetadata!;
  const alias = normalAlias(c.alias);
  if (alias) await kms().send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: meta.KeyId! }));
  return meta.KeyId!;
}

/** The wizard's state between steps: the choices and what was loaded for the pickers. */
interface Wizard {
  c: Choices;
  step: number;
  principals: Principal[];
  stores: CustomKeyStoresListEntry[];
  loadError: unknown;
  area: HTMLTextAreaElement;
  problem: HTMLElement;
}

/** The content of the current step. */
function stepView(w: Wizard, redraw: () => void): HTMLElement {
  const { c } = w;
  switch (w.step) {
    case 0:
      return stepConfigure(c, w.stores, redraw);
    case 1:
      return stepLabels(c, redraw);
    case 2:
      return h('div', {}, principalPicker('Key administrators', 'admins', w.principals, c.admins, w.loadError), adminDeletion(c));
    case 3:
      return principalPicker('Key users', 'users', w.principals, c.users, w.loadError);
    default:
      return stepReview(c, w.area, w.problem);
  }
}

/** Whether the current step may be left forward; shows why not in `slot`. */
function stepDone(w: Wizard, slot: HTMLElement): boolean {
  const needsStore = w.c.origin === 'AWS_CLOUDHSM' || w.c.origin === 'EXTERNAL_KEY_STORE';
  if (w.step === 0 && needsStore && !w.c.customKeyStoreId) {
    slot.replaceChildren(errorBox(new Error('Choose a custom key store for this origin.')));
    return false;
  }
  slot.replaceChildren();
  return true;
}

/** The last step: validates the policy (pointing at its line), creates, opens the key. */
async function finish(w: Wizard, button: HTMLButtonElement, slot: HTMLElement): Promise<void> {
  const p = validatePolicy(w.area.value);
  if (p) {
    w.problem.replaceChildren(h('div', { class: 'error', role: 'alert' }, h('strong', {}, `Line ${p.line}`), `: ${p.message}`));
    pointAtLine(w.area, p.line);
    return;
  }
  w.problem.replaceChildren();
  await busy(button, slot, async () => {
    const id = await create(w.c);
    location.hash = `#/keys/${encodeURIComponent(id)}`;
  });
}

/** Renders the wizard. */
export async function wizardPage(): Promise<void> {
  const w: Wizard = {
    c: {
      type: 'SYMMETRIC', usage: 'ENCRYPT_DECRYPT', spec: 'SYMMETRIC_DEFAULT', origin: 'AWS_KMS', customKeyStoreId: '', xksKeyId: '',
      alias: '', description: '', tags: [], admins: [], adminsMayDelete: true, users: [], policy: '',
    },
    step: 0, principals: [], stores: [], loadError: null,
    area: h('textarea', { name: 'policy', rows: 24, spellcheck: 'false', class: 'code' }),
    problem: h('div', { class: 'slot' }),
  };
  const slot = h('div', { class: 'slot' });
  const body = h('div', { class: 'step-body' });
  const back = h('button', { type: 'button' }, 'Previous');
  const next = h('button', { type: 'button', class: 'primary' }, 'Next');
  const steps = h('ol', { class: 'steps' });
  const draw = () => {
    steps.replaceChildren(...STEPS.map((s, i) => h('li', { 'aria-current': i === w.step ? 'step' : undefined }, `Step ${i + 1}: ${s}`)));
    body.replaceChildren(h('h2', { tabindex: '-1' }, STEPS[w.step]), stepView(w, draw));
    back.disabled = w.step === 0;
    next.textContent = w.step === STEPS.length - 1 ? 'Create key' : 'Next';
  };
  const move = (by: number) => {
    w.step += by;
    w.problem.replaceChildren();
    draw();
    body.querySelector('h2')?.focus();
  };
  back.addEventListener('click', () => move(-1));
  next.addEventListener('click', () => {
    if (w.step === STEPS.length - 1) return void finish(w, next, slot);
    if (!stepDone(w, slot)) return;
    if (w.step === 3) w.area.value = w.c.policy = generatedPolicy(w.c);
    move(1);
  });
  render(h('h1', {}, 'Create key'), steps, body, slot, h('div', { class: 'actions' }, back, next));
  try {
    [w.principals, w.stores] = await Promise.all([
      listPrincipals(),
      kms().send(new DescribeCustomKeyStoresCommand({})).then((o) => o.CustomKeyStores ?? [], () => []),
    ]);
  } catch (e) {
    w.loadError = e;
  }
  draw();
}

function adminDeletion(c: Choices): HTMLElement {
  const id = uid('del');
  const box = h('input', { type: 'checkbox', id, name: 'adminsMayDelete', checked: c.adminsMayDelete });
  box.addEventListener('change', () => (c.adminsMayDelete = box.checked));
  return h('div', { class: 'check' }, box, h('label', { for: id }, 'Allow key administrators to delete this key'));
}
