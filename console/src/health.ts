// Health: the key stores and their connection state (DescribeCustomKeyStores; connect and
// disconnect), the HSM and audit health, and request rate, errors and latency over the last
// 15 minutes (P11kmsAdmin.GetHealth), drawn as SVG charts.

import {
  ConnectCustomKeyStoreCommand,
  CustomKeyStoresListEntry,
  DescribeCustomKeyStoresCommand,
  DisconnectCustomKeyStoreCommand,
} from '@aws-sdk/client-kms';
import { admin, kms } from './api';
import { busy, confirmAction, errorBox, h, render, table } from './dom';
import { chart } from './chart';

interface Part {
  Healthy: boolean;
  Detail: string;
}

interface Health {
  Hsm: Part;
  Audit: Part;
  Requests: { IntervalSeconds: number; Points: { Time: number; Requests: number; Errors: number; LatencyMeanMs: number; LatencyMaxMs: number }[] };
}

function badge(name: string, p: Part): HTMLElement {
  return h(
    'div',
    { class: `health ${p.Healthy ? 'ok' : 'bad'}`, 'data-health': name },
    h('strong', {}, `${name}: ${p.Healthy ? 'healthy' : 'unhealthy'}`),
    h('p', {}, p.Detail),
  );
}

function charts(r: Health['Requests']): HTMLElement {
  const labels = r.Points.map((p) => new Date(p.Time * 1000).toISOString().slice(11, 19));
  const perSecond = (n: number) => n / r.IntervalSeconds;
  return h(
    'div',
    { class: 'charts' },
    chart(
      `Requests and errors per second (${r.IntervalSeconds} s intervals, UTC)`,
      labels,
      [
        { name: 'requests/s', values: r.Points.map((p) => perSecond(p.Requests)), cls: 's-requests', kind: 'bar' },
        { name: 'errors/s', values: r.Points.map((p) => perSecond(p.Errors)), cls: 's-errors', kind: 'bar' },
      ],
      '/s',
    ),
    chart('Latency in ms (UTC)', labels, [
      { name: 'mean', values: r.Points.map((p) => p.LatencyMeanMs), cls: 's-mean', kind: 'line' },
      { name: 'max', values: r.Points.map((p) => p.LatencyMaxMs), cls: 's-max', kind: 'line' },
    ], ' ms'),
  );
}

function storeRow(s: CustomKeyStoresListEntry, slot: HTMLElement, reload: () => void): (Node | string)[] {
  const id = s.CustomKeyStoreId!;
  const connected = s.ConnectionState === 'CONNECTED';
  const b = h('button', { type: 'button', class: connected ? 'danger' : undefined }, connected ? 'Disconnect' : 'Connect');
  b.addEventListener('click', async () => {
    if (connected && !(await confirmAction('Disconnect this key store?', `Keys in ${s.CustomKeyStoreName} cannot be used until it is connected again.`, 'Disconnect'))) return;
    await busy(b, slot, async () => {
      await kms().send(connected ? new DisconnectCustomKeyStoreCommand({ CustomKeyStoreId: id }) : new ConnectCustomKeyStoreCommand({ CustomKeyStoreId: id }));
      reload();
    });
  });
  return [s.CustomKeyStoreName ?? '', id, s.CustomKeyStoreType ?? '', h('span', { class: `conn conn-${s.ConnectionState}` }, s.ConnectionState ?? ''), s.ConnectionErrorCode ?? '—', b];
}

async function stores(out: HTMLElement, reload: () => void): Promise<void> {
  const slot = h('div', { class: 'slot' });
  try {
    const list = (await kms().send(new DescribeCustomKeyStoresCommand({}))).CustomKeyStores ?? [];
    out.replaceChildren(
      list.length ? table('Custom key stores', ['Name', 'ID', 'Type', 'Connection', 'Error', ''], list.map((s) => storeRow(s, slot, reload))) : h('p', {}, 'No custom key stores; keys live in the default key store (the daemon’s HSM).'),
      slot,
    );
  } catch (e) {
    out.replaceChildren(errorBox(e));
  }
}

async function daemon(out: HTMLElement): Promise<void> {
  try {
    const r = await admin<Health>('GetHealth', {});
    out.replaceChildren(h('div', { class: 'health-row' }, badge('HSM', r.Hsm), badge('Audit', r.Audit)), charts(r.Requests));
  } catch (e) {
    out.replaceChildren(errorBox(e));
  }
}

/** Renders the health page. */
export async function healthPage(): Promise<void> {
  const storesOut = h('div', {});
  const daemonOut = h('div', {});
  const refresh = h('button', { type: 'button' }, 'Refresh');
  const load = () => Promise.all([stores(storesOut, () => void load()), daemon(daemonOut)]);
  refresh.addEventListener('click', () => void load());
  render(
    h('h1', {}, 'Health'),
    h('div', { class: 'actions' }, refresh),
    h('section', { class: 'card', 'aria-labelledby': 'h-daemon' }, h('h2', { id: 'h-daemon' }, 'Daemon'), daemonOut),
    h('section', { class: 'card', 'aria-labelledby': 'h-stores' }, h('h2', { id: 'h-stores' }, 'Key stores'), storesOut),
  );
  await load();
}
