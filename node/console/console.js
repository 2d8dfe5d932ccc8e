// The Tollgate web console: plain JavaScript, no framework, no build step,
// nothing loaded from elsewhere. Every node serves this file at
// /console/console.js (node/src/http/console.rs).
//
// Rules this file keeps:
// - The admin token lives in this tab's sessionStorage only: never in
//   localStorage, a cookie or a URL, never logged. Signing out, or any 401,
//   forgets it.
// - Everything that comes from the API is put on the page as text
//   (textContent, text nodes, attributes): never innerHTML.
// - A key's secret is shown once, in a panel that forgets it when dismissed;
//   lists show the visible prefix at most.
// - No inline script or style: the page's Content-Security-Policy forbids
//   them. Charts are SVG elements made here, each with a text alternative
//   (a title and description, and a table of the same numbers).
'use strict';

(() => {
  const TOKEN_KEY = 'tollgate.console.adminToken';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  /** How often the live pages ask again, in milliseconds. */
  const CLUSTER_EVERY_MS = 5000;
  const USAGE_EVERY_MS = 5000;
  const DECISIONS_EVERY_MS = 2000;
  /** How often a read answered 503 (no leader for a moment) is tried. */
  const READ_ATTEMPTS = 4;
  /** How much history the live decisions chart keeps. */
  const DECISIONS_WINDOW_MS = 5 * 60 * 1000;

  // ---------------------------------------------------------------------------
  // The page's fixed parts

  const $ = (id) => document.getElementById(id);
  const view = $('view');
  const nav = $('nav');
  const signInSection = $('sign-in');
  const signInForm = $('sign-in-form');
  const signInMessage = $('sign-in-message');
  const signOutButton = $('sign-out');
  const statusRegion = $('status');
  const nodeName = $('node-name');
  const confirmDialog = $('confirm');

  // ---------------------------------------------------------------------------
  // Making elements: text is always text.

  function setAttributes(node, attributes) {
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith('on') && typeof value === 'function') {
        node.addEventListener(name.slice(2), value);
      } else {
        // `value`, `checked` and `selected` as attributes: the defaults a
        // form's reset() goes back to.
        node.setAttribute(name, value === true ? '' : String(value));
      }
    }
  }

  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else if (child instanceof Node) node.appendChild(child);
      else node.appendChild(document.createTextNode(String(child)));
    }
    return node;
  }

  /** An HTML element: `h('p', {class: 'x'}, 'text', child, ...)`. */
  function h(tag, attributes, ...children) {
    const node = document.createElement(tag);
    setAttributes(node, attributes);
    return append(node, children);
  }

  /** An SVG element, the same way. */
  function s(tag, attributes, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttributes(node, attributes);
    return append(node, children);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  let uniqueCounter = 0;
  function uniqueId(prefix) {
    uniqueCounter += 1;
    return `${prefix}-${uniqueCounter}`;
  }

  const plural = (n, noun) => `${typeof n === 'number' ? n.toLocaleString('en') : n} ${n === 1 ? noun : `${noun}s`}`;
  const number = (n) => (typeof n === 'number' ? n.toLocaleString('en') : '—');
  const orDash = (v) => (v === null || v === undefined || v === '' ? '—' : v);

  /** A polite announcement for assistive technology (and a toast for eyes). */
  let statusTimer = null;
  function announce(text) {
    statusRegion.textContent = text;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { statusRegion.textContent = ''; }, 6000);
  }

  /** A field, its label, and an optional hint, tied together by ids. */
  function field(labelText, input, hint) {
    const id = input.id || uniqueId('f');
    input.id = id;
    const hintNode = hint ? h('span', {class: 'hint', id: `${id}-hint`}, hint) : null;
    if (hintNode) input.setAttribute('aria-describedby', hintNode.id);
    if (input.type === 'checkbox') {
      return h('div', {class: 'field check'}, input, h('label', {for: id}, labelText), hintNode);
    }
    return h('div', {class: 'field'}, h('label', {for: id}, labelText), input, hintNode);
  }

  function table(caption, headers, rows, attributes) {
    return h('div', {class: 'table-wrap'},
      h('table', attributes || {},
        h('caption', {}, caption),
        h('thead', {}, h('tr', {}, headers.map((c) => h('th', {scope: 'col', class: c.num ? 'num' : null}, c.label || c)))),
        h('tbody', {}, rows)));
  }

  function facts(pairs) {
    return h('dl', {class: 'facts'}, pairs.map(([term, value]) => h('div', {}, h('dt', {}, term), h('dd', {}, value))));
  }

  function badge(kind, text) {
    return h('span', {class: `badge ${kind}`}, text);
  }

  function messageBox(kind, text) {
    return h('p', {class: `message ${kind}`, role: kind === 'error' ? 'alert' : null}, text);
  }

  // ---------------------------------------------------------------------------
  // The admin token: this tab's sessionStorage, nowhere else.

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage unavailable: there is nothing to forget.
    }
  }

  // ---------------------------------------------------------------------------
  // The admin API

  class ApiError extends Error {
    constructor(status, code, message, fieldName) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = fieldName;
    }
  }

  /** Thrown after a 401 sent the console back to sign-in: nothing to show. */
  class SignedOut extends Error {}

  /** What went wrong, in words for the operator (never the token). */
  function describe(error) {
    if (error instanceof ApiError) {
      let text = error.message || `HTTP ${error.status}`;
      if (error.field) text = `${error.field}: ${text}`;
      if (error.status === 403) text = `Not allowed with this token (403): ${text}`;
      else if (error.status === 429) text = `Too many failed sign-ins from this address (429): ${text}`;
      else if (error.status >= 500) text = `The cluster could not do it (${error.status}): ${text}`;
      return text;
    }
    return error && error.message ? error.message : String(error);
  }

  /**
   * Calls the admin API on this node with the token, as JSON. A 401 signs
   * out (the token is forgotten) and throws SignedOut; any other failure
   * throws an ApiError with the API's code, field and message.
   */
  async function api(method, path, body) {
    const headers = {Accept: 'application/json'};
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    const init = {method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer'};
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    for (let attempt = 1; ; attempt += 1) {
      try {
        response = await fetch(path, init);
      } catch (e) {
        throw new ApiError(0, 'network', 'this node could not be reached; is it running?');
      }
      // A read during an election (no leader for a moment) is answered 503
      // with Retry-After: asked again a few times before it is an error.
      // Writes are not repeated: the operator sees the error and decides.
      if (response.status !== 503 || method !== 'GET' || attempt >= READ_ATTEMPTS) break;
      const seconds = Number(response.headers.get('Retry-After')) || 1;
      await new Promise((resolve) => { setTimeout(resolve, Math.min(5, Math.max(0.25, seconds)) * 1000); });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (response.status === 401) {
      signOut('The admin token was refused (401): it is not valid on this cluster (any more). Sign in again.');
      throw new SignedOut();
    }
    if (!response.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(response.status, e.code || 'http', e.message || response.statusText, e.field || null);
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------------------
  // Sign-in and sign-out

  function showSignIn(message) {
    stopPage();
    nav.hidden = true;
    signOutButton.hidden = true;
    nodeName.textContent = '';
    clear(view);
    signInSection.hidden = false;
    signInMessage.hidden = !message;
    signInMessage.textContent = message || '';
    document.title = 'Sign in · Tollgate console';
    const input = $('token');
    input.value = '';
    input.focus();
  }

  function signOut(message) {
    forgetToken();
    showSignIn(message);
  }

  signInForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('token');
    const value = input.value.trim();
    input.value = '';
    if (!value) {
      showSignIn('Enter an admin token.');
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (e) {
      showSignIn('This browser keeps no session storage for this page, so the console cannot hold a token.');
      return;
    }
    let signedIn = false;
    try {
      await api('GET', '/v1/admin/cluster');
    } catch (e) {
      if (e instanceof SignedOut) {
        showSignIn('That token was refused (401): check it and try again.');
      } else if (e instanceof ApiError && e.status === 403) {
        // A valid token that policies keep from the cluster page: signed in;
        // each page says what this token may not see.
        signedIn = true;
      } else {
        forgetToken();
        showSignIn(describe(e));
      }
      if (!signedIn) return;
    }
    signInSection.hidden = true;
    if (!location.hash.startsWith('#/')) location.hash = '#/cluster';
    else route();
  });

  signOutButton.addEventListener('click', () => {
    signOut('Signed out: the token is forgotten in this tab.');
  });

  // ---------------------------------------------------------------------------
  // Pages: hash routing (#/keys), one timer and one generation per page, so
  // an answer that arrives after the operator moved on is dropped.

  let generation = 0;
  let timers = [];

  function stopPage() {
    generation += 1;
    for (const t of timers) clearInterval(t);
    timers = [];
  }

  function every(ms, fn) {
    timers.push(setInterval(fn, ms));
  }

  const pages = {
    cluster: {title: 'Cluster', render: clusterPage},
    apis: {title: 'APIs', render: apisPage},
    plans: {title: 'Plans', render: plansPage},
    keys: {title: 'Keys', render: keysPage},
    usage: {title: 'Usage', render: usagePage},
    decisions: {title: 'Live decisions', render: decisionsPage},
  };

  function parseHash() {
    const raw = location.hash.startsWith('#/') ? location.hash.slice(2) : '';
    const [name, query] = raw.split('?');
    return {name, params: new URLSearchParams(query || '')};
  }

  function route() {
    if (!token()) {
      showSignIn(null);
      return;
    }
    const {name, params} = parseHash();
    const page = pages[name];
    if (!page) {
      location.replace('#/cluster');
      return;
    }
    stopPage();
    const mine = generation;
    signInSection.hidden = true;
    nav.hidden = false;
    signOutButton.hidden = false;
    for (const link of nav.querySelectorAll('a')) {
      if (link.getAttribute('href') === `#/${name}`) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${page.title} · Tollgate console`;
    clear(view);
    const heading = h('h1', {tabindex: '-1', id: 'page-title'}, page.title);
    const body = h('div', {id: `page-${name}`});
    view.append(heading, body);
    heading.focus();
    const live = () => mine === generation;
    Promise.resolve(page.render(body, params, live)).catch((e) => {
      if (e instanceof SignedOut || !live()) return;
      body.append(messageBox('error', describe(e)));
    });
  }

  window.addEventListener('hashchange', () => {
    // `#main` (the skip link) is not a page.
    if (location.hash.startsWith('#/') || location.hash === '') route();
  });

  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    $('main').focus();
  });

  // ---------------------------------------------------------------------------
  // Confirmation: a modal <dialog>, Cancel focused first.

  function confirmAction(title, text, okLabel) {
    return new Promise((resolve) => {
      $('confirm-title').textContent = title;
      $('confirm-text').textContent = text;
      $('confirm-ok').textContent = okLabel;
      confirmDialog.returnValue = '';
      const closed = () => {
        confirmDialog.removeEventListener('close', closed);
        resolve(confirmDialog.returnValue === 'ok');
      };
      confirmDialog.addEventListener('close', closed);
      confirmDialog.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---------------------------------------------------------------------------
  // Lists: a page at a time, through the API's `limit` and `after` cursor.

  class Pager {
    constructor(limit) {
      this.limit = limit;
      this.reset();
    }
    reset() {
      this.afters = [null];
      this.index = 0;
      this.next = null;
    }
    query() {
      const q = new URLSearchParams({limit: String(this.limit)});
      const after = this.afters[this.index];
      if (after) q.set('after', after);
      return q;
    }
    forward() {
      if (!this.next) return;
      this.afters[this.index + 1] = this.next;
      this.index += 1;
    }
    back() {
      if (this.index > 0) this.index -= 1;
    }
  }

  function pagerControls(pager, count, what, reload) {
    const previous = h('button', {type: 'button', class: 'secondary', disabled: pager.index === 0,
      onclick: () => { pager.back(); reload(); }}, 'Previous page');
    const next = h('button', {type: 'button', class: 'secondary', disabled: !pager.next,
      onclick: () => { pager.forward(); reload(); }}, 'Next page');
    return h('div', {class: 'actions', role: 'group', 'aria-label': `Pages of ${what}`},
      previous, h('span', {}, `Page ${pager.index + 1} · ${count} shown`), next);
  }

  /** Every item of a collection, page by page (at most `max`). */
  async function listAll(path, max) {
    const items = [];
    let after = null;
    do {
      const q = new URLSearchParams({limit: '1000'});
      if (after) q.set('after', after);
      const page = await api('GET', `${path}?${q}`);
      items.push(...page.items);
      after = page.next_after;
    } while (after && items.length < max);
    return items;
  }

  /** Runs a form's action: its button busy meanwhile, an error shown in `out`. */
  async function submitting(form, out, action) {
    const buttons = form.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    clear(out);
    try {
      await action();
    } catch (e) {
      if (!(e instanceof SignedOut)) out.append(messageBox('error', describe(e)));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // ---------------------------------------------------------------------------
  // Cluster

  async function clusterPage(body, params, live) {
    const summary = h('section', {class: 'panel', 'aria-labelledby': 'this-node-title'});
    const members = h('section', {'aria-labelledby': 'members-title'});
    const refreshed = h('p', {class: 'fine', 'aria-live': 'polite'});
    body.append(
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'secondary', onclick: () => load(true)}, 'Refresh'), refreshed),
      summary, members);

    async function load(announced) {
      const status = await api('GET', '/v1/admin/cluster');
      let ready = null;
      try {
        const r = await fetch('/readyz', {cache: 'no-store', credentials: 'omit'});
        ready = await r.json();
        ready.ok = r.ok;
      } catch (e) {
        ready = null;
      }
      if (!live()) return;
      nodeName.textContent = `· node ${status.node_id}`;
      renderSummary(status, ready);
      renderMembers(status);
      refreshed.textContent = `Updated ${new Date().toLocaleTimeString('en-GB')}; every ${CLUSTER_EVERY_MS / 1000} s.`;
      if (announced) announce('Cluster status refreshed');
    }

    function renderSummary(st, ready) {
      clear(summary);
      const lag = typeof st.commit_index === 'number' && typeof st.applied_index === 'number'
        ? st.commit_index - st.applied_index : null;
      const readyText = !ready ? badge('warn', 'unknown')
        : ready.ok ? badge('ok', 'ready') : badge('bad', `not ready: ${ready.reason || 'unknown'}`);
      summary.append(
        h('h2', {id: 'this-node-title'}, `This node: node ${st.node_id}`),
        facts([
          ['Role', st.state],
          ['Readiness', readyText],
          ['Leader', st.leader_id === null ? badge('bad', 'none known') : `node ${st.leader_id}`],
          ['Term', number(st.term)],
          ['Last log index', number(st.last_log_index)],
          ['Committed', number(st.commit_index)],
          ['Applied', number(st.applied_index)],
          ['Apply lag', lag === null ? '—' : `${number(lag)} ${lag === 1 ? 'entry' : 'entries'}`],
          ['Snapshot at', number(st.snapshot_index)],
          ['Purged to', number(st.purged_index)],
          ...(typeof st.millis_since_quorum_ack === 'number'
            ? [['Quorum last answered', `${number(st.millis_since_quorum_ack)} ms ago`]] : []),
        ]));
    }

    function health(st, m) {
      const leads = st.leader_id === st.node_id;
      if (!leads) {
        if (m.id === st.node_id) return badge(st.leader_id === null ? 'bad' : 'ok', st.leader_id === null ? 'no leader' : 'follows the leader');
        return h('span', {class: 'hint'}, 'known to the leader');
      }
      if (m.matched_index === null || m.matched_index === undefined) return badge('bad', 'not answering');
      const behind = (st.last_log_index || 0) - m.matched_index;
      if (behind <= 0) return badge('ok', 'in sync');
      return badge(behind > 100 ? 'bad' : 'warn', `${number(behind)} behind`);
    }

    function renderMembers(st) {
      clear(members);
      const leads = st.leader_id === st.node_id;
      const leader = st.members.find((m) => m.id === st.leader_id);
      const note = leads
        ? 'This node leads: it reports how far each member has replicated'
        : 'Only the leader knows how far each member has replicated';
      members.append(
        h('h2', {id: 'members-title'}, `Members (${st.members.length})`),
        h('p', {class: 'fine'}, note,
          !leads && leader ? [': open ', h('a', {href: `${location.protocol}//${leader.http_addr}/console`},
            `the console of node ${leader.id}`), '.'] : '.'),
        table('Cluster members', ['Node', 'Role', 'HTTP address', {label: 'Log matched', num: true}, 'Health'],
          st.members.map((m) => h('tr', {'data-node': m.id},
            h('th', {scope: 'row'}, `node ${m.id}`, m.id === st.node_id ? ' (this node)' : ''),
            h('td', {}, m.id === st.leader_id ? 'leader' : m.voter ? 'voter' : 'learner'),
            h('td', {class: 'id'}, m.http_addr),
            h('td', {class: 'num'}, number(m.matched_index)),
            h('td', {}, health(st, m)))),
          {id: 'members'}));
    }

    await load(false);
    every(CLUSTER_EVERY_MS, () => load(false).catch(() => {}));
  }

  // ---------------------------------------------------------------------------
  // APIs

  const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', '*'];

  async function apisPage(body, params, live) {
    const pager = new Pager(25);
    const list = h('section', {'aria-labelledby': 'apis-list-title'});
    const formOut = h('div', {'aria-live': 'polite'});
    const idInput = h('input', {type: 'text', name: 'id', autocomplete: 'off', spellcheck: 'false'});
    const nameInput = h('input', {type: 'text', name: 'name', required: true, autocomplete: 'off'});
    const stageInput = h('input', {type: 'text', name: 'stage', value: 'prod', autocomplete: 'off', spellcheck: 'false'});
    const methodSelect = h('select', {name: 'method'}, METHODS.map((m) => h('option', {value: m}, m)));
    const pathInput = h('input', {type: 'text', name: 'path', value: '/*', autocomplete: 'off', spellcheck: 'false'});
    const keyRequired = h('input', {type: 'checkbox', name: 'api_key_required', checked: true});
    const form = h('form', {class: 'grid', id: 'api-form', 'aria-labelledby': 'api-form-title'},
      field('ID', idInput, 'Optional: letters, digits, _ and -'),
      field('Name', nameInput),
      field('Stage', stageInput),
      field('Route method', methodSelect),
      field('Route path', pathInput, 'Empty for no route'),
      field('Route requires an API key', keyRequired),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Create API')));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submitting(form, formOut, async () => {
        const api_ = {name: nameInput.value.trim(), stages: [], routes: []};
        if (idInput.value.trim()) api_.id = idInput.value.trim();
        if (stageInput.value.trim()) api_.stages.push({name: stageInput.value.trim()});
        if (pathInput.value.trim()) {
          api_.routes.push({method: methodSelect.value, path: pathInput.value.trim(), api_key_required: keyRequired.checked});
        }
        const created = await api('POST', '/v1/admin/apis', api_);
        form.reset();
        formOut.append(messageBox('info', `API ${created.id} created.`));
        announce(`API ${created.id} created`);
        pager.reset();
        await load();
      });
    });
    body.append(list, h('section', {class: 'panel', 'aria-labelledby': 'api-form-title'},
      h('h2', {id: 'api-form-title'}, 'Create an API'), form, formOut));

    async function load() {
      const page = await api('GET', `/v1/admin/apis?${pager.query()}`);
      if (!live()) return;
      pager.next = page.next_after;
      clear(list);
      list.append(h('h2', {id: 'apis-list-title'}, 'APIs'));
      if (!page.items.length && pager.index === 0) {
        list.append(h('p', {}, 'No APIs yet: create one below.'));
        return;
      }
      list.append(
        table('APIs, in id order', ['ID', 'Name', 'Stages', 'Routes', 'Actions'], page.items.map((a) => h('tr', {'data-id': a.id},
          h('th', {scope: 'row', class: 'id'}, a.id),
          h('td', {}, a.name),
          h('td', {}, a.stages.map((st) => st.name).join(', ') || '—'),
          h('td', {}, a.routes.length ? a.routes.map((r) => `${r.method} ${r.path}${r.api_key_required ? ' (key)' : ''}`).join('; ') : '—'),
          h('td', {}, h('button', {type: 'button', class: 'danger small', 'aria-label': `Delete API ${a.id}`,
            onclick: () => remove(a)}, 'Delete')))), {id: 'apis'}),
        pagerControls(pager, page.items.length, 'APIs', load));
    }

    async function remove(a) {
      const ok = await confirmAction(`Delete API ${a.id}?`,
        `Checks for API ${a.id} (${a.name}) will be answered unknown_api. Plans that name it must be changed first. This cannot be undone.`,
        'Delete API');
      if (!ok) return;
      try {
        await api('DELETE', `/v1/admin/apis/${enc(a.id)}`);
        announce(`API ${a.id} deleted`);
        await load();
      } catch (e) {
        if (!(e instanceof SignedOut)) announce(describe(e));
      }
    }

    await load();
  }

  // ---------------------------------------------------------------------------
  // Plans

  function throttleText(t) {
    return t ? `${number(t.rate_per_sec)}/s, burst ${number(t.burst)}` : 'none';
  }

  function quotaText(q) {
    return q ? `${number(q.limit)} a ${q.period}` : 'none';
  }

  async function plansPage(body, params, live) {
    const pager = new Pager(25);
    const list = h('section', {'aria-labelledby': 'plans-list-title'});
    const formOut = h('div', {'aria-live': 'polite'});
    const apis = await listAll('/v1/admin/apis', 1000);
    if (!live()) return;
    const idInput = h('input', {type: 'text', name: 'id', autocomplete: 'off', spellcheck: 'false'});
    const nameInput = h('input', {type: 'text', name: 'name', required: true, autocomplete: 'off'});
    const rateInput = h('input', {type: 'number', name: 'rate', min: '0', step: 'any', inputmode: 'decimal'});
    const burstInput = h('input', {type: 'number', name: 'burst', min: '1', step: '1', inputmode: 'numeric'});
    const quotaInput = h('input', {type: 'number', name: 'quota', min: '1', step: '1', inputmode: 'numeric'});
    const periodSelect = h('select', {name: 'period'}, ['day', 'week', 'month'].map((p) => h('option', {value: p}, p)));
    const stages = apis.flatMap((a) => a.stages.map((st) => ({api_id: a.id, stage: st.name})));
    const stageBoxes = stages.map((st) => h('input', {type: 'checkbox', name: 'stage', value: `${st.api_id}/${st.stage}`}));
    const form = h('form', {class: 'grid', id: 'plan-form'},
      field('ID', idInput, 'Optional: letters, digits, _ and -'),
      field('Name', nameInput),
      field('Rate per second', rateInput, 'Empty: no throttle'),
      field('Burst', burstInput),
      field('Quota', quotaInput, 'Requests per period; empty: no quota'),
      field('Quota period', periodSelect),
      h('fieldset', {},
        h('legend', {}, 'API stages'),
        stages.length ? stageBoxes.map((box, i) => {
          box.id = uniqueId('stage');
          return h('label', {for: box.id}, box, `${stages[i].api_id}/${stages[i].stage}`);
        }) : h('p', {class: 'hint'}, 'No API stages yet: create an API first.')),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Create plan')));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submitting(form, formOut, async () => {
        const plan = {name: nameInput.value.trim(),
          api_stages: stageBoxes.filter((b) => b.checked).map((b) => {
            const [api_id, ...rest] = b.value.split('/');
            return {api_id, stage: rest.join('/')};
          })};
        if (idInput.value.trim()) plan.id = idInput.value.trim();
        if (rateInput.value !== '' || burstInput.value !== '') {
          plan.throttle = {rate_per_sec: Number(rateInput.value), burst: Number(burstInput.value)};
        }
        if (quotaInput.value !== '') plan.quota = {limit: Number(quotaInput.value), period: periodSelect.value};
        const created = await api('POST', '/v1/admin/plans', plan);
        form.reset();
        formOut.append(messageBox('info', `Plan ${created.id} created.`));
        announce(`Plan ${created.id} created`);
        pager.reset();
        await load();
      });
    });
    body.append(list, h('section', {class: 'panel', 'aria-labelledby': 'plan-form-title'},
      h('h2', {id: 'plan-form-title'}, 'Create a usage plan'), form, formOut));

    async function load() {
      const page = await api('GET', `/v1/admin/plans?${pager.query()}`);
      if (!live()) return;
      pager.next = page.next_after;
      clear(list);
      list.append(h('h2', {id: 'plans-list-title'}, 'Usage plans'));
      if (!page.items.length && pager.index === 0) {
        list.append(h('p', {}, 'No usage plans yet: create one below.'));
        return;
      }
      list.append(
        table('Usage plans, in id order', ['ID', 'Name', 'Throttle', 'Quota', 'API stages', 'Actions'], page.items.map((p) => h('tr', {'data-id': p.id},
          h('th', {scope: 'row', class: 'id'}, p.id),
          h('td', {}, p.name),
          h('td', {}, throttleText(p.throttle)),
          h('td', {}, quotaText(p.quota)),
          h('td', {}, p.api_stages.map((st) => `${st.api_id}/${st.stage}`).join(', ') || '—'),
          h('td', {}, h('div', {class: 'actions'},
            p.quota ? h('a', {href: `#/usage?plan=${enc(p.id)}`}, 'Usage') : null,
            h('button', {type: 'button', class: 'danger small', 'aria-label': `Delete plan ${p.id}`,
              onclick: () => remove(p)}, 'Delete'))))), {id: 'plans'}),
        pagerControls(pager, page.items.length, 'plans', load));
    }

    async function remove(p) {
      const ok = await confirmAction(`Delete plan ${p.id}?`,
        `Keys in plan ${p.id} (${p.name}) must leave it first. This cannot be undone.`, 'Delete plan');
      if (!ok) return;
      try {
        await api('DELETE', `/v1/admin/plans/${enc(p.id)}`);
        announce(`Plan ${p.id} deleted`);
        await load();
      } catch (e) {
        if (!(e instanceof SignedOut)) announce(describe(e));
      }
    }

    await load();
  }

  // ---------------------------------------------------------------------------
  // Keys

  /** The paging and search of the keys page, kept while the tab lives. */
  const keysState = {pager: new Pager(25), search: ''};

  /** The key as `PUT` takes it, from the key as the API shows it. */
  function keySpec(k, changes) {
    return Object.assign({name: k.name, description: k.description, customer_id: k.customer_id, tags: k.tags,
      enabled: k.enabled, expires_at: k.expires_at, plan_ids: k.plan_ids}, changes);
  }

  /**
   * The one showing of a new secret: a panel with the secret, a copy
   * button and a dismiss button. Dismissing removes the panel, and with it
   * the only place the secret was kept.
   */
  function secretPanel(host, title, secret) {
    const titleId = uniqueId('secret-title');
    const output = h('output', {id: 'secret-value', 'aria-label': 'Secret'}, secret);
    const panel = h('section', {class: 'secret', id: 'secret-panel', 'aria-labelledby': titleId},
      h('h2', {id: titleId}, title),
      h('p', {}, 'Copy it now and keep it somewhere safe: it is shown this once. Only its SHA-256 is stored, ' +
        'so it cannot be shown again; reroll the key if it is lost.'),
      output,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'secondary', onclick: async () => {
          try {
            await navigator.clipboard.writeText(output.textContent);
            announce('Secret copied to the clipboard');
          } catch (e) {
            announce('The browser did not allow copying: select the secret and copy it by hand');
          }
        }}, 'Copy'),
        h('button', {type: 'button', id: 'secret-dismiss', onclick: () => {
          output.textContent = '';
          panel.remove();
          announce('Secret dismissed; it cannot be shown again');
          $('page-title').focus();
        }}, 'I have stored it: dismiss')));
    clear(host);
    host.append(panel);
    announce(`${title}: shown once, below`);
    panel.querySelector('button').focus();
  }

  async function keysPage(body, params, live) {
    const {pager} = keysState;
    const secretHost = h('div');
    const list = h('section', {'aria-labelledby': 'keys-list-title'});
    const listOut = h('div', {'aria-live': 'polite'});
    const formOut = h('div', {'aria-live': 'polite'});
    const plans = await listAll('/v1/admin/plans', 1000);
    if (!live()) return;

    const searchInput = h('input', {type: 'search', name: 'search', value: keysState.search, autocomplete: 'off', spellcheck: 'false'});
    const sizeSelect = h('select', {name: 'limit'}, [5, 25, 100, 1000].map((n) => h('option', {value: String(n), selected: n === pager.limit}, String(n))));
    const searchForm = h('form', {class: 'toolbar', role: 'search', id: 'key-search'},
      field('Search keys', searchInput, 'Id, name, customer or secret prefix'),
      field('Per page', sizeSelect),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Search')));
    searchForm.addEventListener('submit', (event) => {
      event.preventDefault();
      keysState.search = searchInput.value.trim();
      pager.limit = Number(sizeSelect.value);
      pager.reset();
      load().catch(showListError);
    });

    const nameInput = h('input', {type: 'text', name: 'name', required: true, autocomplete: 'off'});
    const customerInput = h('input', {type: 'text', name: 'customer_id', autocomplete: 'off'});
    const planBoxes = plans.map((p) => h('input', {type: 'checkbox', name: 'plan', value: p.id}));
    const form = h('form', {class: 'grid', id: 'key-form'},
      field('Name', nameInput),
      field('Customer ID', customerInput, 'Optional'),
      h('fieldset', {},
        h('legend', {}, 'Usage plans'),
        plans.length ? planBoxes.map((box, i) => {
          box.id = uniqueId('plan');
          return h('label', {for: box.id}, box, `${plans[i].name} (${plans[i].id})`);
        }) : h('p', {class: 'hint'}, 'No plans yet: a key outside any plan is refused on routes of a plan.')),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Create key')));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submitting(form, formOut, async () => {
        const spec = {name: nameInput.value.trim(), plan_ids: planBoxes.filter((b) => b.checked).map((b) => b.value)};
        if (customerInput.value.trim()) spec.customer_id = customerInput.value.trim();
        const created = await api('POST', '/v1/admin/keys', spec);
        form.reset();
        secretPanel(secretHost, `Secret of the new key ${created.name} (${created.id})`, created.secret);
        pager.reset();
        await load();
      });
    });

    body.append(secretHost, h('section', {class: 'panel', 'aria-labelledby': 'keys-search-title'},
      h('h2', {id: 'keys-search-title', class: 'visually-hidden'}, 'Find keys'), searchForm), list, listOut,
    h('section', {class: 'panel', 'aria-labelledby': 'key-form-title'},
      h('h2', {id: 'key-form-title'}, 'Create an API key'), form, formOut));

    function showListError(e) {
      if (e instanceof SignedOut) return;
      clear(listOut);
      listOut.append(messageBox('error', describe(e)));
    }

    async function load() {
      const q = pager.query();
      if (keysState.search) q.set('search', keysState.search);
      const page = await api('GET', `/v1/admin/keys?${q}`);
      if (!live()) return;
      pager.next = page.next_after;
      clear(list);
      clear(listOut);
      list.append(h('h2', {id: 'keys-list-title'}, 'API keys'));
      const found = keysState.search
        ? `${plural(page.items.length, 'key')} ${page.items.length === 1 ? 'matches' : 'match'} “${keysState.search}” on this page.`
        : `${plural(page.items.length, 'key')} on this page.`;
      list.append(h('p', {id: 'keys-count', 'aria-live': 'polite'}, found));
      if (!page.items.length) return;
      list.append(
        table('API keys, in id order; secrets are never shown here, only their first characters',
          ['Name', 'ID', 'Secret prefix', 'Customer', 'Plans', 'Status', 'Actions'],
          page.items.map((k) => h('tr', {'data-id': k.id, 'data-name': k.name},
            h('th', {scope: 'row'}, k.name),
            h('td', {class: 'id'}, k.id),
            h('td', {}, h('code', {}, `${k.prefix}…`)),
            h('td', {}, orDash(k.customer_id)),
            h('td', {}, k.plan_ids.join(', ') || '—'),
            h('td', {class: 'key-status'}, k.enabled ? badge('ok', 'enabled') : badge('bad', 'disabled')),
            h('td', {}, h('div', {class: 'actions'},
              h('button', {type: 'button', class: 'secondary small', 'data-action': k.enabled ? 'disable' : 'enable',
                'aria-label': `${k.enabled ? 'Disable' : 'Enable'} key ${k.name}`, onclick: () => toggle(k)},
              k.enabled ? 'Disable' : 'Enable'),
              h('button', {type: 'button', class: 'secondary small', 'data-action': 'reroll',
                'aria-label': `Reroll key ${k.name}`, onclick: () => reroll(k)}, 'Reroll'),
              k.plan_ids.length ? h('a', {href: `#/usage?plan=${enc(k.plan_ids[0])}&key=${enc(k.id)}`}, 'Usage') : null,
              h('button', {type: 'button', class: 'danger small', 'data-action': 'delete',
                'aria-label': `Delete key ${k.name}`, onclick: () => remove(k)}, 'Delete'))))),
          {id: 'keys'}),
        pagerControls(pager, page.items.length, 'keys', () => load().catch(showListError)));
    }

    async function act(what, fn) {
      try {
        await fn();
        announce(what);
        await load();
      } catch (e) {
        showListError(e);
      }
    }

    function toggle(k) {
      // The key as it is now, not as the list showed it: a change made
      // meanwhile (a rename, new plans) is kept, only `enabled` flips.
      return act(`Key ${k.name} ${k.enabled ? 'disabled' : 'enabled'}`, async () => {
        const current = await api('GET', `/v1/admin/keys/${enc(k.id)}`);
        return api('PUT', `/v1/admin/keys/${enc(k.id)}`, keySpec(current, {enabled: !k.enabled}));
      });
    }

    async function reroll(k) {
      const ok = await confirmAction(`Reroll key ${k.name}?`,
        `Key ${k.name} (${k.id}) gets a new secret, shown once; its current secret stops working at once.`,
        'Reroll key');
      if (!ok) return;
      await act(`Key ${k.name} rerolled: copy its new secret`, async () => {
        const rerolled = await api('POST', `/v1/admin/keys/${enc(k.id)}/reroll`, {overlap_secs: 0});
        secretPanel(secretHost, `New secret of key ${rerolled.name} (${rerolled.id})`, rerolled.secret);
      });
    }

    async function remove(k) {
      const ok = await confirmAction(`Delete key ${k.name}?`,
        `Requests with the secret of key ${k.name} (${k.id}) will be refused as unknown_key, and its usage can no longer be read. This cannot be undone.`,
        'Delete key');
      if (!ok) return;
      await act(`Key ${k.name} deleted`, () => api('DELETE', `/v1/admin/keys/${enc(k.id)}`));
    }

    await load();
  }

  // ---------------------------------------------------------------------------
  // Charts: SVG made here, each with a title and description, beside a
  // table of the same numbers.

  /** A round step (1, 2, 2.5 or 5 times a power of ten) for four steps up to at least `value`. */
  function niceStep(value) {
    if (!(value > 0)) return 0.25;
    const quarter = value / 4;
    const magnitude = 10 ** Math.floor(Math.log10(quarter));
    for (const step of [1, 2, 2.5, 5, 10]) {
      // 2.5 only where it makes whole ticks (25, 250, ...).
      if (step === 2.5 && magnitude < 10) continue;
      if (step * magnitude >= quarter) return step * magnitude;
    }
    return 10 * magnitude;
  }

  /** A tick value with as many decimals as its step needs. */
  function tick(value, step) {
    // As many decimals as the step has (0.25 needs two): every tick is exact.
    const decimals = step >= 1 ? 0 : Math.min(6, (String(step).split('.')[1] || '').length);
    return decimals ? value.toFixed(decimals) : number(Math.round(value));
  }

  const CHART = {width: 640, height: 240, left: 52, right: 12, top: 12, bottom: 40};

  function axes(step) {
    const {width, height, left, right, top, bottom} = CHART;
    const parts = [];
    for (let i = 0; i <= 4; i += 1) {
      const y = height - bottom - ((height - top - bottom) * i) / 4;
      parts.push(s('line', {class: i === 0 ? 'axis' : 'grid', x1: left, x2: width - right, y1: y, y2: y}));
      parts.push(s('text', {x: left - 6, y: y + 4, 'text-anchor': 'end'}, tick(step * i, step)));
    }
    parts.push(s('line', {class: 'axis', x1: left, x2: left, y1: top, y2: height - bottom}));
    return parts;
  }

  /** A bar per label; returns the <svg>. */
  function barChart(title, description, labels, values) {
    const {width, height, left, right, top, bottom} = CHART;
    const id = uniqueId('chart');
    const step = Math.max(1, niceStep(Math.max(0, ...values)));
    const maxY = 4 * step;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const slot = plotW / Math.max(1, values.length);
    const labelEvery = Math.ceil(values.length / 10);
    const bars = values.map((v, i) => {
      const barH = (plotH * v) / maxY;
      const x = left + i * slot + slot * 0.15;
      return s('rect', {class: i === values.length - 1 ? 'bar bar-today' : 'bar', x, y: height - bottom - barH,
        width: Math.max(1, slot * 0.7), height: barH, 'data-label': labels[i], 'data-value': v},
      s('title', {}, `${labels[i]}: ${number(v)}`));
    });
    const xLabels = labels.map((label, i) => (i % labelEvery === 0 || i === labels.length - 1
      ? s('text', {x: left + i * slot + slot / 2, y: height - bottom + 16, 'text-anchor': 'middle'}, label.slice(5))
      : null));
    return s('svg', {viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${id}-title ${id}-desc`, focusable: 'false'},
      s('title', {id: `${id}-title`}, title),
      s('desc', {id: `${id}-desc`}, description),
      axes(step), bars, xLabels);
  }

  /** A line per series over the last `spanMs`; points are {ago (ms), value}. */
  function lineChart(title, description, series, spanMs) {
    const {width, height, left, right, top, bottom} = CHART;
    const id = uniqueId('chart');
    const step = niceStep(Math.max(0, ...series.flatMap((sr) => sr.points.map((p) => p.value))));
    const maxY = 4 * step;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const x = (ago) => left + plotW * (1 - ago / spanMs);
    const y = (v) => height - bottom - (plotH * v) / maxY;
    const lines = series.map((sr) => s('polyline', {class: `line ${sr.colour}`, 'data-reason': sr.name,
      points: sr.points.map((p) => `${x(p.ago).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ')}));
    const minutes = Math.round(spanMs / 60000);
    const xLabels = [];
    for (let m = minutes; m >= 0; m -= 1) {
      xLabels.push(s('text', {x: x(m * 60000), y: height - bottom + 16, 'text-anchor': 'middle'}, m === 0 ? 'now' : `-${m} min`));
    }
    return s('svg', {viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${id}-title ${id}-desc`, focusable: 'false'},
      s('title', {id: `${id}-title`}, title),
      s('desc', {id: `${id}-desc`}, description),
      axes(step), lines, xLabels);
  }

  // ---------------------------------------------------------------------------
  // Usage

  function utcDay(offsetDays) {
    return new Date(Date.now() + offsetDays * 86400000).toISOString().slice(0, 10);
  }

  async function usagePage(body, params, live) {
    const plans = (await listAll('/v1/admin/plans', 1000));
    if (!live()) return;
    const out = h('div', {id: 'usage-result'});
    const summaryLine = h('p', {id: 'usage-summary', 'aria-live': 'polite'});
    const planSelect = h('select', {name: 'plan', required: true},
      h('option', {value: ''}, 'Choose a plan'),
      plans.map((p) => h('option', {value: p.id, disabled: !p.quota, selected: p.id === params.get('plan')},
        p.quota ? `${p.name} (${p.id})` : `${p.name} (${p.id}): no quota`)));
    const keySelect = h('select', {name: 'key'}, h('option', {value: ''}, 'All keys of the plan'));
    const fromInput = h('input', {type: 'date', name: 'start_date', value: params.get('from') || utcDay(-13), required: true});
    const toInput = h('input', {type: 'date', name: 'end_date', value: params.get('to') || utcDay(0), required: true});
    const form = h('form', {class: 'grid', id: 'usage-form'},
      field('Plan', planSelect, 'Plans with a quota'),
      field('Key', keySelect),
      field('From (UTC)', fromInput),
      field('To (UTC)', toInput),
      h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Show usage')));
    body.append(h('section', {class: 'panel', 'aria-labelledby': 'usage-form-title'},
      h('h2', {id: 'usage-form-title', class: 'visually-hidden'}, 'Choose what to show'), form), summaryLine, out);
    if (!plans.some((p) => p.quota)) {
      out.append(h('p', {}, 'No plan has a quota yet: usage is counted against a plan\'s quota.'));
    }

    let wantedKey = params.get('key') || '';

    /** The keys with usage in the plan, as options of the key menu. */
    async function fillKeys(plan) {
      const keys = [];
      let after = null;
      do {
        const q = new URLSearchParams({limit: '1000'});
        if (after) q.set('after', after);
        const report = await api('GET', `/v1/admin/plans/${enc(plan)}/usage?${q}`);
        keys.push(...report.items.map((i) => i.key_id));
        after = report.next_after;
      } while (after && keys.length < 5000);
      if (wantedKey && !keys.includes(wantedKey)) keys.unshift(wantedKey);
      clear(keySelect);
      append(keySelect, [h('option', {value: ''}, 'All keys of the plan'),
        keys.map((k) => h('option', {value: k, selected: k === wantedKey}, k))]);
    }

    async function show(announced) {
      const plan = planSelect.value;
      if (!plan) return;
      const key = keySelect.value;
      const range = new URLSearchParams({start_date: fromInput.value, end_date: toInput.value});
      let items = [];
      if (key) {
        range.set('key_id', key);
        const report = await api('GET', `/v1/admin/plans/${enc(plan)}/usage?${range}`);
        items = report.items;
      } else {
        let after = null;
        do {
          const q = new URLSearchParams(range);
          q.set('limit', '1000');
          if (after) q.set('after', after);
          const report = await api('GET', `/v1/admin/plans/${enc(plan)}/usage?${q}`);
          items.push(...report.items);
          after = report.next_after;
        } while (after && items.length < 20000);
      }
      if (!live()) return;
      render(plan, key, items, announced);
    }

    let lastSummary = '';
    function render(plan, key, items, announced) {
      const labels = [];
      for (let d = new Date(`${fromInput.value}T00:00:00Z`); d <= new Date(`${toInput.value}T00:00:00Z`); d = new Date(d.getTime() + 86400000)) {
        labels.push(d.toISOString().slice(0, 10));
      }
      const perDay = new Map(labels.map((l) => [l, 0]));
      for (const item of items) {
        for (const day of item.days) perDay.set(day.date, (perDay.get(day.date) || 0) + day.used);
      }
      const values = labels.map((l) => perDay.get(l) || 0);
      const total = values.reduce((a, b) => a + b, 0);
      const who = key ? `key ${key}` : `all keys of plan ${plan}`;
      const busiest = values.length ? labels[values.indexOf(Math.max(...values))] : null;
      const description = `Requests admitted per UTC day for ${who}, ${fromInput.value} to ${toInput.value}: `
        + `${number(total)} in all` + (total ? `, most on ${busiest} (${number(Math.max(...values))}).` : '.');
      clear(out);
      const figure = h('figure', {class: 'chart', id: 'usage-chart', 'data-total': total},
        barChart(`Usage of ${who}`, description, labels, values),
        h('figcaption', {}, description));
      const daysTable = h('div', {class: 'table-wrap'}, h('table', {id: 'usage-days'},
        h('caption', {}, `Requests per day, ${who}`),
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Date (UTC)'), h('th', {scope: 'col', class: 'num'}, 'Requests'))),
        h('tbody', {}, labels.map((l, i) => h('tr', {'data-date': l}, h('th', {scope: 'row'}, l), h('td', {class: 'num'}, number(values[i]))))),
        h('tfoot', {}, h('tr', {}, h('th', {scope: 'row'}, 'Total'), h('td', {class: 'num', id: 'usage-total'}, number(total))))));
      const details = h('details', {}, h('summary', {}, 'The numbers as a table'), daysTable);
      out.append(h('h2', {}, `Usage of ${who}`), figure, details);

      out.append(h('h2', {}, 'Current period'));
      if (!items.length) {
        out.append(h('p', {}, 'No usage recorded in this plan yet.'));
      } else if (key) {
        const p = items[0].current_period;
        out.append(h('section', {class: 'panel', id: 'usage-period'}, facts([
          ['Period (UTC)', `${p.start.slice(0, 10)} up to ${p.end.slice(0, 10)}`],
          ['Limit', number(p.limit)],
          ['Used', number(p.used)],
          ['Held by nodes', number(p.held)],
          ['Remaining', h('span', {id: 'usage-remaining'}, number(p.remaining))],
        ])));
      } else {
        out.append(table('This period, per key', ['Key', {label: 'Used', num: true}, {label: 'Held by nodes', num: true},
          {label: 'Remaining', num: true}, {label: 'Limit', num: true}],
        items.map((i) => h('tr', {'data-key': i.key_id},
          h('th', {scope: 'row', class: 'id'}, h('a', {href: `#/usage?plan=${enc(plan)}&key=${enc(i.key_id)}`}, i.key_id)),
          h('td', {class: 'num'}, number(i.current_period.used)),
          h('td', {class: 'num'}, number(i.current_period.held)),
          h('td', {class: 'num'}, number(i.current_period.remaining)),
          h('td', {class: 'num'}, number(i.current_period.limit)))), {id: 'usage-keys'}));
      }
      const summary = `${number(total)} requests for ${who} from ${fromInput.value} to ${toInput.value}.`;
      if (summary !== lastSummary || announced) summaryLine.textContent = summary;
      lastSummary = summary;
    }

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      wantedKey = keySelect.value;
      const q = new URLSearchParams({plan: planSelect.value});
      if (keySelect.value) q.set('key', keySelect.value);
      // Keep the choice in the address (ids only), then draw.
      history.replaceState(null, '', `#/usage?${q}`);
      show(true).catch((e) => {
        if (!(e instanceof SignedOut)) { clear(out); out.append(messageBox('error', describe(e))); }
      });
    });
    planSelect.addEventListener('change', () => {
      wantedKey = '';
      if (planSelect.value) fillKeys(planSelect.value).catch(() => {});
    });

    if (planSelect.value) {
      await fillKeys(planSelect.value);
      await show(false);
    }
    every(USAGE_EVERY_MS, () => {
      if (planSelect.value && out.firstChild) show(false).catch(() => {});
    });
  }

  // ---------------------------------------------------------------------------
  // Live decisions: this node's counters, sampled, charted as rates.

  const ALLOWED = new Set(['allowed', 'cors_preflight']);

  async function decisionsPage(body, params, live) {
    const samples = [];
    const summaryLine = h('p', {id: 'decisions-summary'});
    const chartHost = h('div');
    const tableHost = h('div');
    body.append(
      h('p', {}, `The checks this node decided, by reason, sampled every ${DECISIONS_EVERY_MS / 1000} s `
        + `from its own counters (GET /v1/admin/decisions); the last ${DECISIONS_WINDOW_MS / 60000} minutes are kept `
        + 'while this page is open. Each node counts only the checks sent to it.'),
      summaryLine, chartHost, tableHost);

    async function sample() {
      const counts = await api('GET', '/v1/admin/decisions');
      if (!live()) return;
      const last = samples[samples.length - 1];
      // Less uptime than before: the node restarted and its counts began again.
      if (last && counts.uptime_ms < last.uptime_ms) samples.length = 0;
      samples.push({at: Date.now(), uptime_ms: counts.uptime_ms, reasons: counts.reasons, total: counts.total, node: counts.node_id});
      while (samples.length > 2 && samples[1].at < Date.now() - DECISIONS_WINDOW_MS) samples.shift();
      render();
    }

    function render() {
      const first = samples[0];
      const last = samples[samples.length - 1];
      nodeName.textContent = `· node ${last.node}`;
      const reasons = new Set([...Object.keys(first.reasons), ...Object.keys(last.reasons)]);
      const inWindow = new Map();
      for (const reason of reasons) {
        inWindow.set(reason, (last.reasons[reason] || 0) - (first.reasons[reason] || 0));
      }
      const ordered = [...reasons].sort((a, b) => (inWindow.get(b) - inWindow.get(a)) || a.localeCompare(b));
      const spanS = Math.max(0, (last.uptime_ms - first.uptime_ms) / 1000);
      const total = ordered.reduce((n, r) => n + inWindow.get(r), 0);
      const denied = ordered.filter((r) => !ALLOWED.has(r)).reduce((n, r) => n + inWindow.get(r), 0);
      summaryLine.textContent = samples.length < 2
        ? `Node ${last.node}: collecting; ${number(last.total)} decisions since it started.`
        : `Node ${last.node}: ${number(total)} decisions in the last ${Math.round(spanS)} s, ${number(denied)} of them denied `
          + `(${number(last.total)} since it started).`;

      // Rates between consecutive samples, per reason (the eight busiest).
      const now = Date.now();
      const shown = ordered.filter((r) => inWindow.get(r) > 0).slice(0, 8);
      const series = shown.map((reason, i) => ({name: reason, colour: `c${i}`, points: samples.slice(1).map((sm, j) => {
        const before = samples[j];
        const seconds = Math.max(0.001, (sm.uptime_ms - before.uptime_ms) / 1000);
        return {ago: Math.min(DECISIONS_WINDOW_MS, now - sm.at), value: ((sm.reasons[reason] || 0) - (before.reasons[reason] || 0)) / seconds};
      })}));
      const rateNow = (reason) => {
        if (samples.length < 2) return null;
        const before = samples[samples.length - 2];
        const seconds = Math.max(0.001, (last.uptime_ms - before.uptime_ms) / 1000);
        return ((last.reasons[reason] || 0) - (before.reasons[reason] || 0)) / seconds;
      };
      const description = shown.length
        ? `Decisions per second by reason over the last ${Math.round(spanS)} s: ` + shown.map((r) => `${r} ${number(inWindow.get(r))}`).join(', ') + '.'
        : 'No decisions in the window yet.';
      clear(chartHost);
      chartHost.append(h('figure', {class: 'chart', id: 'decisions-chart'},
        lineChart('Decisions per second, by reason', description, series, DECISIONS_WINDOW_MS),
        h('ul', {class: 'legend', 'aria-label': 'Legend'}, series.map((sr) => h('li', {}, h('span', {class: `swatch ${sr.colour}`, 'aria-hidden': 'true'}), sr.name))),
        h('figcaption', {}, description)));
      clear(tableHost);
      tableHost.append(table('Decisions by reason', ['Reason', {label: 'In the window', num: true},
        {label: 'Per second now', num: true}, {label: 'Since the node started', num: true}],
      ordered.map((reason) => {
        const rate = rateNow(reason);
        return h('tr', {'data-reason': reason},
          h('th', {scope: 'row'}, reason),
          h('td', {class: 'num window'}, number(inWindow.get(reason))),
          h('td', {class: 'num'}, rate === null ? '—' : rate.toFixed(2)),
          h('td', {class: 'num'}, number(last.reasons[reason] || 0)));
      }), {id: 'decisions'}));
    }

    await sample();
    every(DECISIONS_EVERY_MS, () => sample().catch(() => {}));
  }

  // ---------------------------------------------------------------------------

  route();
})();
