// The console's entry: a hash router. Signed out, every route shows the sign-in page and
// nothing else; signed in, the navigation and the page the hash names.

import './style.css';
import { caller, signOut, signedIn } from './api';
import { auditPage } from './audit';
import { explainPage } from './explain';
import { healthPage } from './health';
import { keyPage } from './key';
import { keysPage } from './keys';
import { signInPage } from './signin';
import { wizardPage } from './wizard';

/** Shows the page for the current hash. */
async function route(): Promise<void> {
  const nav = document.getElementById('nav')!;
  const who = document.getElementById('who')!;
  const out = document.getElementById('signout')!;
  if (!signedIn()) {
    nav.hidden = true;
    out.hidden = true;
    who.textContent = '';
    signInPage(() => {
      if (location.hash === '' || location.hash === '#/' || location.hash === '#/signin') location.hash = '#/keys';
      else void route();
    });
    return;
  }
  nav.hidden = false;
  out.hidden = false;
  who.textContent = `Signed in as ${caller().arn}`;
  const path = location.hash.replace(/^#/, '') || '/keys';
  for (const a of nav.querySelectorAll('a')) {
    const here = path === a.getAttribute('href')!.slice(1) || path.startsWith(`${a.getAttribute('href')!.slice(1)}/`);
    if (here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const m = /^\/keys\/(.+)$/.exec(path);
  if (m) return keyPage(decodeURIComponent(m[1]));
  switch (path) {
    case '/create':
      return wizardPage();
    case '/explain':
      return explainPage();
    case '/audit':
      return auditPage();
    case '/health':
      return healthPage();
    default:
      return keysPage();
  }
}

document.getElementById('signout')!.addEventListener('click', () => {
  signOut();
  location.hash = '#/signin';
  void route();
});
// The skip link moves focus to the page without touching the hash (the hash is the route).
document.querySelector('.skip')!.addEventListener('click', (ev) => {
  ev.preventDefault();
  document.getElementById('main')!.focus();
});
// A link to the page already shown starts it afresh (the hash does not change, so no hashchange).
document.getElementById('nav')!.addEventListener('click', (ev) => {
  const a = (ev.target as Element).closest('a');
  if (a && a.getAttribute('href') === location.hash) {
    ev.preventDefault();
    void route();
  }
});
window.addEventListener('hashchange', () => void route());
void route();
