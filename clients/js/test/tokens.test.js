/* Connection tokens: the `auth` frame first (or ?token= on HTTP
 * transports), getToken() before each connection, `token_expiring` ->
 * `refresh` on the same connection, channel tokens renewed, refusals
 * retried with a fresh token, and `disconnect` with reconnect false
 * stopping the client. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, sentOf, settle } from './fakes.js';

const CONNECTED = { type: 'connected', session: 'S1', heartbeat: 25 };
const AUTHENTICATED = { type: 'authenticated', user: 'alice', id: '9-1', expires: 2e9 };

function tokens(...values) {
  const calls = [];
  const getToken = () => { calls.push(values[calls.length]); return Promise.resolve(values[calls.length - 1]); };
  return { calls, getToken };
}

test('over WebSocket the token goes in an `auth` frame, first; connect\'s callback waits for `authenticated`', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, token: 'jwt-1' });
  const seen = [];
  chloe.subscribe('news');
  chloe.onauthenticated((user, frame) => { seen.push(['authenticated', user, frame.expires]); });
  chloe.connect(() => { seen.push(['connected', chloe.user]); });
  chloe.send('hi', { ref: 1 });
  const ws = env.socket();
  assert.equal(ws.url, 'ws://chloe.test:8901/ws');   // no token in the URL
  ws.receive(CONNECTED);
  assert.deepEqual(ws.sent.map((f) => f.type), ['auth', 'subscribe', 'send']);
  assert.deepEqual(ws.sent[0], { type: 'auth', token: 'jwt-1' });
  assert.deepEqual(seen, []);
  ws.receive(AUTHENTICATED);
  assert.deepEqual(seen, [['authenticated', 'alice', 2e9], ['connected', 'alice']]);
});

test('getToken() is called before each connection, so a reconnect presents a fresh token', async () => {
  const env = makeEnv();
  const { calls, getToken } = tokens('jwt-1', 'jwt-2');
  const chloe = new Chloe({ globals: env.globals, getToken, transports: ['websocket'] });
  chloe.connect();
  assert.equal(env.sockets.length, 0);              // the token first
  await settle();
  env.socket().receive(CONNECTED);
  env.socket().receive(AUTHENTICATED);
  env.socket().drop();
  env.clock.next();
  await settle();
  env.socket().receive(CONNECTED);
  assert.deepEqual(calls, ['jwt-1', 'jwt-2']);
  assert.deepEqual(env.socket().sent[0], { type: 'auth', token: 'jwt-2', since: '9-1' });
});

test('SSE and long-poll carry the token and the user cursor in the query', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, token: 'a b', transports: ['sse'] });
  chloe.connect();
  assert.equal(env.sources[0].url, 'http://chloe.test:8901/sse?token=a%20b');
  env.sources[0].receive(CONNECTED);
  env.sources[0].receive(AUTHENTICATED);
  assert.equal(env.requests.length, 0);             // no auth frame: the token was in the URL
  env.sources[0].fail();
  env.clock.next();
  assert.equal(env.sources[1].url, 'http://chloe.test:8901/sse?resume=S1&token=a%20b&user_since=9-1');

  const poll = makeEnv();
  new Chloe({ globals: poll.globals, token: 't', transports: ['longpoll'] }).connect();
  assert.equal(poll.requests[0].url, 'http://chloe.test:8901/poll?token=t');
});

test('token_expiring: getToken()\'s new token is sent as `refresh` on the same connection', async () => {
  const env = makeEnv();
  const { getToken } = tokens('jwt-1', 'jwt-2');
  const chloe = new Chloe({ globals: env.globals, getToken });
  chloe.connect();
  await settle();
  const ws = env.socket();
  ws.receive(CONNECTED);
  ws.receive(AUTHENTICATED);
  ws.receive({ type: 'token_expiring', expires: 2e9 });
  await settle();
  assert.deepEqual(ws.sent.at(-1), { type: 'refresh', token: 'jwt-2' });
  assert.equal(env.sockets.length, 1);
});

test('token_expiring without getToken sends nothing: the server ends the session at exp', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, token: 'jwt' });
  chloe.connect();
  const ws = env.socket();
  ws.receive(CONNECTED);
  ws.receive({ type: 'token_expiring', expires: 2e9 });
  assert.deepEqual(ws.sent.map((f) => f.type), ['auth']);
});

test('a channel\'s token_expiring asks the subscription\'s getToken(channel) and refreshes that channel', async () => {
  const env = makeEnv();
  const asked = [];
  const chloe = new Chloe({ globals: env.globals });
  chloe.subscribe('private-a', null, { token: 'ct-1', getToken: (channel) => { asked.push(channel); return 'ct-2'; } });
  chloe.connect();
  const ws = env.socket();
  ws.receive(CONNECTED);
  assert.deepEqual(ws.sent[0], { type: 'subscribe', channel: 'private-a', token: 'ct-1' });
  ws.receive({ type: 'token_expiring', channel: 'private-a', expires: 2e9 });
  await settle();
  assert.deepEqual(ws.sent.at(-1), { type: 'refresh', channel: 'private-a', token: 'ct-2' });
  assert.deepEqual(asked, ['private-a']);
  // After a reconnect the used token is not presented again: a fresh one.
  ws.drop();
  env.clock.next();
  env.socket().receive(CONNECTED);
  await settle();
  assert.deepEqual(env.socket().sent[0], { type: 'subscribe', channel: 'private-a', token: 'ct-2' });
  assert.deepEqual(asked, ['private-a', 'private-a']);
});

test('a channel whose token ran out is taken again with getToken, or dropped and told to onunsubscribed', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals });
  const ended = [], errors = [];
  chloe.onerror((e) => { errors.push([e.code, e.reason, e.channel]); });
  chloe.subscribe('renewed', null, { token: 't', getToken: () => 'fresh' });
  chloe.subscribe('told', null, { token: 't', onunsubscribed: (reason) => { ended.push(reason); } });
  chloe.subscribe('silent', null, { token: 't' });
  chloe.connect();
  const ws = env.socket();
  ws.receive(CONNECTED);
  ws.receive({ type: 'message', channel: 'renewed', id: '3-3', data: 1 });
  for (const channel of ['renewed', 'told', 'silent']) {
    ws.receive({ type: 'unsubscribed', channel, reason: 'token_expired' });
  }
  await settle();
  assert.deepEqual(ws.sent.at(-1), { type: 'subscribe', channel: 'renewed', token: 'fresh', since: '3-3' });
  assert.deepEqual(ended, ['token_expired']);
  assert.deepEqual(errors, [['unsubscribed', 'token_expired', 'silent']]);
  assert.deepEqual(chloe.channels(), ['renewed']);
});

test('disconnect with reconnect false stops the client: ondisconnect, onerror, onclose, no reconnect', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, token: 'jwt' });
  const events = [];
  chloe.ondisconnect((reason, again) => { events.push(['disconnect', reason, again]); });
  chloe.onerror((e) => { events.push(['error', e.code, e.reason]); });
  chloe.onclose(() => { events.push(['close']); });
  chloe.connect();
  const ws = env.socket();
  ws.receive(CONNECTED);
  ws.receive(AUTHENTICATED);
  ws.receive({ type: 'disconnect', reason: 'banned', reconnect: false });
  assert.deepEqual(events, [['disconnect', 'banned', false], ['error', 'disconnected', 'banned'], ['close']]);
  assert.equal(ws.closed, true);
  assert.deepEqual(env.clock.delays(), []);
  ws.drop();
  assert.equal(env.sockets.length, 1);
});

test('disconnect with reconnect true: the client comes back once the server closes', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, token: 'jwt', transports: ['websocket'] });
  const events = [];
  chloe.ondisconnect((reason, again) => { events.push([reason, again]); });
  chloe.connect();
  env.socket().receive(CONNECTED);
  env.socket().receive({ type: 'disconnect', reason: 'moved', reconnect: true });
  assert.deepEqual(events, [['moved', true]]);
  assert.equal(env.socket().closed, false);
  env.socket().drop();
  env.clock.next();
  assert.equal(env.sockets.length, 2);
});

test('a refused token is retried with backoff and a fresh token, not on the next transport', async () => {
  const env = makeEnv({ random: 0 });
  const { calls, getToken } = tokens('bad', 'good');
  const chloe = new Chloe({ globals: env.globals, getToken });
  const errors = [];
  chloe.onerror((e) => { errors.push(e.code); });
  chloe.connect();
  await settle();
  env.socket().receive(CONNECTED);
  env.socket().receive({ type: 'error', code: 'token_invalid', message: 'no' });
  env.socket().drop();                               // the server ends the session
  assert.equal(env.sources.length, 0);
  assert.deepEqual(env.clock.delays(), [125]);
  env.clock.next();
  await settle();
  assert.deepEqual(calls, ['bad', 'good']);
  assert.equal(env.sockets.length, 2);
  assert.deepEqual(errors, ['token_invalid']);
});

test('token_expired is tried again at once with a fresh token (once in a row)', async () => {
  const env = makeEnv();
  const { getToken } = tokens('old', 'new', 'newer');
  const chloe = new Chloe({ globals: env.globals, getToken, transports: ['websocket'] });
  chloe.connect();
  await settle();
  env.socket().receive(CONNECTED);
  env.socket().receive({ type: 'error', code: 'token_expired', message: 'expired' });
  env.socket().drop();
  assert.deepEqual(env.clock.delays(), [0]);
  env.clock.next();
  await settle();
  env.socket().receive(CONNECTED);
  assert.deepEqual(sentOf(env.socket(), 'auth'), [{ type: 'auth', token: 'new' }]);
  env.socket().receive({ type: 'error', code: 'token_expired', message: 'expired' });
  env.socket().drop();
  assert.notDeepEqual(env.clock.delays(), [0]);     // twice in a row: the backoff
});

test('a getToken that fails is reported as token_unavailable and tried again later', async () => {
  const env = makeEnv();
  let n = 0;
  const chloe = new Chloe({ globals: env.globals, getToken: () => { if (n++ === 0) throw new Error('offline'); return 'jwt'; } });
  const errors = [];
  chloe.onerror((e) => { errors.push([e.code, e.message]); });
  chloe.connect();
  await settle();
  assert.deepEqual(errors, [['token_unavailable', 'getToken failed: offline']]);
  assert.equal(env.sockets.length, 0);
  env.clock.next();
  await settle();
  assert.equal(env.sockets.length, 1);
});
