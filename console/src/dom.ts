// Small DOM helpers. Everything is built with createElement and text nodes (never innerHTML
// from data), and no inline style attributes (the Content-Security-Policy forbids them).

import { describeError } from './api';

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | boolean | number | EventListener | undefined>;

/** Creates an element with attributes (`on<event>` keys become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Appends children, skipping empty ones. */
export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
}

let nextId = 0;
/** A fresh element id (labels point at inputs by id). */
export function uid(prefix: string): string {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/** A labelled form control: the label's `for` names the control. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  if (!control.id) control.id = uid('f');
  const hintEl = hint ? h('small', { class: 'hint', id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: control.id }, label), control, hintEl);
}

/** A select with the given options (value, text). */
export function select(name: string, options: [string, string][], value?: string): HTMLSelectElement {
  const s = h('select', { name });
  for (const [v, t] of options) s.appendChild(h('option', { value: v }, t));
  if (value !== undefined) s.value = value;
  return s;
}

/** Replaces the page content and moves focus to the page heading for screen readers. */
export function render(...children: Child[]): HTMLElement {
  const main = document.getElementById('main')!;
  main.replaceChildren();
  append(main, children);
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
  return main;
}

/** An error box: the AWS exception name and its message. */
export function errorBox(e: unknown): HTMLElement {
  const { name, message } = describeError(e);
  return h('div', { class: 'error', role: 'alert' }, h('strong', { class: 'error-name' }, name), ': ', message);
}

/** A status line that screen readers announce. */
export function status(text = ''): HTMLElement {
  return h('p', { class: 'status', role: 'status', 'aria-live': 'polite' }, text);
}

/** Shows `e` in `slot` (an element whose content it replaces). */
export function showError(slot: HTMLElement, e: unknown): void {
  slot.replaceChildren(errorBox(e));
}

/** A table with a caption, headers and rows of cells. */
export function table(caption: string, headers: string[], rows: Child[][]): HTMLTableElement {
  return h(
    'table',
    {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', { scope: 'col' }, x)))),
    h(
      'tbody',
      {},
      ...(rows.length
        ? rows.map((r) => h('tr', {}, ...r.map((c) => h('td', {}, c))))
        : [h('tr', { class: 'empty' }, h('td', { colspan: headers.length }, 'None'))]),
    ),
  );
}

/** A definition list of label/value pairs. */
export function facts(pairs: [string, Child][]): HTMLElement {
  const dl = h('dl', { class: 'facts' });
  for (const [k, v] of pairs) append(dl, [h('dt', {}, k), h('dd', {}, v ?? '—')]);
  return dl;
}

/**
 * Asks for confirmation of an action that cannot be undone, in a modal <dialog>. Resolves true
 * only when the user presses the confirm button (Escape or Cancel resolve false).
 */
export function confirmAction(title: string, detail: string, confirmLabel: string): Promise<boolean> {
  return new Promise((resolve) => {
    const cancel = h('button', { type: 'button', value: 'cancel' }, 'Cancel');
    const ok = h('button', { type: 'button', class: 'danger', value: 'confirm' }, confirmLabel);
    const titleId = uid('dlg');
    const dialog = h(
      'dialog',
      { class: 'confirm', 'aria-labelledby': titleId },
      h('h2', { id: titleId }, title),
      h('p', {}, detail),
      h('div', { class: 'actions' }, cancel, ok),
    );
    const done = (answer: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener('click', () => done(false));
    ok.addEventListener('click', () => done(true));
    dialog.addEventListener('cancel', (ev) => {
      ev.preventDefault();
      done(false);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Formats a Date, epoch seconds, or nothing. */
export function when(t: Date | number | string | undefined): string {
  if (t === undefined || t === null || t === '') return '—';
  const d = t instanceof Date ? t : typeof t === 'number' ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toISOString().replace('.000Z', 'Z');
}

/** A link to a hash route. */
export function link(href: string, text: string): HTMLAnchorElement {
  return h('a', { href }, text);
}

/** Runs `work` with `button` disabled, showing errors in `slot`. */
export async function busy(button: HTMLButtonElement, slot: HTMLElement, work: () => Promise<void>): Promise<void> {
  button.disabled = true;
  slot.replaceChildren();
  try {
    await work();
  } catch (e) {
    showError(slot, e);
  } finally {
    button.disabled = false;
  }
}
