// Audit: search this node's trail (P11kmsAdmin.SearchAuditTrail) by key, principal,
// operation, outcome and time; show an event in full; and verify the chain and the
// HSM-signed checkpoints (P11kmsAdmin.VerifyAuditTrail), naming where they fail.

import { admin } from './api';
import { busy, errorBox, field, h, render, select, status, table } from './dom';

/** An audit record as stored (CloudTrail's shape); only what the table shows is typed. */
interface AuditEvent {
  eventTime?: string;
  eventName?: string;
  eventID?: string;
  requestID?: string;
  errorCode?: string;
  /** "intent" on the record written before a change is made. */
  phase?: string;
  userIdentity?: { arn?: string };
  [k: string]: unknown;
}

interface SearchResponse {
  Events: AuditEvent[];
  Truncated: boolean;
  NextMarker?: string;
}

interface Problem {
  Kind: string;
  File?: string | null;
  Line?: number | null;
  Detail: string;
}

interface VerifyResponse {
  Verified: boolean;
  Nodes: { Node: string; Records: number; Checkpoints: number; Problems: Problem[] }[];
}

/** Epoch seconds of a datetime-local input, or undefined when empty. */
function epoch(input: HTMLInputElement): number | undefined {
  if (!input.value) return undefined;
  const t = new Date(input.value).getTime();
  return Number.isNaN(t) ? undefined : Math.floor(t / 1000);
}

function showEvent(ev: AuditEvent, detail: HTMLElement): void {
  const heading = h('h2', { tabindex: '-1' }, `Event ${ev.eventID ?? ''}`);
  detail.replaceChildren(heading, h('pre', { class: 'event' }, JSON.stringify(ev, null, 2)));
  heading.focus();
}

function eventRow(ev: AuditEvent, detail: HTMLElement): (Node | string)[] {
  const show = h('button', { type: 'button', 'aria-label': `Show event ${ev.eventID}` }, 'Show');
  show.addEventListener('click', () => showEvent(ev, detail));
  const outcome =
    ev.phase === 'intent' ? h('span', { class: 'intent', title: 'Written before the change was made; the outcome follows in its own record' }, 'Intent')
    : ev.errorCode ? h('span', { class: 'failure' }, ev.errorCode)
    : h('span', { class: 'success' }, 'Success');
  return [ev.eventTime ?? '', ev.eventName ?? '', ev.userIdentity?.arn ?? '—', outcome, ev.requestID ?? '', show];
}

/** The verifier's answer in one sentence. */
function verdict(r: VerifyResponse): string {
  if (!r.Verified) return 'The trail does NOT verify: see the problems below.';
  const checkpoints = r.Nodes.reduce((n, x) => n + x.Checkpoints, 0);
  return checkpoints
    ? `The trail verifies: the hash chain is intact and ${checkpoints} HSM-signed checkpoint${checkpoints === 1 ? '' : 's'} check out.`
    : 'The trail verifies: the hash chain is intact (no HSM-signed checkpoint has been written yet).';
}

async function verify(out: HTMLElement): Promise<void> {
  const r = await admin<VerifyResponse>('VerifyAuditTrail', {});
  const nodes = r.Nodes.map((n) =>
    h(
      'div',
      { class: 'node' },
      h('p', {}, `${n.Node ? `Node ${n.Node}` : 'This node'}: ${n.Records} records, ${n.Checkpoints} checkpoints`),
      n.Problems.length
        ? table(`Problems${n.Node ? ` on node ${n.Node}` : ''}`, ['Kind', 'File', 'Line', 'Detail'], n.Problems.map((p) => [p.Kind, p.File ?? '—', p.Line == null ? '—' : String(p.Line), p.Detail]))
        : null,
    ),
  );
  out.replaceChildren(
    h('p', { class: r.Verified ? 'verified ok' : 'verified bad', 'data-verified': String(r.Verified) }, verdict(r)),
    ...nodes,
  );
}

function searchForm(run: (body: Record<string, unknown>) => void): HTMLFormElement {
  const key = h('input', { name: 'keyId', autocomplete: 'off', spellcheck: 'false' });
  const principal = h('input', { name: 'principal', autocomplete: 'off', spellcheck: 'false' });
  const operation = h('input', { name: 'operation', autocomplete: 'off', placeholder: 'Encrypt' });
  const outcome = select('outcome', [['', 'Any'], ['Success', 'Success'], ['Failure', 'Failure']]);
  const start = h('input', { type: 'datetime-local', name: 'startTime' });
  const end = h('input', { type: 'datetime-local', name: 'endTime' });
  const form = h(
    'form',
    { class: 'card search' },
    h('div', { class: 'grid' }, field('Key (id or ARN)', key), field('Principal (ARN)', principal), field('Operation', operation), field('Outcome', outcome), field('From', start), field('To', end)),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Search')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body: Record<string, unknown> = { Limit: 50 };
    if (key.value.trim()) body.KeyId = key.value.trim();
    if (principal.value.trim()) body.Principal = principal.value.trim();
    if (operation.value.trim()) body.Operation = operation.value.trim();
    if (outcome.value) body.Outcome = outcome.value;
    const s = epoch(start);
    const e = epoch(end);
    if (s !== undefined) body.StartTime = s;
    if (e !== undefined) body.EndTime = e;
    run(body);
  });
  return form;
}

/** Renders the audit page; the trail is verified on arrival. */
export async function auditPage(): Promise<void> {
  const results = h('div', { class: 'slot audit-results' });
  const detail = h('div', { class: 'event-detail' });
  const more = h('button', { type: 'button', hidden: true }, 'More events');
  const info = status();
  let query: Record<string, unknown> = {};
  let shown: AuditEvent[] = [];
  const search = async (marker?: string) => {
    const r = await admin<SearchResponse>('SearchAuditTrail', marker ? { ...query, Marker: marker } : query);
    shown = marker ? [...shown, ...r.Events] : r.Events;
    results.replaceChildren(table(`Events (${shown.length}, newest first)`, ['Time', 'Operation', 'Principal', 'Outcome', 'Request ID', ''], shown.map((e) => eventRow(e, detail))));
    info.textContent = `${shown.length} events shown${r.Truncated ? '; more match' : ''}.`;
    more.hidden = !r.Truncated;
    more.onclick = () => void busy(more, results, () => search(r.NextMarker));
  };
  const form = searchForm((body) => {
    query = body;
    const b = form.querySelector('button')!;
    void busy(b, results, () => search());
  });
  const verifyOut = h('div', { class: 'verify-result', 'aria-live': 'polite' });
  const verifySlot = h('div', { class: 'slot' });
  const verifyButton = h('button', { type: 'button' }, 'Verify the trail');
  verifyButton.addEventListener('click', () => void busy(verifyButton, verifySlot, () => verify(verifyOut)));
  render(
    h('h1', {}, 'Audit trail'),
    h('section', { class: 'card', 'aria-labelledby': 'verify-title' }, h('h2', { id: 'verify-title' }, 'Integrity'), verifyOut, h('div', { class: 'actions' }, verifyButton), verifySlot),
    form,
    info,
    results,
    more,
    detail,
  );
  await Promise.all([
    busy(verifyButton, verifySlot, () => verify(verifyOut)),
    search().catch((e) => results.replaceChildren(errorBox(e))),
  ]);
}
