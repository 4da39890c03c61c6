// outpost: the clinician's app, served by the clinician's own node (`outpost run --api`).
// It talks to that node only, so it works with every network link gone. No build step, no
// framework: the DOM is built with textContent (never innerHTML), so no session's text can
// become markup.
'use strict';

const S = {
  token: sessionStorage.getItem('outpost.token'),
  me: JSON.parse(sessionStorage.getItem('outpost.me') || 'null'),
  node: null, // { name, role }
  cards: new Map(), // session id -> card
  calls: new Map(), // session id -> latest call (CallNow)
  peers: new Map(), // peer name -> up
  view: null, // the session on screen
  events: null,
  eventsLost: false, // the event stream was refused: retrying
  eventsRetry: 0,
  ringTimer: null,
  audio: null,
  keySeq: 0,
  // The calls (by call id, not session: a later call of the same session, asked for or
  // answered by someone else, is not this person's) this person asked for or answered in this
  // tab, kept in the tab's storage with whose they are: a page reloaded mid-call (by the
  // person, or by a tablet's browser short of memory) still knows the call is theirs and can
  // take its voice up again.
  myCalls: new Set(JSON.parse(sessionStorage.getItem('outpost.calls') || '{"calls":[]}').calls || []),
  // The sessions of those calls: a page (re)loaded asks for their calls' state, which no event
  // repeats until a call moves.
  myCallSessions: new Set(JSON.parse(sessionStorage.getItem('outpost.calls') || '{}').sessions || []),
  callsOf: JSON.parse(sessionStorage.getItem('outpost.calls') || '{}').who,
  thumbs: new Map(), // photo hash -> object URL (fetched once)
  letters: new Map(), // session id -> the letter last shown (a snapshot: it says when it was made)
  lastInput: 0, // when the person last touched or typed on this page
  autoOpened: null, // a session the page opened by itself (a ringing call), not yet looked at
};

// Reading is a person's act: the page counts it only after they touched or typed recently.
for (const ev of ['pointerdown', 'keydown']) {
  window.addEventListener(ev, () => { S.lastInput = Date.now(); S.autoOpened = null; }, true);
}

// ------------------------------------------------------------------ words for people

const LINES = {
  dermatology: 'Dermatology', cardiology: 'Cardiology', gastroenterology: 'Gastroenterology',
  emergency_medicine: 'Emergency medicine', paediatrics: 'Paediatrics', haematology: 'Haematology',
  gynaecology: 'Gynaecology',
};
const PRIORITIES = { urgent: 'Urgent', two_week_wait: 'Two-week wait', routine: 'Routine' };
const SETTINGS = {
  ambulance_on_scene: 'Ambulance, on scene', gp_urgent: 'GP, urgent', gp_elective: 'GP, routine',
  111: 'NHS 111', care_home: 'Care home',
};
const STATUSES = {
  draft: 'Draft', queued: 'Waiting', routing: 'Finding a consultant', connected: 'On a call',
  awaiting_reply: 'Awaiting reply', responded: 'Answered', outcome_recorded: 'Outcome recorded',
  closed: 'Closed', cancelled: 'Cancelled',
};
const OUTCOMES = {
  advice_only: 'Advice only', referral_avoided: 'Referral avoided', referral_made: 'Referral made',
  conveyance_avoided: 'Conveyance avoided', conveyed_ed: 'Conveyed to ED', conveyed_sdec: 'Conveyed to SDEC',
  admission_avoided: 'Admission avoided', ambulatory: 'Ambulatory care', admitted: 'Admitted',
  not_reported: 'Not reported',
};
const VIEWS = { close_up: 'Close-up', site: 'Site (wider view)', dermoscopic: 'Dermoscopic' };
const CONSENTS = { verbal: 'Verbal consent', implied: 'Implied consent', written: 'Written consent' };
const TRACE = {
  '01': 'Verified (traced on the Spine)', '02': 'Present, not traced', '03': 'Trace required',
};

const isDesk = () => S.node && S.node.role === 'desk';
const mySide = () => (isDesk() ? 'responder' : 'requester');

// How far an item has gone, in the words of the person looking at it. `side` is the side that
// wrote it; the ladder is device, hub, desk, requester, read.
function ladder(level, side) {
  if (!level) return null;
  const mine = side === mySide();
  if (side === 'requester') {
    return {
      device: mine ? 'On this device only' : 'Sent',
      hub: 'At hub',
      desk: isDesk() ? 'Received' : 'At consultant',
      requester: isDesk() ? 'Received' : 'At consultant',
      read: 'Read by consultant',
    }[level];
  }
  return {
    device: mine ? 'On this desk only' : 'Sent',
    hub: 'At hub',
    desk: isDesk() ? 'At hub' : 'Reply received',
    requester: isDesk() ? 'At requester' : 'Reply received',
    read: isDesk() ? 'Read by requester' : 'Reply read',
  }[level];
}

function chip(level, side) {
  const text = ladder(level, side);
  return text ? h('span', { class: `chip ${level}` }, text) : h('span', { class: 'chip' }, 'No message yet');
}

const when = (ms) => new Date(ms).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'short' });
const nhsFormat = (n) => (n && n.length === 10 ? `${n.slice(0, 3)} ${n.slice(3, 6)} ${n.slice(6)}` : n || '');

// The NHS number's modulus 11 check digit (NHS Data Dictionary).
function nhsCheck(raw) {
  const n = raw.replace(/[\s-]+/g, '');
  if (n === '') return { ok: null, text: '' };
  if (!/^\d{10}$/.test(n)) return { ok: false, text: `${n.length} of 10 digits` };
  let sum = 0;
  for (let i = 0; i < 9; i++) sum += Number(n[i]) * (10 - i);
  let check = 11 - (sum % 11);
  if (check === 11) check = 0;
  if (check === 10 || check !== Number(n[9])) return { ok: false, text: 'Not a valid NHS number: check the digits' };
  return { ok: true, text: 'Valid NHS number' };
}

// ------------------------------------------------------------------ DOM and API helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let fieldSeq = 0;
function field(label, control, hint) {
  const id = control.id || `f${++fieldSeq}`;
  control.id = id;
  return h('div', {}, h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, hint) : null), control);
}

function select(name, options, value) {
  return h('select', { name }, Object.entries(options).map(([v, t]) => h('option', { value: v, selected: v === value }, t)));
}

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ''; }, 5000);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const token = S.token;
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    // No answer at all (its status stays undefined: the live stream's handler tells by that).
    // A write may have been saved before the answer was lost (the node stopping): say only
    // what is known (a retry under the same client key makes nothing twice).
    throw new ApiError(undefined, method === 'GET'
      ? 'This device’s outpost node did not answer. Try again in a moment.'
      : 'This device’s outpost node did not answer: this may not have been saved. Try again in a moment.');
  }
  if (res.status === 401 && path !== '/api/login') {
    // Only the sign-in this was asked under has ended: the answer to a request of the last
    // person (or of no one), come after a sign-out, neither signs the next person out nor
    // clears the sign-in form they are filling in.
    if (token && token === S.token) signedOut('Your sign-in has ended. Sign in again.');
    throw new ApiError(401, 'signed out');
  }
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

// A non-JSON answer (a letter, an export kept as the node wrote it).
async function apiText(path) {
  const token = S.token;
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (res.status === 401) {
    if (token && token === S.token) signedOut('Your sign-in has ended. Sign in again.');
    throw new ApiError(401, 'signed out');
  }
  const text = await res.text();
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { message = JSON.parse(text).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, message);
  }
  return text;
}

