/* After a reconnect every channel is subscribed again from the last id
 * the page saw, and a message seen already is not handed to it twice. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, sentOf } from './fakes.js';

function connected(env, chloe, session = 's1') {
  if (!chloe._timer) chloe.connect(); else env.clock.next();
  env.socket().receive({ type: 'connected', session, heartbeat: 25 });
  return env.socket();
}

test('each channel is subscribed again after a reconnect, from the last id it got', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const got = [];
  chloe.subscribe('news', (data, meta) => { got.push([data, meta.id]); });
  chloe.subscribe('sport', null, { since: '1000-7' });
  let ws = connected(env, chloe);
  assert.deepEqual(sentOf(ws, 'subscribe'), [
    { type: 'subscribe', channel: 'news' },
    { type: 'subscribe', channel: 'sport', since: '1000-7' },
  ]);
  ws.receive({ type: 'message', channel: 'news', id: '1000-1', data: 'a' });
  ws.receive({ type: 'message', channel: 'news', id: '1000-2', data: 'b' });
  ws.drop();
  ws = connected(env, chloe);
  assert.deepEqual(sentOf(ws, 'subscribe'), [
    { type: 'subscribe', channel: 'news', since: '1000-2' },
    { type: 'subscribe', channel: 'sport', since: '1000-7' },
  ]);
  assert.deepEqual(got, [['a', '1000-1'], ['b', '1000-2']]);
});

test('a message replayed after a reconnect (an id seen already) is dropped', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const got = [];
  chloe.subscribe('news', (data) => { got.push(data); });
  let ws = connected(env, chloe);
  ws.receive({ type: 'message', channel: 'news', id: '1-1', data: 'a' });
  ws.receive({ type: 'message', channel: 'news', id: '1-1', data: 'a again' });
  ws.drop();
  ws = connected(env, chloe);
  ws.receive({ type: 'message', channel: 'news', id: '1-1', data: 'a replayed' });
  ws.receive({ type: 'message', channel: 'news', id: '1-2', data: 'b' });
  assert.deepEqual(got, ['a', 'b']);
});

test('messages without a channel go to onmessage; channels without a callback too, with meta.channel', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const got = [];
  chloe.onmessage((data, meta) => { got.push([data, meta.channel, meta.id]); });
  chloe.subscribe('quiet');
  const ws = connected(env, chloe);
  ws.receive({ type: 'message', channel: null, id: null, data: 'to all' });
  ws.receive({ type: 'message', channel: 'quiet', id: '1-1', data: 'q' });
  ws.receive({ type: 'message', channel: 'unknown', id: '1-2', data: 'never' });
  assert.deepEqual(got, [['to all', null, null], ['q', 'quiet', '1-1']]);
});

test('an unsubscribed channel is not subscribed again after a reconnect', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  chloe.subscribe('a');
  chloe.subscribe('b');
  let ws = connected(env, chloe);
  chloe.unsubscribe('a');
  assert.deepEqual(ws.sent.at(-1), { type: 'unsubscribe', channel: 'a' });
  assert.deepEqual(chloe.channels(), ['b']);
  ws.drop();
  ws = connected(env, chloe);
  assert.deepEqual(sentOf(ws, 'subscribe').map((f) => f.channel), ['b']);
});

test('the server\'s own subscriptions are the session\'s: not subscribed again by the client', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const got = [];
  chloe.onmessage((data, meta) => { got.push([data, meta.channel]); });
  let ws = connected(env, chloe);
  ws.receive({ type: 'subscribed', channel: 'alerts', recovered: false, server: true });
  ws.receive({ type: 'message', channel: 'alerts', id: '1-1', data: 'hi' });
  assert.deepEqual(chloe.channels(), ['alerts']);
  ws.drop();
  ws = connected(env, chloe);
  assert.deepEqual(sentOf(ws, 'subscribe'), []);
  assert.deepEqual(got, [['hi', 'alerts']]);
});

test('sends not acknowledged are sent again after a reconnect, with the same ref', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  let ws = connected(env, chloe);
  const acked = chloe.send('one');
  const unanswered = chloe.send({ text: 'two' }, { channel: 'room', ref: 7 });
  ws.receive({ type: 'ack', ref: acked });
  ws.drop();
  ws = connected(env, chloe);
  assert.deepEqual(sentOf(ws, 'send'), [{ type: 'send', data: { text: 'two' }, ref: 7, channel: 'room' }]);
  assert.equal(unanswered, 7);
  assert.match(acked, /^[0-9a-f]{32}$/);
});

test('messages to the user are deduplicated and move the user cursor of the next auth', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals, token: 'jwt' });
  const got = [];
  chloe.onmessage((data, meta) => { got.push([data, meta.user]); });
  let ws = connected(env, chloe);
  ws.receive({ type: 'authenticated', user: 'alice', id: '5-5', expires: 2e9 });
  ws.receive({ type: 'message', channel: null, user: 'alice', id: '5-6', data: 'hi' });
  ws.receive({ type: 'message', channel: null, user: 'alice', id: '5-6', data: 'hi' });
  ws.receive({ type: 'message', channel: null, user: 'alice', id: '5-4', data: 'older' });
  ws.drop();
  ws = connected(env, chloe);
  assert.deepEqual(ws.sent[0], { type: 'auth', token: 'jwt', since: '5-6' });
  assert.deepEqual(got, [['hi', 'alice'], ['older', 'alice']]);
});
