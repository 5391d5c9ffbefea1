/* Reconnecting after a lost connection: exponential backoff with jitter,
 * capped, started again once connected; `?resume=` names the last session. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv } from './fakes.js';

function client(env, options = {}) {
  return new Chloe({ transports: ['websocket'], globals: env.globals, ...options });
}

test('a lost connection is retried after a backoff that doubles, with jitter, up to maxDelay', () => {
  const env = makeEnv({ random: 0 });
  const chloe = client(env, { minDelay: 100, maxDelay: 1000 });
  chloe.connect();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    env.socket().drop();               // refused before `connected`: no transport left, so a retry
    delays.push(env.clock.next());
  }
  // random 0: half the ceiling each time; the ceiling doubles from minDelay to maxDelay.
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]);
  assert.equal(env.sockets.length, 7);
});

test('the jitter spreads each delay between half the ceiling and the ceiling', () => {
  for (const [random, expected] of [[0, 125], [0.5, 187.5], [0.999, 249.875]]) {
    const env = makeEnv({ random });
    const chloe = client(env);       // minDelay 250 by default
    chloe.connect();
    env.socket().drop();
    assert.deepEqual(env.clock.delays(), [expected]);
  }
});

test('the backoff starts again from minDelay once a connection was made', () => {
  const env = makeEnv({ random: 0 });
  const chloe = client(env, { minDelay: 100 });
  chloe.connect();
  env.socket().drop();
  env.clock.next();
  env.socket().drop();
  assert.deepEqual(env.clock.delays(), [100]);
  env.clock.next();
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25 });
  env.socket().drop();
  assert.deepEqual(env.clock.delays(), [50]);
});

test('a lost connection is told to onclose once, and the reconnect resumes the last session', () => {
  const env = makeEnv();
  const chloe = client(env);
  let closes = 0;
  chloe.onclose(() => { closes++; });
  chloe.connect();
  assert.equal(env.socket().url, 'ws://chloe.test:8901/ws');
  env.socket().receive({ type: 'connected', session: 'abc/1', heartbeat: 25 });
  assert.equal(chloe.transport, 'websocket');
  assert.equal(chloe.session, 'abc/1');
  env.socket().drop();
  assert.equal(closes, 1);
  assert.equal(chloe.transport, null);
  env.clock.next();
  assert.equal(env.socket().url, 'ws://chloe.test:8901/ws?resume=abc%2F1');
});

test('with reconnect false a lost connection stays lost', () => {
  const env = makeEnv();
  const chloe = client(env, { reconnect: false });
  let closes = 0;
  chloe.onclose(() => { closes++; });
  chloe.connect();
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25 });
  env.socket().drop();
  assert.equal(closes, 1);
  assert.deepEqual(env.clock.delays(), []);
  assert.equal(env.sockets.length, 1);
});

test('connect\'s callback runs once, on the first connection only', () => {
  const env = makeEnv();
  const chloe = client(env);
  let connects = 0;
  chloe.connect(() => { connects++; });
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25 });
  env.socket().drop();
  env.clock.next();
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25 });
  assert.equal(connects, 1);
});

test('options come from the page by default: host, port and scheme of location', () => {
  const env = makeEnv();
  env.globals.location = { protocol: 'https:', hostname: 'example.org', port: '' };
  const chloe = client(env, { path: '/rt' });
  assert.equal(chloe.secure, true);
  assert.equal(chloe.port, 443);
  chloe.connect();
  assert.equal(env.socket().url, 'wss://example.org:443/rt/ws');
});