const clientKey = () => `app-${Date.now().toString(36)}-${(++S.keySeq).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

// A photo as session `session` records it: the node gives it only for a record that came with
// its bytes (another session's record of the same hash opens nothing). `{ url }`, or `{ why }`
// in words for the screen when the node gives none: not here yet (404), or the node's own
// reason (consent withdrawn, deleted here once the hub held it, too many records opened).
const NOT_HERE = 'Photo on its way to this device';
async function imageUrl(session, hash, thumbnail) {
  let res;
  try {
    res = await fetch(`/api/photos/${hash}?session=${session}${thumbnail ? '&thumbnail=true' : ''}`, {
      headers: { Authorization: `Bearer ${S.token}` },
    });
  } catch (_) {
    return { why: 'Photo not shown: this device’s outpost node did not answer' };
  }
  if (!res.ok) {
    if (res.status === 404) return { why: NOT_HERE };
    let why = `Photo not shown (${res.status})`;
    try { why = `Photo not shown: ${(await res.json()).error}`; } catch (_) { /* keep the status */ }
    return { why };
  }
  const blob = await res.blob();
  // Only a photo is shown as one (the type comes from another node's record).
  if (blob.type !== 'image/jpeg' && blob.type !== 'image/png') return { why: 'Not shown: the record does not hold it as a photo' };
  return { url: URL.createObjectURL(blob) };
}

function show(...children) {
  const main = document.getElementById('main');
  main.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
}

// ------------------------------------------------------------------ signing in and out

function signedOut(message) {
  // Whose calls these are: the same person signing in again (a sign-in that ended mid-call)
  // takes their call's voice up again; anyone else starts with none (start()).
  if (S.me) S.callsOf = S.me.id;
  S.token = null;
  S.me = null;
  sessionStorage.removeItem('outpost.token');
  sessionStorage.removeItem('outpost.me');
  if (S.events) S.events.close();
  S.events = null;
  stopRinging();
  // Signed out mid-call: the microphone stops now, not when the call ends, and the next
  // person signed in on this page does not take the call's voice over (nor see the photos).
  if (S.voice) stopVoice();
  voiceStatus(''); // a note about the last person's call is not shown to the next
  for (const u of S.thumbs.values()) URL.revokeObjectURL(u);
  S.thumbs.clear();
  S.letters.clear();
  S.owed = undefined;
  clearTimeout(S.owedTimer);
  S.owedTimer = null;
  S.owedAgain = false;
  S.owedTried = false;
  S.unsent = null;
  // The session on screen is forgotten: an answer to a request made before the sign-out (a
  // live redraw, a route under way) finds no session to draw, and does not put the patient's
  // record back over the sign-in form for whoever comes to the device next.
  S.view = null;
  S.autoOpened = null;
  S.armed = null;
  S.ringFor = null;
  S.photoNote = null;
  S.calls.clear();
  S.cards.clear();
  document.getElementById('bar').hidden = true;
  document.getElementById('ring').hidden = true;
  renderLogin(message);
}

function renderLogin(message) {
  const name = h('input', { name: 'name', autocomplete: 'username', required: true, autocapitalize: 'words' });
  // No numeric keypad: a passphrase has letters.
  const secret = h('input', { name: 'secret', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  const form = h('form', { class: 'login panel', id: 'login' },
    h('h1', {}, 'Sign in to outpost'),
    field('Your name', name),
    field('PIN or passphrase', secret),
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    try {
      const r = await api('POST', '/api/login', { name: name.value.trim(), secret: secret.value });
      S.token = r.token;
      S.me = r.user;
      sessionStorage.setItem('outpost.token', r.token);
      sessionStorage.setItem('outpost.me', JSON.stringify(r.user));
      await start();
    } catch (err) {
      error.textContent = err.status === 401 ? 'That name and PIN do not match.' : err.message;
      secret.value = '';
      secret.focus();
    }
  });
  show(form);
  name.focus();
}

async function start() {
  if (S.callsOf !== undefined && S.callsOf !== S.me.id) { S.myCalls.clear(); S.myCallSessions.clear(); }
  S.callsOf = S.me.id;
  keepMyCalls();
  const status = await api('GET', '/api/status');
  S.node = { name: status.node.name, role: status.node.role };
  for (const p of status.connected_peers || []) S.peers.set(p, true);
  document.getElementById('bar').hidden = false;
  document.getElementById('who').textContent = `${S.me.name} · ${S.me.role} · ${S.node.name}`;
  renderNav();
  renderLink();
  await loadCards();
  connectEvents();
  route();
  countOwed();
  // A call of this person's under way as the page loads (reloaded mid-call): its state now.
  recheckMyCalls(S.myCallSessions);
}

// The calls of sessions `ids` asked of the node again (no event repeats a call until it
// moves): one still under way is handed on, unless an event (or the session's own page) said
// newer of it meanwhile, or the person signed out. An ended one is not: onCall would take down
// a ring of another session.
function recheckMyCalls(ids) {
  const token = S.token;
  for (const id of ids) {
    const before = S.calls.get(id);
    api('GET', `/api/sessions/${encodeURIComponent(id)}/calls`).then((calls) => {
      const call = calls && calls[0];
      if (!call || S.token !== token || S.calls.get(id) !== before) return;
      if (!before && !['waiting', 'ringing', 'connected'].includes(call.state)) return;
      S.calls.set(call.session, call);
      onCall(call);
    }).catch(() => { /* shown when it moves */ });
  }
}

function renderNav() {
  // How many callbacks are owed, on the link to them: a consultant must see one arrive while
  // working the queue, and a crew that a callback is still to come.
  const owed = S.owed && S.owed.length ? ` (${S.owed.length})` : '';
  const links = isDesk()
    ? [['#/', 'Queue'], ['#/callbacks', `Callbacks owed${owed}`]]
    : [['#/', 'Sessions'], ['#/new', 'New session'], ['#/callbacks', `Awaiting callback${owed}`]];
  // This person's call connected with no sound on this page (reloaded on another screen): the
  // way to it is first on the menu, wherever they are, until its voice is on.
  const silent = silentCall();
  if (silent) links.unshift([`#/s/${encodeURIComponent(silent)}`, 'Your call: no sound on this page', 'silent']);
  // Said once as it appears (a link added to the menu is not announced by itself).
  if (silent && S.silentSaid !== silent) toast('Your call is still connected, with no sound on this page: “Your call” on the menu leads to it.');
  S.silentSaid = silent;
  const here = location.hash || '#/';
  const nav = document.getElementById('nav');
  const have = [...nav.children];
  if (have.length === links.length && have.every((a, i) => a.getAttribute('href') === links[i][0])) {
    // The same links (a count changed): updated in place, so a link focused keeps its focus.
    have.forEach((a, i) => {
      if (a.textContent !== links[i][1]) a.textContent = links[i][1];
      if (here === links[i][0]) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    });
    return;
  }
  // Links added or taken away: a link focused keeps its focus if it is still there, or it
  // goes to the screen (not to nowhere).
  const focused = nav.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
  nav.replaceChildren(
    ...links.map(([href, text, cls]) => h('a', { href, class: cls, 'aria-current': here === href ? 'page' : null }, text)));
  if (focused !== null) {
    const again = [...nav.children].find((a) => a.getAttribute('href') === focused);
    (again || document.getElementById('main')).focus({ preventScroll: true });
  }
}

function renderLink() {
  const up = [...S.peers.values()].some(Boolean);
  const el = document.getElementById('link');
  const link = up
    ? h('span', { class: 'online' }, 'Connected')
    : h('span', { class: 'offline' }, 'No connection: working on this device');
  el.replaceChildren(S.nodeLost
    ? h('span', { class: 'offline' }, 'Can’t reach this device’s outpost node: nothing can be saved until it answers')
    : S.eventsLost
      ? h('span', { class: 'offline' }, 'Live updates paused: trying again')
      : link);
}

// After events were missed (the stream dropped, the node restarted or was out of reach, a
// burst too large to send): what the page shows is fetched again and redrawn in place, a form
// being filled in kept as it stands (a new session's form is not redrawn at all).
async function catchUp() {
  try {
    const links = S.linkSeq;
    const status = await api('GET', '/api/status');
    // A `link` event heard while this was asked is newer than the status: keep what it said.
    if (S.linkSeq === links) {
      S.peers.clear();
      for (const p of status.connected_peers || []) S.peers.set(p, true);
    }
    await loadCards();
  } catch (_) { return; /* still out of reach: the next hello tries again */ }
  renderLink();
  countOwed();
  // This person's calls under way elsewhere than on screen may have ended (or connected)
  // unheard: the menu's "no sound" link must not outlive its call.
  recheckMyCalls([...S.calls.values()]
    .filter((c) => S.myCalls.has(c.call) && ['waiting', 'ringing', 'connected'].includes(c.state)
      && !(S.view && S.view.id === c.session))
    .map((c) => c.session));
  if (S.view && location.hash === `#/s/${S.view.id}`) {
    // The call may have moved (or ended with the node's restart) without an event for it.
    try {
      const [call] = await api('GET', `/api/sessions/${S.view.id}/calls`);
      if (call && S.view) { S.calls.set(call.session, call); onCall(call); return; /* redraws */ }
    } catch (_) { /* shown when it changes */ }
    await refreshSession(S.view.id);
  } else if (isListScreen()) renderList();
  // A session page that could not be drawn while the node was away, or the callbacks owed.
  else if (location.hash.startsWith('#/s/') || location.hash === '#/callbacks') route();
}

// ------------------------------------------------------------------ live events

