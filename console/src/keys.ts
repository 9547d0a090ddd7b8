// Keys list: ListKeys a page at a time (Marker), each key described (DescribeKey) with its
// aliases (ListAliases) and last use (GetKeyLastUsage); filtered by text and state.

import {
  DescribeKeyCommand,
  GetKeyLastUsageCommand,
  KeyMetadata,
  ListAliasesCommand,
  ListKeysCommand,
} from '@aws-sdk/client-kms';
import { kms } from './api';
import { errorBox, field, h, link, render, select, showError, status, table, when } from './dom';

const PAGE = 20;

interface Row {
  meta: KeyMetadata;
  aliases: string[];
  lastUse: string;
}

/** Every alias name, by target key id. */
async function aliasesByKey(): Promise<Map<string, string[]>> {
  const map = new Map<string, string[]>();
  let marker: string | undefined;
  do {
    const out = await kms().send(new ListAliasesCommand({ Marker: marker, Limit: 100 }));
    for (const a of out.Aliases ?? []) {
      if (!a.TargetKeyId || !a.AliasName) continue;
      map.set(a.TargetKeyId, [...(map.get(a.TargetKeyId) ?? []), a.AliasName]);
    }
    marker = out.Truncated ? out.NextMarker : undefined;
  } while (marker);
  return map;
}

async function lastUse(keyId: string): Promise<string> {
  try {
    const u = (await kms().send(new GetKeyLastUsageCommand({ KeyId: keyId }))).KeyLastUsage;
    return u?.Operation ? `${u.Operation} ${when(u.Timestamp)}` : 'never';
  } catch (e) {
    return `— (${(e as Error).name})`;
  }
}

async function describe(keyId: string, aliases: Map<string, string[]>): Promise<Row> {
  const meta = (await kms().send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata!;
  return { meta, aliases: aliases.get(keyId) ?? [], lastUse: await lastUse(keyId) };
}

function matches(r: Row, text: string, state: string): boolean {
  if (state && r.meta.KeyState !== state) return false;
  if (!text) return true;
  const hay = [r.meta.KeyId, r.meta.Description, r.meta.KeySpec, r.meta.KeyUsage, ...r.aliases].join(' ').toLowerCase();
  return hay.includes(text.toLowerCase());
}

function rowCells(r: Row): (Node | string)[] {
  const m = r.meta;
  return [
    link(`#/keys/${encodeURIComponent(m.KeyId!)}`, m.KeyId!),
    r.aliases.join(', ') || '—',
    h('span', { class: `state state-${m.KeyState}` }, m.KeyState ?? ''),
    m.KeySpec ?? '',
    m.KeyUsage ?? '',
    m.Origin ?? '',
    m.CustomKeyStoreId ?? 'default',
    r.lastUse,
  ];
}

/** Renders the keys list. */
export async function keysPage(): Promise<void> {
  const text = h('input', { type: 'search', name: 'filter', autocomplete: 'off' });
  const state = select('state', [
    ['', 'Any state'],
    ...['Enabled', 'Disabled', 'PendingDeletion', 'PendingImport', 'Unavailable', 'Creating'].map((s) => [s, s] as [string, string]),
  ]);
  const list = h('div', { class: 'slot' });
  const info = status('Loading keys…');
  const prev = h('button', { type: 'button', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', disabled: true }, 'Next page');
  const markers: (string | undefined)[] = [undefined];
  let rows: Row[] = [];
  let nextMarker: string | undefined;

  const draw = () => {
    const shown = rows.filter((r) => matches(r, text.value.trim(), state.value));
    list.replaceChildren(
      table(
        `Keys (page ${markers.length}, ${shown.length} of ${rows.length} shown)`,
        ['Key ID', 'Aliases', 'State', 'Spec', 'Usage', 'Origin', 'Key store', 'Last used'],
        shown.map(rowCells),
      ),
    );
    prev.disabled = markers.length < 2;
    next.disabled = !nextMarker;
  };
  const load = async () => {
    info.textContent = 'Loading keys…';
    try {
      const out = await kms().send(new ListKeysCommand({ Limit: PAGE, Marker: markers[markers.length - 1] }));
      nextMarker = out.Truncated ? out.NextMarker : undefined;
      const aliases = await aliasesByKey();
      rows = await Promise.all((out.Keys ?? []).map((k) => describe(k.KeyId!, aliases)));
      info.textContent = `${rows.length} ${rows.length === 1 ? "key" : "keys"} on this page.`;
      draw();
    } catch (e) {
      info.textContent = '';
      showError(list, e);
    }
  };
  text.addEventListener('input', draw);
  state.addEventListener('change', draw);
  next.addEventListener('click', () => {
    markers.push(nextMarker);
    void load();
  });
  prev.addEventListener('click', () => {
    markers.pop();
    void load();
  });
  render(
    h('h1', {}, 'Keys'),
    h('div', { class: 'toolbar' }, field('Filter (id, alias, description, spec)', text), field('State', state), h('a', { class: 'button', href: '#/create' }, 'Create key')),
    info,
    list,
    h('div', { class: 'actions' }, prev, next),
  );
  await load().catch((e) => list.replaceChildren(errorBox(e)));
}
