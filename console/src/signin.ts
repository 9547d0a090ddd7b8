// Sign-in page: an access key (and optional session token), or the same access key used to
// assume a role through STS. The values go to api.signIn and from there only into memory.

import { signIn } from './api';
import { busy, field, h, render } from './dom';

/** Renders the sign-in form; calls `done` once signed in. */
export function signInPage(done: () => void): void {
  const akid = h('input', { name: 'accessKeyId', autocomplete: 'off', spellcheck: 'false', required: true });
  const secret = h('input', { name: 'secretAccessKey', type: 'password', autocomplete: 'off', required: true });
  const token = h('input', { name: 'sessionToken', type: 'password', autocomplete: 'off' });
  const region = h('input', { name: 'region', value: 'us-east-1', autocomplete: 'off', required: true });
  const role = h('input', { name: 'roleArn', autocomplete: 'off', spellcheck: 'false', placeholder: 'arn:aws:iam::111122223333:role/Name' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const slot = h('div', { class: 'slot' });
  const form = h(
    'form',
    { class: 'card signin', 'aria-labelledby': 'signin-title' },
    field('Access key ID', akid),
    field('Secret access key', secret),
    field('Session token (optional)', token),
    field('Region', region),
    h(
      'fieldset',
      {},
      h('legend', {}, 'Assume a role (optional)'),
      field('Role ARN', role, 'Signs in with the access key above, then uses the role’s session credentials.'),
    ),
    h('div', { class: 'actions' }, submit),
    slot,
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(submit, slot, async () => {
      await signIn({
        credentials: {
          accessKeyId: akid.value.trim(),
          secretAccessKey: secret.value,
          sessionToken: token.value || undefined,
        },
        region: region.value.trim() || 'us-east-1',
        roleArn: role.value.trim() || undefined,
      });
      // The form's copies go with the form.
      secret.value = '';
      token.value = '';
      done();
    });
  });
  render(
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', { class: 'lead' }, 'Every action in this console is a signed request to the AWS door, authorized and audited like any other client’s. Your credentials stay in this tab’s memory only.'),
    form,
  );
  akid.focus();
}