function connectEvents() {
  if (S.events) S.events.close();
  const es = new EventSource(`/api/events?token=${encodeURIComponent(S.token)}`);
  S.events = es;
  es.addEventListener('session', (e) => {
    const { card } = JSON.parse(e.data);
    const was = S.cards.get(card.id);
    S.cards.set(card.id, card);
    if (S.view && S.view.id === card.id) refreshSession(card.id);
    else if (isListScreen()) renderList();
    // The callbacks owed are an expensive read on the node's one store thread: asked again
    // when a session comes, moves status or takes an outcome, or is one owed (its settling),
    // not at every receipt. A callback arranged comes with its `call` event.
    if (!was || was.status !== card.status || String(was.outcomes) !== String(card.outcomes)
      || (S.owed && S.owed.some((c) => c.session === card.id))) countOwed();
  });
  es.addEventListener('call', (e) => {
    const { call } = JSON.parse(e.data);
    S.calls.set(call.session, call);
    onCall(call);
    countOwed();
  });
  es.addEventListener('link', (e) => {
    const { peer, up } = JSON.parse(e.data);
    S.linkSeq = (S.linkSeq || 0) + 1;
    S.peers.set(peer, up);
    renderLink();
  });
  es.addEventListener('resync', () => { catchUp().catch(() => {}); });
  es.addEventListener('hello', () => {
    S.eventsRetry = 0;
    if (S.eventsLost || S.nodeLost || S.eventsDropped) {
      // Back after a refusal, a restart or a spell out of reach: what changed meanwhile was
      // missed.
      S.eventsLost = false;
      S.nodeLost = false;
      S.eventsDropped = false;
      renderLink();
      catchUp().catch(() => {});
    }
  });
  es.onerror = async () => {
    S.eventsDropped = true;
    // The stream reconnects by itself; a token that has ended is found here, and a node that
    // does not answer at all is said so (the link chip would otherwise still say "Connected").
    try {
      await api('GET', '/api/me');
    } catch (err) {
      if (err.status === 401) return; /* signedOut already ran */
      // (Not if the stream came back, its hello said, while this asked.)
      if (err.status === undefined && S.events === es && es.readyState !== EventSource.OPEN) {
        S.nodeLost = true;
        renderLink();
      }
      // A stream refused while the node stops (503) or is gone is not tried again by the
      // browser: fall through, so that this page does.
    }
    if (es.readyState === EventSource.CLOSED && S.events === es) {
      // Refused (this person has too many pages open, or the node is busy): the browser does
      // not try again, so this page does, less often each time, and says so meanwhile.
      S.eventsLost = true;
      renderLink();
      const wait = Math.min(60, 5 * 2 ** (S.eventsRetry || 0));
      S.eventsRetry = (S.eventsRetry || 0) + 1;
      setTimeout(() => { if (S.events === es && S.token) connectEvents(); }, wait * 1000);
    }
  };
}

function isListScreen() {
  const hsh = location.hash || '#/';
  return hsh === '#/';
}

async function loadCards() {
  const cards = await api('GET', '/api/sessions?limit=500');
  S.cards = new Map(cards.map((c) => [c.id, c]));
}

// ------------------------------------------------------------------ routes

async function route() {
  if (!S.token) return;
  renderNav();
  const hsh = location.hash || '#/';
  S.view = null;
  try {
    if (hsh === '#/new' && !isDesk()) renderNew();
    else if (hsh === '#/callbacks') await renderCallbacks();
    else if (hsh.startsWith('#/s/')) await renderSession(decodeURIComponent(hsh.slice(4)));
    else renderList();
  } catch (err) {
    if (err.status !== 401) show(h('p', { class: 'error', role: 'alert' }, err.message));
  }
  renderNav(); // the session now on screen may be the one whose call was silent
  // The keyboard's focus goes to the screen drawn (where the person navigated to), unless it
  // is on a ringing call's Answer already (the ring took it, and opened this case itself).
  const ring = document.getElementById('ring');
  if (ring.hidden || !ring.contains(document.activeElement)) document.getElementById('main').focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);

// A ringing call takes the keyboard's focus (its Answer button: Enter answers) only from
// nowhere in particular: the page itself, or a screen just drawn. A box being typed in, a list
// open, a button or link the person reached keeps it: their next Space or Enter must not
// answer a call they did not mean to take.
function ringFocus() {
  const ring = document.getElementById('ring');
  const answer = ring.hidden ? null : ring.querySelector('#answer');
  const a = document.activeElement;
  const idle = !a || a === document.body || a === document.getElementById('main') || ring.contains(a);
  if (answer && idle) answer.focus({ preventScroll: true });
}

// ------------------------------------------------------------------ session list / queue

const RANK = { urgent: 0, two_week_wait: 1, routine: 2 };
const OPEN = new Set(['draft', 'queued', 'routing', 'connected', 'awaiting_reply', 'responded']);

// Open for this side: its status is, or the other side's outcome is in and this side's is not
// (the consultant still owes theirs once the crew has recorded its own, and the other way round).
function stillOpen(c) {
  if (OPEN.has(c.status)) return true;
  return c.status === 'outcome_recorded' && Array.isArray(c.outcomes) && !c.outcomes.includes(mySide());
}

// Whose outcomes a card's session has (docs/app.md: "each card says whose outcomes are in"):
// a case open only because this side's is owed says so, not just "Outcome recorded".
function outcomesIn(c) {
  if (c.status !== 'outcome_recorded' || !Array.isArray(c.outcomes) || !c.outcomes.length) return '';
  const names = c.outcomes.map((s) => (s === 'requester' ? 'requester' : 'consultant')).join(' and ');
  return ` (${names})${c.outcomes.includes(mySide()) ? '' : ' · yours still owed'}`;
}

function renderList() {
  let cards = [...S.cards.values()];
  if (isDesk()) {
    // Urgent first; within a priority, the longest waiting first.
    cards.sort((a, b) => (RANK[a.priority] - RANK[b.priority]) || (a.created_ms - b.created_ms));
  } else {
    cards.sort((a, b) => b.updated_ms - a.updated_ms);
  }
  const open = cards.filter(stillOpen);
  // Finished: the latest first, on every screen.
  const done = cards.filter((c) => !stillOpen(c)).sort((a, b) => b.updated_ms - a.updated_ms);
  const list = (cs) => h('ul', { class: 'cards' }, cs.map((c) => h('li', {}, h('a', {
    href: `#/s/${c.id}`, class: c.priority === 'urgent' ? 'urgent' : null, 'data-session': c.id,
  },
  h('span', { class: 'card-title' }, c.summary),
  chip(c.last_message_receipt, c.last_message_side),
  h('span', { class: 'meta' }, `${LINES[c.service_line]} · ${PRIORITIES[c.priority]} · ${STATUSES[c.status]}${outcomesIn(c)}`,
    c.nhs_number ? ` · NHS ${nhsFormat(c.nhs_number)}` : '', ` · ${when(c.updated_ms)}`),
  h('span', { class: 'meta' }, `${c.messages} message${c.messages === 1 ? '' : 's'}, ${c.photos} photo${c.photos === 1 ? '' : 's'}`,
    !isDesk() && c.on_device_only ? ` · ${c.on_device_only} not yet sent` : '')))));
  show(
    h('h1', {}, isDesk() ? 'Queue: urgent first, the longest waiting first' : 'Advice sessions'),
    open.length ? list(open) : h('p', {}, isDesk() ? 'Nothing waiting for your service lines.' : 'No open sessions. Start one with “New session”.'),
    done.length ? h('h2', {}, 'Finished') : null,
    done.length ? list(done) : null,
  );
}

// ------------------------------------------------------------------ new session (edge)

