// Key policies: the one AWS's console generates for the wizard's choices, a validator that
// points at the line of the first problem, and a rendering that highlights statements.

import { h } from './dom';

/** The wizard's choice of key type, which decides the key users' actions. */
export type KeyKind = 'SYMMETRIC' | 'SIGN_VERIFY' | 'ENCRYPT_DECRYPT' | 'HMAC' | 'KEY_AGREEMENT';

/** The key administrators' actions in AWS's console policy ("Allow access for Key Administrators"). */
export const ADMIN_ACTIONS = [
  'kms:Create*',
  'kms:Describe*',
  'kms:Enable*',
  'kms:List*',
  'kms:Put*',
  'kms:Update*',
  'kms:Revoke*',
  'kms:Disable*',
  'kms:Get*',
  'kms:Delete*',
  'kms:TagResource',
  'kms:UntagResource',
  'kms:ScheduleKeyDeletion',
  'kms:CancelKeyDeletion',
  'kms:RotateKeyOnDemand',
];

const USER_ACTIONS: Record<KeyKind, string[]> = {
  SYMMETRIC: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:DescribeKey'],
  SIGN_VERIFY: ['kms:DescribeKey', 'kms:GetPublicKey', 'kms:Sign', 'kms:Verify'],
  ENCRYPT_DECRYPT: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:DescribeKey', 'kms:GetPublicKey'],
  HMAC: ['kms:DescribeKey', 'kms:GenerateMac', 'kms:VerifyMac'],
  KEY_AGREEMENT: ['kms:DescribeKey', 'kms:GetPublicKey', 'kms:DeriveSharedSecret'],
};

/** The choices the generated policy depends on. */
export interface PolicyChoices {
  account: string;
  kind: KeyKind;
  admins: string[];
  users: string[];
  /** AWS's "Allow key administrators to delete this key" (default on). */
  adminsMayDelete: boolean;
}

/** One principal as a string, several as a list (as AWS's console writes them). */
function principal(arns: string[]): { AWS: string | string[] } {
  return { AWS: arns.length === 1 ? arns[0] : arns };
}

/** The key policy AWS's console generates for these choices (Id "key-consolepolicy-3"). */
export function consolePolicy(c: PolicyChoices): object {
  const statements: object[] = [
    {
      Sid: 'Enable IAM User Permissions',
      Effect: 'Allow',
      Principal: { AWS: `arn:aws:iam::${c.account}:root` },
      Action: 'kms:*',
      Resource: '*',
    },
  ];
  if (c.admins.length) {
    const deletion = ['kms:ScheduleKeyDeletion', 'kms:CancelKeyDeletion'];
    statements.push({
      Sid: 'Allow access for Key Administrators',
      Effect: 'Allow',
      Principal: principal(c.admins),
      Action: ADMIN_ACTIONS.filter((a) => c.adminsMayDelete || !deletion.includes(a)),
      Resource: '*',
    });
  }
  if (c.users.length) {
    statements.push({
      Sid: 'Allow use of the key',
      Effect: 'Allow',
      Principal: principal(c.users),
      Action: USER_ACTIONS[c.kind],
      Resource: '*',
    });
    if (c.kind === 'SYMMETRIC') {
      statements.push({
        Sid: 'Allow attachment of persistent resources',
        Effect: 'Allow',
        Principal: principal(c.users),
        Action: ['kms:CreateGrant', 'kms:ListGrants', 'kms:RevokeGrant'],
        Resource: '*',
        Condition: { Bool: { 'kms:GrantIsForAWSResource': 'true' } },
      });
    }
  }
  return { Version: '2012-10-17', Id: 'key-consolepolicy-3', Statement: statements };
}

/** A policy text problem and the 1-based line it is on. */
export interface PolicyProblem {
  line: number;
  message: string;
}

function lineOf(text: string, offset: number): number {
  return text.slice(0, Math.max(0, offset)).split('\n').length;
}

/** The offset where JSON.parse failed, from the engine's message or by bisection. */
function failOffset(text: string, err: Error): number {
  const pos = /position (\d+)/.exec(err.message);
  if (pos) return Number(pos[1]);
  const lc = /line (\d+) column (\d+)/.exec(err.message);
  if (lc) {
    const lines = text.split('\n');
    return lines.slice(0, Number(lc[1]) - 1).join('\n').length + Number(lc[2]);
  }
  return text.length;
}

