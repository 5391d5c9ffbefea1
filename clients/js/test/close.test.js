/* close(): stops the connection, its polls and sends, and any reconnect,
 * for good (until connect() is called again). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, settle } from './fakes.js';

const CONNECTED = { type: 'connected', session: 'S1', heartbeat: 25 };

test('close() closes the WebSocket, without a word to onclose, and nothing reconnects', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals });
  let closes = 0;
  chloe.onclose(() => { closes++; });
  chloe.connect();
  env.socket().receive(CONNECTED);
  chloe.close();
  assert.equal(env.socket().closed, true);
  assert.equal(chloe.transport, null);
  assert.equal(closes, 0);
  assert.deepEqual(env.clock.delays(), []);
  chloe.send('later');                       // kept for a later connect, not written
  assert.equal(env.socket().sent.length, 0);
});

test('close() during a reconnect\'s backoff cancels it', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['websocket'] });
  chloe.connect();
  env.socket().receive(CONNECTED);
  env.socket().drop();
  assert.equal(env.clock.delays().length, 1);
  chloe.close();
  assert.deepEqual(env.clock.delays(), []);
  assert.equal(env.sockets.length, 1);
});

test('close() while connecting stops the watchdog and the fallback', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals });
  chloe.connect();
  chloe.close();
  assert.equal(env.socket().closed, true);
  env.clock.advance(60000);
  assert.equal(env.sources.length, 0);
  assert.equal(env.sockets.length, 1);
});

test('close() aborts the long-poll in flight and polls no more', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals, transports: ['longpoll'] });
  chloe.connect();
  env.requests[0].respond(200, { session: 'S1', cursor: 1, frames: [CONNECTED] });
  await settle();
  assert.equal(env.requests.length, 2);
  chloe.close();
  assert.equal(env.requests[1].init.signal.aborted, true);
  env.requests[1].respond(200, { cursor: 2, frames: [] });
  await settle();
  env.clock.advance(120000);
  assert.equal(env.requests.length, 2);
});

test('close() while getToken is pending opens nothing when the token comes', async () => {
  const env = makeEnv();
  let give;
  const chloe = new Chloe({ globals: env.globals, getToken: () => new Promise((resolve) => { give = resolve; }) });
  chloe.connect();
  chloe.close();
  give('jwt');
  await settle();
  assert.equal(env.sockets.length, 0);
});

test('connect() after close() connects again, resubscribing and resending', () => {
  const env = makeEnv();
  const chloe = new Chloe({ globals: env.globals });
  chloe.subscribe('news');
  chloe.connect();
  env.socket().receive(CONNECTED);
  const ref = chloe.send('x');
  chloe.close();
  chloe.connect();
  assert.equal(env.sockets.length, 2);
  env.socket().receive(CONNECTED);
  assert.deepEqual(env.socket().sent, [
    { type: 'subscribe', channel: 'news' },
    { type: 'send', data: 'x', ref },
  ]);
});