function renderNew() {
  const form = h('form', { id: 'new-session', class: 'panel' });
  const nhs = h('input', { name: 'nhs_number', inputmode: 'numeric', autocomplete: 'off', 'aria-describedby': 'nhs-check', maxlength: 12 });
  const nhsOut = h('p', { class: 'check', id: 'nhs-check', 'aria-live': 'polite' });
  nhs.addEventListener('input', () => {
    const r = nhsCheck(nhs.value);
    nhsOut.textContent = r.text;
    nhsOut.className = `check ${r.ok === true ? 'ok' : r.ok === false ? 'bad' : ''}`;
    nhs.setAttribute('aria-invalid', r.ok === false ? 'true' : 'false');
  });
  const line = select('service_line', LINES, 'dermatology');
  const setting = select('care_setting', SETTINGS, S.me.role === 'paramedic' ? 'ambulance_on_scene' : 'gp_urgent');
  const priority = select('priority', PRIORITIES, 'urgent');
  const trace = select('nhs_verification', TRACE, '02');
  const summary = h('input', { name: 'summary', required: true, maxlength: 200 });
  const details = h('textarea', { name: 'details', required: true, maxlength: 4000 });
  const callSign = h('input', { name: 'call_sign', autocomplete: 'off' });
  // Who the patient is when there is no verified NHS number (an unconscious patient, a
  // visitor): the consultant must know whom the advice is for.
  const name = h('input', { name: 'patient_name', autocomplete: 'off', maxlength: 100 });
  const born = h('input', { name: 'birth_date', type: 'date', autocomplete: 'off' });
  const incident = h('input', { name: 'incident', autocomplete: 'off', maxlength: 40 });
  // The number a consultant rings when no call can be put through (a callback is arranged
  // then): without it the crew or the GP can only be answered by message.
  // No autofill: on a shared tablet the browser would offer the numbers of whoever used it before.
  const callback = h('input', { name: 'callback', type: 'tel', autocomplete: 'off', required: true, maxlength: 30 });
  const error = h('p', { class: 'error', role: 'alert' });
  const submit = h('button', { type: 'submit' }, 'Create session');
  form.append(
    h('h1', {}, 'New advice session'),
    h('div', { class: 'row' }, field('Service line', line), field('Priority', priority), field('Care setting', setting)),
    h('div', { class: 'row' }, field('NHS number', nhs, 'Checked as you type'), field('NHS number status', trace)),
    nhsOut,
    h('div', { class: 'row' }, field('Patient’s name', name, 'When there is no verified NHS number'), field('Date of birth', born)),
    field('Question in one line', summary, 'What you need from the consultant'),
    field('Details for the consultant', details, 'History, observations, what you have done'),
    h('div', { class: 'row' }, field('Call sign', callSign, 'Ambulance crews'), field('Incident number', incident, 'Ambulance crews'), field('Callback number', callback, 'Where the consultant rings you back')),
    error,
    h('div', { class: 'actions' }, submit));
  const key = clientKey();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const n = nhs.value.replace(/[\s-]+/g, '');
    if (n && !nhsCheck(n).ok) {
      error.textContent = 'The NHS number is not valid. Correct it or leave it empty.';
      nhs.focus();
      return;
    }
    if ((callback.value.match(/[0-9]/g) || []).length < 6 || /[^0-9 +()-]/.test(callback.value.trim())) {
      error.textContent = 'Give a callback number the consultant can ring: at least 6 digits (spaces, +, brackets and dashes allowed).';
      callback.focus();
      return;
    }
    submit.disabled = true;
    try {
      const body = {
        service_line: line.value, care_setting: setting.value, priority: priority.value,
        summary: summary.value.trim(), client_key: key,
      };
      if (n) { body.nhs_number = n; body.nhs_verification = trace.value; }
      if (callSign.value.trim()) body.call_sign = callSign.value.trim();
      if (name.value.trim()) body.patient_name = name.value.trim();
      if (born.value) body.birth_date = born.value;
      if (incident.value.trim()) body.incident = incident.value.trim();
      if (callback.value.trim()) body.callback = callback.value.trim();
      const view = await api('POST', '/api/sessions', body);
      await api('POST', `/api/sessions/${view.id}/messages`, { text: details.value.trim(), client_key: `${key}-m` });
      location.hash = `#/s/${view.id}`;
    } catch (err) {
      if (err.status !== 401) error.textContent = err.message;
      submit.disabled = false;
    }
  });
  show(form);
}

// ------------------------------------------------------------------ one session

async function renderSession(id) {
  const token = S.token;
  // Drawn only for the person who asked, on the screen they asked it for: signed out meanwhile,
  // or moved on to another screen, the answer is dropped.
  const current = () => S.token === token && location.hash.startsWith('#/s/') && decodeURIComponent(location.hash.slice(4)) === id;
  const view = await api('GET', `/api/sessions/${id}`);
  if (!current()) return;
  S.view = view;
  try {
    const [call] = await api('GET', `/api/sessions/${view.id}/calls`);
    if (call && current()) { S.calls.set(view.id, call); voiceFor(call); }
  } catch (_) { /* shown when it changes */ }
  if (!current() || S.view !== view) return;
  paintSession(view);
  markRead(view);
}

async function refreshSession(id) {
  if (!S.view || S.view.id !== id) return;
  const view = await api('GET', `/api/sessions/${id}`);
  if (!S.view || S.view.id !== id) return;
  S.view = view;
  // A form being filled in (a reply typed, a photo chosen with its body site and consent, an
  // outcome picked but not saved, an upload under way) is kept as it stands, the very
  // elements, where the redrawn page has the same form; focus stays where it was.
  // Only this session's forms: the page may still show another session's (a route under way).
  const kept = [...document.querySelectorAll('form[data-dirty]')].filter((f) => f.dataset.session === id);
  const focused = document.activeElement;
  // A message being typed when the session is closed or cancelled (from the other side, or
  // another of this node's pages) has no form left to stay in: it is kept on the page, and
  // put back in the box when the session is reopened.
  const typing = kept.find((f) => f.id === 'message-form');
  const typed = typing && typing.querySelector('#reply') ? typing.querySelector('#reply').value.trim() : '';
  if (typed && ended(view)) S.unsent = { session: view.id, text: typed };
  paintSession(view);
  for (const form of kept) {
    const fresh = document.getElementById(form.id);
    if (fresh && fresh !== form) fresh.replaceWith(form);
  }
  // Focus stays on the very element if it was kept, else on its like in the redrawn page (the
  // reply box tapped into but not yet typed in: the keyboard must not close at every update).
  const again = focused && focused !== document.body && (document.contains(focused) ? focused
    : focused.id ? document.getElementById(focused.id) : null);
  if (again) again.focus({ preventScroll: true });
  markRead(view);
}

// Marks a form as being filled in once anything in it changes (see refreshSession); `done`
// clears the mark once what it holds was saved.
function tracked(form) {
  const dirty = () => { form.dataset.dirty = '1'; };
  form.addEventListener('input', dirty);
  form.addEventListener('change', dirty);
  return { form, done: () => { delete form.dataset.dirty; } };
}

// A person has the session on screen and is at the device: this node's read receipts for what
// the other side wrote. A session the page opened by itself (a call ringing) or an idle screen
// (nothing touched or typed for two minutes) reads nothing.
async function markRead(view) {
  if (document.visibilityState !== 'visible' || !document.hasFocus()) return;
  if (S.autoOpened === view.id || Date.now() - S.lastInput > 120000) return;
  const other = view.messages.some((m) => m.side !== mySide() && m.receipt !== 'read');
  if (!other) return;
  try { await api('POST', `/api/sessions/${view.id}/read`); } catch (_) { /* shown on the next change */ }
}

