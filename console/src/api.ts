// The console's only way to the daemon: the AWS door at this page's own origin, every request
// signed with SigV4 by the AWS SDK for JavaScript v3 (KMS, STS) or, for the p11kms-only admin
// operations, by @smithy/signature-v4. Credentials live in this module's memory only: never in
// localStorage, sessionStorage, cookies or a URL; signOut() drops them.

import { KMSClient } from '@aws-sdk/client-kms';
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';

/** Credentials as the SDK takes them. */
export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** Who is signed in: the credentials, the region, and GetCallerIdentity's answer. */
interface Session {
  credentials: Credentials;
  region: string;
  arn: string;
  account: string;
  kms: KMSClient;
}

let session: Session | null = null;

const endpoint = (): string => window.location.origin;

function stsClient(credentials: Credentials, region: string): STSClient {
  return new STSClient({ endpoint: endpoint(), region, credentials, maxAttempts: 1 });
}

/** The sign-in form's input. A role ARN means: assume that role with the access key first. */
export interface SignIn {
  credentials: Credentials;
  region: string;
  roleArn?: string;
}

/** Signs in: assumes the role if one is given, then asks GetCallerIdentity who we are. */
export async function signIn(input: SignIn): Promise<void> {
  let credentials = input.credentials;
  if (input.roleArn) {
    const out = await stsClient(credentials, input.region).send(
      new AssumeRoleCommand({ RoleArn: input.roleArn, RoleSessionName: 'p11kms-console' }),
    );
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey) throw new Error('AssumeRole returned no credentials');
    credentials = {
      accessKeyId: c.AccessKeyId,
      secretAccessKey: c.SecretAccessKey,
      sessionToken: c.SessionToken,
    };
  }
  const me = await stsClient(credentials, input.region).send(new GetCallerIdentityCommand({}));
  session = {
    credentials,
    region: input.region,
    arn: me.Arn ?? '',
    account: me.Account ?? '',
    kms: new KMSClient({ endpoint: endpoint(), region: input.region, credentials, maxAttempts: 1 }),
  };
}

/** Forgets the credentials (the only copy). */
export function signOut(): void {
  session = null;
}

/** Whether credentials are held (the router shows the sign-in page otherwise). */
export function signedIn(): boolean {
  return session !== null;
}

function current(): Session {
  if (!session) throw new Error('Not signed in');
  return session;
}

/** The KMS client of the signed-in user. */
export function kms(): KMSClient {
  return current().kms;
}

/** The signed-in principal's ARN and account (from GetCallerIdentity). */
export function caller(): { arn: string; account: string; region: string } {
  const s = current();
  return { arn: s.arn, account: s.account, region: s.region };
}

/** An error as the door answered it: the AWS exception name and its message. */
export class AwsError extends Error {
  constructor(
    readonly awsName: string,
    message: string,
  ) {
    super(message);
    this.name = awsName;
  }
}

/**
 * Calls a p11kms-only operation `P11kmsAdmin.<op>` on the AWS door (JSON 1.1, SigV4 service
 * `kms`), the way the SDK calls TrentService operations.
 */
export async function admin<T>(op: string, body: object): Promise<T> {
  const s = current();
  const url = new URL('/', endpoint());
  const payload = JSON.stringify(body);
  const signer = new SignatureV4({
    credentials: s.credentials,
    region: s.region,
    service: 'kms',
    sha256: Sha256,
  });
  const signed = await signer.sign({
    method: 'POST',
    protocol: url.protocol,
    hostname: url.hostname,
    port: url.port ? Number(url.port) : undefined,
    path: '/',
    query: {},
    headers: {
      host: url.host,
      'content-type': 'application/x-amz-json-1.1',
      'x-amz-target': `P11kmsAdmin.${op}`,
    },
    body: payload,
  });
  const headers = new Headers();
  for (const [k, v] of Object.entries(signed.headers)) {
    if (k.toLowerCase() !== 'host') headers.set(k, v);
  }
  const res = await fetch(url, { method: 'POST', headers, body: payload, credentials: 'omit' });
  const text = await res.text();
  const json = parseBody(text);
  if (!res.ok) throw new AwsError(errorName(json, res), json.message ?? json.Message ?? text);
  if (json === NOT_JSON) throw new AwsError('InvalidResponse', `P11kmsAdmin.${op} answered with a body that is not JSON`);
  return json as T;
}

const NOT_JSON = Object.freeze({}) as { __type?: string; message?: string; Message?: string };

/** A response body as JSON; NOT_JSON when it is not (an error page, say). */
function parseBody(text: string): typeof NOT_JSON {
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return NOT_JSON;
  }
}

function errorName(json: { __type?: string }, res: Response): string {
  const t = json.__type ?? res.headers.get('x-amzn-errortype') ?? `HTTP ${res.status}`;
  return t.split('#').pop()!.split(':')[0];
}

/** "Name: message" of any error the SDK or admin() threw. */
export function describeError(e: unknown): { name: string; message: string } {
  if (e instanceof Error) return { name: e.name || 'Error', message: e.message };
  return { name: 'Error', message: String(e) };
}