/** The line on which the statement with index `i` starts (searching for its opening brace). */
function statementLine(text: string, i: number): number {
  const start = text.search(/"Statement"\s*:\s*\[/);
  if (start < 0) return 1;
  let depth = 0;
  let count = -1;
  let inString = false;
  for (let p = text.indexOf('[', start) + 1; p < text.length; p++) {
    const ch = text[p];
    if (inString) {
      if (ch === '\\') p++;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === '{' || ch === '[') {
      if (depth === 0 && ch === '{' && ++count === i) return lineOf(text, p);
      depth++;
    } else if (ch === '}' || ch === ']') {
      if (depth === 0) break;
      depth--;
    }
  }
  return lineOf(text, start);
}

function statementProblem(st: unknown): string | null {
  if (typeof st !== 'object' || st === null || Array.isArray(st)) return 'a statement must be an object';
  const s = st as Record<string, unknown>;
  if (s.Effect !== 'Allow' && s.Effect !== 'Deny') return 'Effect must be "Allow" or "Deny"';
  if (!('Principal' in s) && !('NotPrincipal' in s)) return 'a key policy statement needs a Principal';
  if (!('Action' in s) && !('NotAction' in s)) return 'a statement needs an Action';
  if (!('Resource' in s) && !('NotResource' in s)) return 'a statement needs a Resource';
  return null;
}

/** Checks a key policy's text: JSON syntax and the shape of its statements. */
export function validatePolicy(text: string): PolicyProblem | null {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { line: lineOf(text, failOffset(text, e as Error)), message: `not valid JSON: ${(e as Error).message}` };
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return { line: 1, message: 'the policy must be a JSON object' };
  const d = doc as Record<string, unknown>;
  if (d.Version !== undefined && d.Version !== '2012-10-17' && d.Version !== '2008-10-17')
    return { line: lineOf(text, text.indexOf('"Version"')), message: 'Version must be "2012-10-17"' };
  const st = Array.isArray(d.Statement) ? d.Statement : d.Statement === undefined ? null : [d.Statement];
  if (!st || st.length === 0) return { line: 1, message: 'the policy needs at least one Statement' };
  for (let i = 0; i < st.length; i++) {
    const p = statementProblem(st[i]);
    if (p) return { line: statementLine(text, i), message: `Statement[${i}]: ${p}` };
  }
  return null;
}

/** Selects line `line` of a textarea and scrolls it into view, to point at a problem. */
export function pointAtLine(area: HTMLTextAreaElement, line: number): void {
  const lines = area.value.split('\n');
  const start = lines.slice(0, line - 1).join('\n').length + (line > 1 ? 1 : 0);
  area.focus();
  area.setSelectionRange(start, start + (lines[line - 1]?.length ?? 0));
  const lineHeight = area.scrollHeight / Math.max(lines.length, 1);
  area.scrollTop = Math.max(0, (line - 3) * lineHeight);
}

/** The name ExplainAccess gives a statement: its Sid, else `Statement[i]`. */
export function statementName(st: { Sid?: string }, i: number): string {
  return st.Sid ? st.Sid : `Statement[${i}]`;
}

/**
 * Renders a policy document one statement per block, marking the statements whose names are in
 * `highlight` (class "deciding", and a label screen readers read).
 */
export function renderPolicy(doc: { Statement?: unknown }, highlight: Set<string>): HTMLElement {
  const raw = doc.Statement;
  const statements = (Array.isArray(raw) ? raw : raw ? [raw] : []) as { Sid?: string }[];
  const wrap = h('div', { class: 'policy-view' });
  statements.forEach((st, i) => {
    const name = statementName(st, i);
    const hit = highlight.has(name);
    wrap.appendChild(
      h(
        'section',
        { class: hit ? 'statement deciding' : 'statement', 'data-statement': name, 'aria-label': hit ? `${name} (deciding statement)` : name },
        h('div', { class: 'statement-name' }, name, hit ? h('span', { class: 'badge' }, 'deciding') : null),
        h('pre', {}, JSON.stringify(st, null, 2)),
      ),
    );
  });
  return wrap;
}