function paintSession(v) {
  const p = v.patient;
  const messages = h('ul', { class: 'messages', id: 'messages' }, v.messages.map((m) => h('li', {
    class: m.side === mySide() ? 'mine' : 'theirs', 'data-message': m.id,
  },
  h('div', { class: 'who' }, m.clinician ? `${m.clinician.name} (${m.clinician.role})` : m.author, ' · ', when(m.at_ms), ' · ', chip(m.receipt, m.side)),
  h('div', {}, m.text))));
  const photos = h('div', { class: 'photos' }, v.media.map((m) => {
    const img = h('img', { alt: `${VIEWS[m.view] || m.view} photo of ${m.body_site}`, hidden: true });
    const waiting = h('p', { class: 'meta' }, m.consent_withdrawn ? 'Consent withdrawn: not shown' : NOT_HERE);
    const shown = (u) => { img.src = u; img.hidden = false; waiting.remove(); };
    const key = `${v.id}/${m.hash}`;
    if (m.consent_withdrawn) {
      // Not even the copy this page already fetched.
      if (S.thumbs.has(key)) { URL.revokeObjectURL(S.thumbs.get(key)); S.thumbs.delete(key); }
    } else if (S.thumbs.has(key)) shown(S.thumbs.get(key));
    else imageUrl(v.id, m.hash, true).then((r) => { if (r.url) { S.thumbs.set(key, r.url); shown(r.url); } else waiting.textContent = r.why; });
    return h('figure', {}, img, waiting, h('figcaption', {}, `${VIEWS[m.view] || m.view} · ${m.body_site} · `,
      m.consent_withdrawn ? 'consent withdrawn' : consentWords(v, m.consent), ' · ', chip(m.receipt, 'requester'),
      isDesk() && !m.consent_withdrawn
        ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Open full size: ${m.body_site}`, onclick: () => openPhoto(v, m) }, 'Open full size')
        : null,
      !isDesk() && !m.consent_withdrawn
        ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Patient withdraws consent: ${m.body_site}`, 'data-withdraw': m.hash, onclick: (e) => withdrawConsent(e.currentTarget, v, m) }, 'Patient withdraws consent')
        : null));
  }));
  show(
    h('h1', {}, v.summary),
    h('p', { class: 'meta' }, `${LINES[v.service.line]} · ${PRIORITIES[v.service.priority]} · ${STATUSES[v.status]} · from ${v.identity.origin} · ${when(v.identity.created_ms)}`),
    h('div', { class: 'split' },
      h('section', { class: 'panel', 'aria-labelledby': 'h-patient' }, h('h2', { id: 'h-patient' }, 'Patient'),
        h('p', {}, p.nhs_number ? `NHS ${nhsFormat(p.nhs_number)} (${p.verified ? 'verified' : 'not verified'})` : 'No NHS number given',
          p.name ? ` · ${p.name}` : '', p.birth_date ? ` · born ${p.birth_date}` : ''),
        v.requester.call_sign ? h('p', {}, `Call sign ${v.requester.call_sign}`) : null,
        v.requester.incident ? h('p', {}, `Incident ${v.requester.incident}`) : null,
        v.requester.callback ? h('p', {}, `Callback ${v.requester.callback}`) : null),
      callPanel(v)),
    h('section', { class: 'panel', 'aria-labelledby': 'h-messages' }, h('h2', { id: 'h-messages' }, 'Messages'),
      v.messages.length ? messages : h('p', {}, 'No messages yet.'), ended(v) ? unsentNote(v) : replyForm(v)),
    h('section', { class: 'panel', 'aria-labelledby': 'h-photos' }, h('h2', { id: 'h-photos' }, 'Photos'),
      v.media.length ? photos : h('p', {}, 'No photos.'), isDesk() || ended(v) ? null : photoForm(v)),
    outcomePanel(v),
    statusPanel(v),
    exportPanel(v));
}

// Closed or cancelled: nothing more is written to it until it is reopened.
const ended = (v) => v.status === 'closed' || v.status === 'cancelled';

// Closing a session when the work is done, cancelling one made by mistake (a second tap
// confirms), and reopening one to go on with it.
function statusPanel(v) {
  const error = h('p', { class: 'error', role: 'alert' });
  // Closed, the session takes no outcome until it is reopened: closing before the other side's
  // is in (the crew's, on a desk; the consultant's, on the tablet) asks a second tap too.
  const other = isDesk() ? 'requester' : 'responder';
  const owed = !v.outcome[other];
  const confirm = {
    cancel: 'Tap again: cancel this session',
    close: owed ? `Tap again: close before the ${isDesk() ? 'crew' : 'consultant'}’s outcome is in` : null,
  };
  // A first tap arms the button for ten seconds, through the live redraws (a receipt, a call's
  // step): the second tap lands on a redrawn button.
  const armed = (what) => !!S.armed && S.armed.key === `${v.id}/${what}` && Date.now() < S.armed.until;
  const act = async (what, button) => {
    if (confirm[what] && !armed(what)) {
      S.armed = { key: `${v.id}/${what}`, until: Date.now() + 10000 };
      button.textContent = confirm[what];
      return;
    }
    S.armed = null;
    error.textContent = '';
    try {
      // A reopen is keyed to the close it undoes (the status steps so far): tried again after
      // an answer lost on the way, it opens nothing more and is not refused.
      const body = what === 'reopen' ? { act: what, client_key: `reopen-${v.id}-${(v.status_history || []).length}` } : { act: what };
      await api('POST', `/api/sessions/${v.id}/status`, body);
      await refreshSession(v.id);
    } catch (err) {
      if (err.status !== 401) error.textContent = err.message;
    }
  };
  const button = (what, text, id) => h('button', { type: 'button', class: 'secondary', id, onclick: (e) => act(what, e.currentTarget) },
    confirm[what] && armed(what) ? confirm[what] : text);
  const body = ended(v)
    ? [h('p', {}, `This session is ${STATUSES[v.status].toLowerCase()}: reopen it to write to it again.`), button('reopen', 'Reopen session', 'reopen')]
    : [h('p', { class: 'meta' }, isDesk() ? 'Close it once both outcomes are in: a closed session takes no outcome, message or photo until it is reopened.' : 'Close it when the work is done; cancel it if it was made by mistake.'),
      h('div', { class: 'actions' }, button('close', 'Close session', 'close-session'), isDesk() ? null : button('cancel', 'Cancel session', 'cancel-session'))];
  return h('section', { class: 'panel', 'aria-labelledby': 'h-status' }, h('h2', { id: 'h-status' }, 'Session'), ...body, error);
}

// The patient withdraws consent for a photo: asked twice (a second tap confirms), then every
// photo taken under that consent leaves the record's exports, on every node.
async function withdrawConsent(button, v, m) {
  if (!button.dataset.armed) {
    button.dataset.armed = 'yes';
    button.textContent = 'Tap again: remove from the record';
    return;
  }
  try {
    const r = await api('POST', `/api/sessions/${v.id}/photos/${m.hash}/withdraw-consent`);
    toast(`Consent withdrawn: ${r.photos} photo${r.photos === 1 ? '' : 's'} left out of the record.`);
    await refreshSession(v.id);
  } catch (err) {
    if (err.status !== 401) toast(err.message);
  }
}

// The session for another record: a letter to read (and print), a FHIR R4 bundle to save.
function exportPanel(v) {
  const state = h('p', { class: 'meta', id: 'export-state', 'aria-live': 'polite' });
  const letter = h('pre', { id: 'letter', class: 'letter', hidden: !S.letters.has(v.id) }, S.letters.get(v.id) || '');
  const showLetter = async () => {
    const token = S.token;
    try {
      const text = await apiText(`/api/sessions/${v.id}/export?format=letter`);
      if (S.token !== token) return; // signed out meanwhile: not kept for the next person
      S.letters.set(v.id, text);
      letter.textContent = text;
      letter.hidden = false;
    } catch (err) {
      if (err.status !== 401) state.textContent = `No letter: ${err.message}`;
    }
  };
  const saveFhir = async () => {
    try {
      const text = await apiText(`/api/sessions/${v.id}/export?format=fhir`);
      const count = (JSON.parse(text).entry || []).length;
      const name = `session-${v.id}.fhir.json`;
      const url = URL.createObjectURL(new Blob([text], { type: 'application/fhir+json' }));
      const link = h('a', { href: url, download: name, hidden: true }, name);
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      state.textContent = `FHIR R4 bundle of ${count} resources saved as ${name}.`;
    } catch (err) {
      if (err.status !== 401) state.textContent = `No export: ${err.message}`;
    }
  };
  return h('section', { class: 'panel', 'aria-labelledby': 'h-export' }, h('h2', { id: 'h-export' }, 'For the record'),
    h('p', { class: 'meta' }, 'What this device holds of the session, for the GP record or the ambulance ePR.'),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'export-letter', class: 'secondary', onclick: showLetter }, 'Show letter'),
      h('button', { type: 'button', id: 'export-fhir', class: 'secondary', onclick: saveFhir }, 'Save FHIR bundle')),
    state, letter);
}

function consentWords(v, id) {
  const c = v.consents.find((k) => k.id === id);
  if (!c) return 'consent recorded';
  return `${CONSENTS[c.kind] || c.kind}${c.scope === 'teaching' ? ', teaching too' : ''}`;
}

async function openPhoto(v, m) {
  const r = await imageUrl(v.id, m.hash, false);
  if (!r.url) { toast(r.why === NOT_HERE ? 'The full photo is not held here yet.' : r.why); return; }
  // Read only once it is on screen: a window the browser blocked shows nothing.
  const w = window.open(r.url, '_blank');
  setTimeout(() => URL.revokeObjectURL(r.url), 60000);
  if (!w) { toast('The photo’s window was blocked: allow pop-ups for this page and open it again.'); return; }
  w.opener = null;
  try { await api('POST', `/api/photos/${m.hash}/read`); } catch (_) { /* shown later */ }
}

// The message that was being typed when the session was closed, not sent.
function unsentNote(v) {
  if (!S.unsent || S.unsent.session !== v.id) return null;
  // Announced once: an alert put in again at every live redraw (a receipt, a call's step) would
  // be read out again each time.
  const first = !S.unsent.told;
  S.unsent.told = true;
  return h('div', { id: 'unsent' },
    h('p', { class: 'error', role: first ? 'alert' : null }, `Not sent: this session was ${STATUSES[v.status].toLowerCase()} while you were typing. Reopen it to send your message, kept here:`),
    h('blockquote', {}, S.unsent.text));
}

