/* Transports: tried in the order of `transports`, each falling back to
 * the next when it cannot connect or says nothing within connectTimeout;
 * and what each one sends and polls. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, settle } from './fakes.js';

const CONNECTED = { type: 'connected', session: 'S1', heartbeat: 25 };

test('transports are tried in order: websocket, sse, longpoll, jsonp, each falling back when it fails', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals });
  const order = [];
  chloe.connect(() => { order.push('connected over ' + chloe.transport); });
  order.push('ws ' + env.socket().url);
  env.socket().drop();                          // refused before `connected`
  order.push('sse ' + env.sources[0].url);
  env.sources[0].fail();
  assert.equal(env.sources[0].closed, true);    // the browser would retry by itself: closed instead
  order.push('poll ' + env.requests[0].url);
  env.requests[0].fail();                       // a network error on the first poll
  await settle();
  order.push('jsonp ' + env.scripts[0].src.replace(/callback=.*/, 'callback=…'));
  env.scripts[0].answer({ session: 'S1', cursor: 1, frames: [CONNECTED] });
  assert.deepEqual(order, [
    'ws ws://chloe.test:8901/ws',
    'sse http://chloe.test:8901/sse',
    'poll http://chloe.test:8901/poll',
    'jsonp http://chloe.test:8901/jsonp?callback=…',
    'connected over jsonp',
  ]);
  assert.equal(chloe.session, 'S1');
});

test('a transport the browser lacks is skipped', () => {
  const env = makeEnv({ websocket: false });
  const chloe = new Chloe({ globals: env.globals });
  chloe.connect();
  assert.equal(env.sources.length, 1);
  env.refuse.sse = true;                        // EventSource throws: longpoll next, at once
  const other = new Chloe({ globals: env.globals });
  other.connect();
  assert.equal(env.sources.length, 1);
  assert.match(env.requests.at(-1).url, /\/poll$/);
});

test('`transports` picks and orders them', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['longpoll', 'bogus', 'websocket'] });
  assert.deepEqual(chloe.transports, ['longpoll', 'websocket']);
  chloe.connect();
  assert.equal(env.sockets.length, 0);
  assert.match(env.requests[0].url, /\/poll$/);
});

test('a transport that says nothing within connectTimeout is closed and the next one tried', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['websocket', 'sse'], connectTimeout: 3000 });
  chloe.connect();
  const ws = env.socket();
  assert.deepEqual(env.clock.delays(), [3000]);
  env.clock.advance(2999);
  assert.equal(env.sources.length, 0);
  env.clock.advance(1);
  assert.equal(ws.closed, true);
  assert.equal(env.sources.length, 1);
  ws.onmessage({ data: JSON.stringify(CONNECTED) });   // too late: ignored
  assert.equal(chloe.transport, null);
  env.sources[0].receive(CONNECTED);
  assert.equal(chloe.transport, 'sse');
  assert.deepEqual(env.clock.delays(), []);            // the watchdog went with `connected`
});

test('when every transport fails the client retries from the first one after a backoff', () => {
  const env = makeEnv({ random: 0 });
  const chloe = new Chloe({ globals: env.globals, transports: ['websocket', 'sse'], connectTimeout: 1000 });
  let closes = 0;
  chloe.onclose(() => { closes++; });
  chloe.connect();
  env.clock.advance(2000);                    // both time out
  assert.equal(env.sources[0].closed, true);
  assert.deepEqual(env.clock.delays(), [125]);
  assert.equal(closes, 0);                    // never connected: nothing to tell onclose
  env.clock.advance(125);
  assert.equal(env.sockets.length, 2);
});

test('SSE: frames come as events, sends go by POST /session/<id> in batches, one request at a time', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['sse'] });
  chloe.connect();
  const source = env.sources[0];
  source.receive(CONNECTED);
  chloe.send('a', { ref: 1 });
  chloe.send('b', { ref: 2 });
  chloe.send('c', { ref: 3 });
  assert.equal(env.requests.length, 1);
  assert.equal(env.requests[0].url, 'http://chloe.test:8901/session/S1');
  assert.deepEqual(JSON.parse(env.requests[0].body), [{ type: 'send', data: 'a', ref: 1 }]);
  env.requests[0].respond(204);
  await settle();
  assert.deepEqual(JSON.parse(env.requests[1].body).map((f) => f.ref), [2, 3]);
  const got = [];
  chloe.onmessage((data) => { got.push(data); });
  source.receive({ type: 'message', channel: null, id: '1-1', data: 'hi' });
  assert.deepEqual(got, ['hi']);
});

test('SSE: a POST that fails on the network is repeated; a gone session loses the connection', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['sse'] });
  let closes = 0;
  chloe.onclose(() => { closes++; });
  chloe.connect();
  env.sources[0].receive(CONNECTED);
  chloe.send('a', { ref: 1 });
  env.requests[0].fail();
  await settle();
  assert.deepEqual(env.clock.delays(), [250]);
  env.clock.advance(250);
  assert.equal(env.requests[1].body, env.requests[0].body);
  env.requests[1].respond(404);
  await settle();
  assert.equal(closes, 1);
  assert.equal(env.sources[0].closed, true);
});

test('long-poll: the first poll opens the session, then each polls from the cursor', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['longpoll'] });
  const got = [];
  chloe.onmessage((data) => { got.push(data); });
  chloe.connect();
  env.requests[0].respond(200, { session: 'S1', cursor: 1, frames: [CONNECTED] });
  await settle();
  assert.equal(chloe.transport, 'longpoll');
  assert.equal(env.requests[1].url, 'http://chloe.test:8901/poll?session=S1&cursor=1');
  env.requests[1].respond(200, { cursor: 3, frames: [
    { type: 'message', channel: null, id: '1-1', data: 'one' },
    { type: 'message', channel: null, id: '1-2', data: 'two' },
  ] });
  await settle();
  assert.deepEqual(got, ['one', 'two']);
  assert.equal(env.requests[2].url, 'http://chloe.test:8901/poll?session=S1&cursor=3');
});

test('long-poll: a poll that has not answered within pollTimeout is given up and repeated', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['longpoll'], pollTimeout: 5000 });
  chloe.connect();
  env.requests[0].respond(200, { session: 'S1', cursor: 1, frames: [CONNECTED] });
  await settle();
  env.clock.advance(5000);                       // no answer: aborted, then retried 250 ms later
  assert.equal(env.requests[1].init.signal.aborted, true);
  env.clock.advance(250);
  assert.equal(env.requests[2].url, 'http://chloe.test:8901/poll?session=S1&cursor=1');
});

test('JSONP waits for the page\'s load event before its first poll', () => {
  const env = makeEnv();
  env.globals.document.readyState = 'loading';
  const chloe = new Chloe({ globals: env.globals, transports: ['jsonp'] });
  chloe.connect();
  assert.equal(env.scripts.length, 0);
  env.page.fire('load');
  assert.equal(env.scripts.length, 1);
  assert.deepEqual(env.page.listeners.load, []);
});

test('close() before the page loaded forgets the load listener', () => {
  const env = makeEnv();
  env.globals.document.readyState = 'loading';
  const chloe = new Chloe({ globals: env.globals, transports: ['jsonp'] });
  chloe.connect();
  chloe.close();
  assert.deepEqual(env.page.listeners.load, []);
  env.page.fire('load');
  assert.equal(env.scripts.length, 0);
});