function replyForm(v) {
  const text = h('textarea', { id: 'reply', name: 'text', required: true, maxlength: 4000 });
  const error = h('p', { class: 'error', role: 'alert' });
  const send = h('button', { type: 'submit' }, isDesk() ? 'Send reply' : 'Send message');
  const { form, done } = tracked(h('form', { id: 'message-form', 'data-session': v.id }, field(isDesk() ? 'Your advice' : 'Message', text), error, h('div', { class: 'actions' }, send)));
  if (S.unsent && S.unsent.session === v.id) {
    // Reopened: the message typed before the close is back in the box, still to be sent. It
    // stays kept until it is sent or cleared: a redraw that does not keep this form (the
    // session opened anew while a live update drew it) puts it back again.
    text.value = S.unsent.text;
    form.dataset.dirty = '1';
  }
  text.addEventListener('input', () => {
    if (!S.unsent || S.unsent.session !== v.id) return;
    if (text.value.trim()) S.unsent.text = text.value.trim();
    else S.unsent = null;
  });
  let key = clientKey();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    send.disabled = true;
    error.textContent = '';
    try {
      // The form may have been kept across redraws: the other side's latest message is the
      // session's as it stands now.
      const now = S.view && S.view.id === v.id ? S.view : v;
      const last = [...now.messages].reverse().find((m) => m.side !== mySide());
      await api('POST', `/api/sessions/${v.id}/messages`, { text: text.value.trim(), reply_to: last ? last.id : null, client_key: key });
      key = clientKey();
      text.value = '';
      // Sent (the session closed only after it was saved): not "Not sent", and not put back.
      if (S.unsent && S.unsent.session === v.id) S.unsent = null;
      done();
      await refreshSession(v.id);
    } catch (err) {
      if (err.status !== 401) error.textContent = err.message;
    } finally {
      send.disabled = false;
    }
  });
  return form;
}

function photoForm(v) {
  const file = h('input', { type: 'file', name: 'photo', accept: 'image/*', capture: 'environment', required: true });
  const view = select('view', VIEWS, 'close_up');
  const site = h('input', { name: 'body_site', required: true, maxlength: 100 });
  const consent = select('consent', { '': 'Choose…', ...CONSENTS }, '');
  consent.required = true;
  const scope = select('consent_scope', { record_only: 'For the record only', teaching: 'Also for teaching' }, 'record_only');
  const bar = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  // What the last upload came to survives the live redraws of the page.
  const state = h('p', { class: 'meta', id: 'photo-state', 'aria-live': 'polite' },
    S.photoNote && S.photoNote.session === v.id ? S.photoNote.text : '');
  const note = (text) => { S.photoNote = { session: v.id, text }; state.textContent = text; };
  const send = h('button', { type: 'submit' }, 'Add photo');
  const { form, done } = tracked(h('form', { id: 'photo-form', 'data-session': v.id },
    field('Photo', file, 'Opens the camera on a tablet'),
    h('div', { class: 'row' }, field('View', view), field('Body site', site, 'For example: left forearm')),
    h('div', { class: 'row' }, field('Consent', consent), field('Use', scope)),
    bar, state, h('div', { class: 'actions' }, send)));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!file.files[0]) return;
    const q = new URLSearchParams({ view: view.value, body_site: site.value.trim(), consent: consent.value, consent_scope: scope.value });
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/sessions/${v.id}/photos?${q}`);
    xhr.setRequestHeader('Authorization', `Bearer ${S.token}`);
    xhr.setRequestHeader('Content-Type', file.files[0].type || 'application/octet-stream');
    bar.hidden = false;
    send.disabled = true;
    xhr.upload.onprogress = (p) => {
      if (p.lengthComputable) {
        bar.value = Math.round((100 * p.loaded) / p.total);
        note(`Saving on this device: ${bar.value}%`);
      }
    };
    xhr.onload = async () => {
      send.disabled = false;
      if (xhr.status === 201) {
        note(`Saved on this device (${Math.round(file.files[0].size / 1024)} KB). It goes to the hub with the next sync.`);
        done();
        await refreshSession(v.id);
      } else if (xhr.status === 401) {
        signedOut('Your sign-in has ended. Sign in again.');
      } else {
        let msg = `${xhr.status}`;
        try { msg = JSON.parse(xhr.responseText).error; } catch (_) { /* keep the status */ }
        note(`Not saved: ${msg}`);
      }
    };
    xhr.onerror = () => { send.disabled = false; note('Not saved: the node did not answer.'); };
    xhr.send(file.files[0]);
  });
  return form;
}

// The routing story, in plain words.
function storyLine(e) {
  const s = (ms) => `${(ms / 1000).toFixed(1)} s`;
  switch (e.kind) {
    case 'escalate': return 'A call was asked for.';
    case 'gate': return `Link check: ${e.verdict === 'call' ? 'good enough for voice' : 'too poor for voice'}` +
      (e.mos !== undefined ? ` (estimated quality ${Number(e.mos).toFixed(1)} of 5` : '') +
      (e.rtt_ms !== undefined ? `, round trip ${Math.round(e.rtt_ms)} ms` : '') +
      (e.loss !== undefined ? `, ${(100 * e.loss).toFixed(1)}% lost` : '') +
      (e.jitter_ms !== undefined ? `, jitter ${Math.round(e.jitter_ms)} ms` : '') +
      (e.mos !== undefined ? ')' : '') + '.';
    case 'ring': return `Rang ${e.desk} (attempt ${e.attempt}, for up to ${e.ring_s} s).`;
    case 'no_answer': return `${e.desk} did not answer.`;
    case 'connected': return `Connected to ${e.desk}` + (e.ms_from_ring !== undefined ? ` after ${s(e.ms_from_ring)} of ringing.` : '.');
    case 'answer': return `Answered at ${e.desk || 'the desk'}.`;
    case 'callback': return `Callback arranged instead: ${e.reason}.`;
    case 'federate': return `Handed to hub ${e.hub}.`;
    default: return `${e.kind}`;
  }
}

const CALL_WORDS = {
  waiting: 'Asking the hub for a consultant…', ringing: 'Ringing', connected: 'Connected', ended: 'Call ended',
  callback: 'Callback arranged',
};

function callPanel(v) {
  const call = S.calls.get(v.id);
  const open = call && ['waiting', 'ringing', 'connected'].includes(call.state);
  let now = null;
  if (call) {
    const words = CALL_WORDS[call.state] || call.state;
    if (call.state === 'connected') now = h('p', { class: 'call-live', id: 'call-state' }, `${words} to ${call.desk}`);
    else if (call.state === 'callback') now = h('p', { class: 'callback', id: 'call-state' }, `${words}: ${call.callback_reason || 'no reason given'}`);
    else if (call.state === 'waiting' && ![...S.peers.values()].some(Boolean)) {
      now = h('p', { id: 'call-state' }, isDesk() ? 'Waiting for a connection to the hub' : 'Waiting for a connection to ask the hub');
    } else if (call.state === 'waiting' && isDesk()) {
      // On the desk the hub is putting a call through (this desk's answer on its way, or the
      // crew's link being checked): the desk is not asking for a consultant.
      now = h('p', { id: 'call-state' }, 'The hub is putting the call through…');
    } else now = h('p', { id: 'call-state' }, words, call.desk && call.state === 'ringing' ? ` ${call.desk}` : '');
  }
  const buttons = [];
  if (!isDesk() && !open && !ended(v)) buttons.push(h('button', { type: 'button', id: 'escalate', onclick: () => escalate(v) }, 'Ask for a call'));
  if (isDesk() && call && call.ringing_here) buttons.push(h('button', { type: 'button', onclick: () => answer(v.id) }, 'Answer'));
  // The voice is off in this tab though the call is this person's: the page was reloaded, or
  // the microphone was refused or lost. A tap turns it on again.
  if (myLiveCall(call) && !S.voice) {
    buttons.push(h('button', { type: 'button', id: 'voice-on', onclick: async () => {
      startVoice(v.id);
      await refreshSession(v.id);
      // The button is gone with the voice on: focus goes to the call's other button, not the page.
      const hang = document.getElementById('hangup');
      if (hang && (!document.activeElement || document.activeElement === document.body)) hang.focus({ preventScroll: true });
    } }, 'Turn on my microphone and speaker'));
  }
  if (call && call.state === 'connected') buttons.push(h('button', { type: 'button', class: 'danger', id: 'hangup', onclick: () => hangUp(v.id) }, 'Hang up'));
  return h('section', { class: 'panel', 'aria-labelledby': 'h-call' }, h('h2', { id: 'h-call' }, 'Call'),
    now || h('p', {}, 'No call yet.'),
    h('p', { id: 'voice', class: 'meta', 'aria-live': 'polite' }, voiceNoteFor(v.id)),
    v.routing.length ? h('ol', { class: 'story', 'aria-label': 'What the hub decided' }, v.routing.map((e) => h('li', {}, storyLine(e)))) : null,
    v.calls.length ? h('ul', { class: 'story', 'aria-label': 'Call records' }, v.calls.filter((c) => c.mos !== undefined).map((c) =>
      h('li', {}, `${c.node}: ${Math.round((c.duration_ms || 0) / 1000)} s, quality ${Number(c.mos).toFixed(2)} of 5, ${(100 * (c.loss || 0)).toFixed(1)}% lost, ended: ${c.end}`))) : null,
    buttons.length ? h('div', { class: 'actions' }, buttons) : null);
}

async function escalate(v) {
  try {
    const r = await api('POST', `/api/sessions/${v.id}/escalate`);
    S.myCalls.add(r.call);
    S.myCallSessions.delete(v.id); // the latest last: the tab keeps the last 5
    S.myCallSessions.add(v.id);
    keepMyCalls();
    S.calls.set(v.id, { session: v.id, call: r.call, state: 'waiting', ringing_here: false });
    await refreshSession(v.id);
  } catch (err) {
    if (err.status !== 401) toast(err.message);
  }
}

async function answer(id) {
  try {
    const r = await api('POST', `/api/sessions/${id}/answer`);
    S.myCalls.add(r.call);
    S.myCallSessions.delete(id); // the latest last: the tab keeps the last 5
    S.myCallSessions.add(id);
    keepMyCalls();
    S.autoOpened = null;
    stopRinging();
    // Answered: the keyboard's focus goes to the case, so that a second Enter (the banner stays
    // until the call's own event) answers nothing more.
    if (document.getElementById('ring').contains(document.activeElement)) document.getElementById('main').focus({ preventScroll: true });
    if (!S.view || S.view.id !== id) location.hash = `#/s/${id}`;
  } catch (err) {
    if (err.status !== 401) toast(err.message);
  }
}

async function hangUp(id) {
  try { await api('POST', `/api/sessions/${id}/hangup`); } catch (err) { if (err.status !== 401) toast(err.message); }
}

function outcomePanel(v) {
  const side = mySide();
  const had = v.outcome[side];
  const both = ['requester', 'responder'].filter((s) => v.outcome[s]).map((s) =>
    h('li', {}, `${s === 'requester' ? 'Requester' : 'Consultant'}: ${OUTCOMES[v.outcome[s].value]}`,
      v.outcome[s].clinician ? ` (${v.outcome[s].clinician.name})` : ''));
  // Closed or cancelled: no outcome is recorded until it is reopened (the node refuses it), so
  // no form, and none kept from before the close is put back (refreshSession keeps a form only
  // where the redrawn page has one of its id).
  if (ended(v)) {
    return h('section', { class: 'panel', 'aria-labelledby': 'h-outcome' }, h('h2', { id: 'h-outcome' }, 'Outcome'),
      both.length ? h('ul', {}, both) : h('p', {}, 'No outcome recorded.'),
      h('p', { class: 'meta' }, 'Reopen the session to record or change an outcome.'));
  }
  const pick = select('outcome', { '': 'Choose…', ...OUTCOMES }, had ? had.value : '');
  const save = h('button', { type: 'submit' }, 'Record outcome');
  // Stays until the next try: an outcome not recorded must not look recorded.
  const error = h('p', { class: 'error', role: 'alert' });
  const { form, done } = tracked(h('form', { id: 'outcome-form', 'data-session': v.id },
    field(isDesk() ? 'Your outcome' : 'Outcome for the patient', pick), error, h('div', { class: 'actions' }, save)));
  const key = clientKey();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    if (!pick.value) { error.textContent = 'Choose an outcome first.'; return; }
    try {
      await api('POST', `/api/sessions/${v.id}/outcome`, { side, outcome: pick.value, client_key: `${key}-${pick.value}` });
      toast('Outcome recorded.');
      done();
      await refreshSession(v.id);
    } catch (err) {
      if (err.status !== 401) error.textContent = `Not recorded: ${err.message}`;
    }
  });
  return h('section', { class: 'panel', 'aria-labelledby': 'h-outcome' }, h('h2', { id: 'h-outcome' }, 'Outcome'),
    both.length ? h('ul', {}, both) : null, form);
}

// ------------------------------------------------------------------ calls: ringing, state

function onCall(call) {
  voiceFor(call);
  renderNav();
  const ring = document.getElementById('ring');
  if (call.ringing_here && call.state === 'ringing') {
    const card = S.cards.get(call.session);
    // The ring takes the focus once, as it starts for this call (a person who moved on from it
    // keeps their place at its later steps), or back on its own button, replaced here.
    const fresh = S.ringFor !== call.call;
    const hadFocus = !ring.hidden && ring.contains(document.activeElement);
    S.ringFor = call.call;
    ring.replaceChildren(
      h('h2', { id: 'ring-title' }, 'Incoming call: ', card ? `${LINES[card.service_line]} · ${PRIORITIES[card.priority]} · ${card.summary}` : call.session),
      h('button', { type: 'button', id: 'answer', onclick: () => answer(call.session) }, 'Answer'));
    ring.hidden = false;
    startRinging();
    if (fresh || hadFocus) ringFocus();
    // The case on screen before the consultant speaks, unless a reply is being typed elsewhere
    // (the banner's Answer opens it).
    const typing = document.getElementById('reply');
    const drafting = typing && typing.value.trim() !== '' && (!S.view || S.view.id !== call.session);
    if (!drafting && (!S.view || S.view.id !== call.session)) {
      S.autoOpened = call.session;
      location.hash = `#/s/${call.session}`;
    }
  } else if (!ring.hidden && (!call.ringing_here || call.state !== 'ringing')) {
    // The Answer button had the focus: it goes to the page (the case), not to nowhere.
    const hadFocus = ring.contains(document.activeElement);
    ring.hidden = true;
    S.ringFor = null;
    stopRinging();
    if (hadFocus) document.getElementById('main').focus({ preventScroll: true });
  }
  if (S.view && S.view.id === call.session) refreshSession(call.session);
}

// ------------------------------------------------------------------ the call's voice

// Whether this node is a party of the call: the desk it connected to, or the edge whose
// session it is.
function isParty(call) {
  if (isDesk()) return call.desk === S.node.name;
  const card = S.cards.get(call.session);
  return !!card && card.origin === S.node.name;
}

function keepMyCalls() {
  sessionStorage.setItem('outpost.calls', JSON.stringify({
    who: S.callsOf, calls: [...S.myCalls].slice(-20), sessions: [...S.myCallSessions].slice(-5),
  }));
}

// Whether this tab may carry the call's voice: the person asked for it or answered it here.
function myLiveCall(call) {
  return !!call && call.state === 'connected' && isParty(call) && S.myCalls.has(call.call);
}

function voiceFor(call) {
  if (myLiveCall(call)) {
    if (S.voice) return;
    // A browser opens the speaker only after a tap on the page: a page reloaded mid-call has
    // had none, so it asks for one (the call panel's button) rather than stay silent. (Where
    // the browser cannot say, a touch or key seen by this page stands for it: an AudioContext
    // started without one waits for ever.)
    const tapped = navigator.userActivation ? navigator.userActivation.hasBeenActive : S.lastInput > 0;
    if (!tapped) {
      voiceStatus('Your call is still connected, but this page was reloaded: tap “Turn on my microphone and speaker” to speak and hear again.', call.session);
    } else startVoice(call.session);
  } else if (S.voice && S.voice.session === call.session) stopVoice();
  // The call is over (or not this person's): no note about its voice stays ("still connected").
  else if (S.voiceNote && S.voiceNote.session === call.session) voiceStatus('');
}

// The microphone and speaker carry the call: 20 ms frames of 8 kHz audio over a WebSocket to
// this node, which carries them over the call's QUIC voice path, and back.
async function startVoice(session) {
  if (S.voice) return;
  const v = { session, sent: 0, played: 0, heard: [], stop: () => {} };
  S.voice = v;
  window.outpostVoice = v;
  renderNav();
  let stream = null;
  let ctx = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    ctx = new AudioContext({ sampleRate: 8000, latencyHint: 'interactive' });
    await ctx.audioWorklet.addModule('/app/voice-worklet.js');
    const node = new AudioWorkletNode(ctx, 'outpost-voice', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    ctx.createMediaStreamSource(stream).connect(node);
    node.connect(ctx.destination);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/calls/audio?session=${encodeURIComponent(session)}&token=${encodeURIComponent(S.token)}`;
    let ws = null;
    let tries = 0;
    const connect = () => {
      ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      let opened = false;
      ws.onopen = () => { opened = true; tries = 0; voiceStatus('Microphone and speaker on', session); };
      ws.onmessage = (e) => {
        v.played++;
        v.heard.push(new Int16Array(e.data.slice(0)));
        if (v.heard.length > 3000) v.heard.shift(); // the last minute, for the call's own checks
        node.port.postMessage(e.data, [e.data]);
      };
      ws.onclose = (e) => {
        if (S.voice !== v) return;
        const call = S.calls.get(session);
        // The node may not carry the call's audio yet (just connected), or the socket dropped:
        // try again while the call lasts, and say so.
        if (call && call.state === 'connected' && tries < 40) {
          tries += 1;
          if (opened) voiceStatus(`Voice lost (${e.reason || 'connection closed'}): reconnecting…`, session);
          setTimeout(() => { if (S.voice === v) connect(); }, 500);
        } else {
          stopVoice();
          if (call && call.state === 'connected') voiceStatus(`No voice from this device: ${e.reason || 'the node refused it'}`, session);
          if (S.view && S.view.id === session) refreshSession(session); // offers to try again
        }
      };
    };
    node.port.onmessage = (e) => {
      if (ws && ws.readyState === WebSocket.OPEN) { ws.send(e.data); v.sent++; }
    };
    v.stop = () => {
      if (ws) { ws.onclose = null; ws.close(); }
      stream.getTracks().forEach((t) => t.stop());
      ctx.close();
    };
    if (S.voice !== v) { v.stop(); return; }
    await ctx.resume();
    voiceStatus('Connecting the microphone and speaker…', session);
    connect();
  } catch (err) {
    // The microphone is let go (its indicator off), not left open behind a failed start that
    // the button may now try again and again.
    if (stream) stream.getTracks().forEach((t) => t.stop());
    if (ctx) ctx.close().catch(() => {});
    if (S.voice !== v) return; // stopped meanwhile (the call ended, a sign-out): nothing to say
    S.voice = null;
    renderNav(); // no sound here after all: the menu says so on another screen
    voiceStatus(`No microphone or speaker here (${err.message}): the call carries no voice from this device.`, session);
    if (S.view && S.view.id === session) refreshSession(session); // offers to try again
  }
}

function stopVoice() {
  const v = S.voice;
  S.voice = null;
  if (v) v.stop();
  voiceStatus('');
  if (S.token) renderNav();
}

// The session of this person's call connected with no voice in this tab, when it is not the
// session on screen or being drawn (whose call panel says so itself: S.view is null until
// the session's answer comes).
function silentCall() {
  const shown = location.hash.startsWith('#/s/') ? decodeURIComponent(location.hash.slice(4)) : null;
  for (const call of S.calls.values()) {
    if (myLiveCall(call) && !(S.voice && S.voice.session === call.session) && !(S.view && S.view.id === call.session)
      && shown !== call.session) return call.session;
  }
  return null;
}

// What this page's voice is doing, for the session it is about: shown on that session's call
// panel only, never on another session's.
function voiceStatus(text, session) {
  S.voiceNote = text ? { session, text } : null;
  const el = document.getElementById('voice');
  if (el) el.textContent = voiceNoteFor(S.view && S.view.id);
}

const voiceNoteFor = (id) => (S.voiceNote && S.voiceNote.session === id ? S.voiceNote.text : '');

function startRinging() {
  if (S.ringTimer) return;
  const beep = () => {
    try {
      S.audio = S.audio || new AudioContext();
      const ring = document.getElementById('ring');
      const muted = ring && ring.querySelector('.ring-muted');
      if (S.audio.state === 'suspended') {
        // A page reloaded (its sign-in restored) may not make a sound until it is touched:
        // said once, and one listener for the tap (not one more at every beep).
        S.audio.resume().catch(() => {});
        if (ring && !muted) ring.append(h('p', { class: 'ring-muted' }, 'Tap anywhere to turn the ring sound on.'));
        if (!S.audioTap) {
          S.audioTap = () => { S.audioTap = null; S.audio.resume().catch(() => {}); };
          document.addEventListener('pointerdown', S.audioTap, { once: true, capture: true });
        }
      } else if (muted) muted.remove(); // it sounds now: the note would be wrong
      const o = S.audio.createOscillator();
      const g = S.audio.createGain();
      o.frequency.value = 880;
      g.gain.setValueAtTime(0.2, S.audio.currentTime);
      g.gain.exponentialRampToValueAtTime(0.001, S.audio.currentTime + 0.6);
      o.connect(g).connect(S.audio.destination);
      o.start();
      o.stop(S.audio.currentTime + 0.6);
    } catch (_) { /* no audio device: the banner still shows */ }
  };
  beep();
  S.ringTimer = setInterval(beep, 1500);
}

function stopRinging() {
  clearInterval(S.ringTimer);
  S.ringTimer = null;
}

// ------------------------------------------------------------------ callbacks owed

// The callbacks owed, asked of the node again after sessions or calls change (at most once a
// second): the count on the menu, and the screen itself when it is shown.
// One request at a time: a change heard while one is under way asks again after it, and a
// failed request is not tried again at once (a node failing it would be asked at every event).
// The answer is for whoever was signed in when it was asked: it is not shown to the next
// person, nor drawn over the sign-in form.
function countOwed() {
  if (!S.token) return;
  if (S.owedTimer) { S.owedAgain = true; return; }
  const token = S.token;
  const timer = setTimeout(async () => {
    S.owedAgain = false;
    S.owedTried = true;
    let owed;
    try { owed = await api('GET', '/api/callbacks'); } catch (_) { /* the next change asks again */ }
    if (S.owedTimer === timer) S.owedTimer = null;
    if (S.token !== token) return;
    if (owed !== undefined) {
      const before = JSON.stringify(S.owed);
      S.owed = owed;
      if (JSON.stringify(owed) !== before) {
        renderNav();
        if (location.hash === '#/callbacks') paintCallbacks(owed);
      }
    }
    if (S.owedAgain) countOwed();
  }, S.owed === undefined && !S.owedTried ? 0 : 1000);
  S.owedTimer = timer;
}

async function renderCallbacks() {
  const token = S.token;
  const owed = await api('GET', '/api/callbacks');
  if (S.token !== token) return;
  S.owed = owed;
  renderNav();
  paintCallbacks(owed);
}

function paintCallbacks(owed) {
  // Redrawn live: a link focused (by keyboard) stays focused if it is still listed.
  const main = document.getElementById('main');
  const focused = document.activeElement && main.contains(document.activeElement) && document.activeElement !== main
    ? document.activeElement.getAttribute('href') : null;
  show(h('h1', {}, isDesk() ? 'Callbacks owed' : 'Callbacks you are waiting for'),
    owed.length ? h('ul', { class: 'cards' }, owed.map((c) => h('li', {}, h('a', { href: `#/s/${c.session}` },
      h('span', { class: 'card-title' }, c.summary),
      h('span', { class: 'chip device' }, PRIORITIES[c.priority]),
      h('span', { class: 'meta' }, `${LINES[c.service_line]} · ${c.reason} · since ${when(c.since_ms)}`,
        c.callback_number ? ` · ring ${c.callback_number}`
          : isDesk() ? ' · no number given: answer by message' : ' · no callback number given: the consultant can answer only by message',
        c.call_sign ? ` · ${c.call_sign}` : '')))))
      : h('p', {}, 'None owed.'));
  const again = focused && [...main.querySelectorAll('a')].find((a) => a.getAttribute('href') === focused);
  if (again) again.focus({ preventScroll: true });
}

// ------------------------------------------------------------------ start

document.getElementById('signout').addEventListener('click', async () => {
  try { await api('POST', '/api/logout'); } catch (_) { /* signed out either way */ }
  signedOut('Signed out.');
});

(async () => {
  if (!S.token) { renderLogin(); return; }
  try {
    S.me = await api('GET', '/api/me');
    await start();
  } catch (err) {
    if (err.status !== 401) renderLogin(err.message);
  }
})();
