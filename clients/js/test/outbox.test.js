/* The outbox: sends wait for a connection, leave it when acknowledged or
 * accepted by a durable spool, and with outbox 'persistent' outlive the
 * page in IndexedDB (or localStorage where there is none). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, makeIndexedDB, makeLocalStorage, sentOf, settle } from './fakes.js';

function open(env, session = 's1') {
  env.socket().receive({ type: 'connected', session, heartbeat: 25 });
  return env.socket();
}

test('a send made before connecting goes out once connected; its ack calls back with no error', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const acks = [];
  const ref = chloe.send('early', { ack: (err, frame) => { acks.push([err, frame]); } });
  chloe.connect();
  const ws = open(env);
  assert.deepEqual(ws.sent, [{ type: 'send', data: 'early', ref }]);
  ws.receive({ type: 'ack', ref });
  ws.receive({ type: 'ack', ref });   // a repeat: the send is forgotten already
  assert.deepEqual(acks, [[null, { type: 'ack', ref }]]);
});

test('a refused send calls its ack with the error frame, and leaves the outbox', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const acks = [], errors = [];
  chloe.onerror((e) => { errors.push(e); });
  chloe.connect();
  let ws = open(env);
  const ref = chloe.send('x', { ack: (err) => { acks.push(err.code); } });
  ws.receive({ type: 'error', code: 'upstream_rejected', message: 'no', ref });
  assert.deepEqual(acks, ['upstream_rejected']);
  assert.deepEqual(errors, []);   // the ack had it
  ws.drop();
  env.clock.next();
  ws = open(env);
  assert.deepEqual(sentOf(ws, 'send'), []);
});

test('an accepted send leaves the outbox (not sent again), and its ack still comes', () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  const events = [];
  chloe.connect();
  let ws = open(env);
  const ref = chloe.send('durable', {
    accepted: () => { events.push('accepted'); },
    ack: (err) => { events.push(err ? err.code : 'ack'); },
  });
  ws.receive({ type: 'accepted', ref });
  ws.receive({ type: 'accepted', ref });   // the same send, repeated: ignored
  ws.drop();
  env.clock.next();
  ws = open(env);
  assert.deepEqual(sentOf(ws, 'send'), []);
  ws.receive({ type: 'ack', ref });
  assert.deepEqual(events, ['accepted', 'ack']);
});

for (const storage of ['indexeddb', 'localstorage']) {
  test(`outbox 'persistent' (${storage}): a reloaded page sends the unanswered sends first, with their refs`, async () => {
    const store = storage === 'indexeddb' ? { indexedDB: makeIndexedDB() } : { localStorage: makeLocalStorage() };
    const before = makeEnv({ storage, ...store });
    const page = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: before.globals });
    page.connect();
    await settle();
    let ws = open(before);
    const kept = page.send({ n: 1 });
    const acked = page.send({ n: 2 });
    const accepted = page.send({ n: 3 });
    ws.receive({ type: 'ack', ref: acked });
    ws.receive({ type: 'accepted', ref: accepted });
    await settle();
    page.close();

    // The reload: a new client on the same storage, with a send of its own before connecting.
    const after = makeEnv({ storage, ...store });
    const reloaded = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: after.globals });
    const fresh = reloaded.send('new');
    reloaded.connect();
    if (storage === 'indexeddb') assert.equal(after.sockets.length, 0);   // the outbox is read first
    await settle();
    ws = open(after, 's2');
    assert.deepEqual(sentOf(ws, 'send').map((f) => [f.ref, f.data]), [[kept, { n: 1 }], [fresh, 'new']]);
    ws.receive({ type: 'ack', ref: kept });
    ws.receive({ type: 'ack', ref: fresh });
    await settle();

    const third = makeEnv({ storage, ...store });
    const again = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: third.globals });
    again.connect();
    await settle();
    assert.deepEqual(sentOf(open(third, 's3'), 'send'), []);
  });
}

test('outbox \'persistent\' keeps sends apart per server (host and port)', async () => {
  const localStorage = makeLocalStorage();
  const env = makeEnv({ storage: 'localstorage', localStorage });
  const one = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: env.globals, port: 1 });
  one.send('for one');
  const other = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: env.globals, port: 2 });
  other.connect();
  await settle();
  assert.deepEqual(sentOf(open(env), 'send'), []);
  assert.deepEqual([...localStorage.items.keys()], ['chloe-outbox:chloe.test:1:']);
});

test('connect again while the persistent outbox is read opens one connection, not two', async () => {
  const env = makeEnv({ storage: 'indexeddb' });
  const chloe = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: env.globals });
  chloe.connect();
  chloe.close();
  chloe.connect();           // as React's StrictMode does: mount, unmount, mount
  await settle();
  assert.equal(env.sockets.length, 1);
  assert.equal(open(env).closed, false);
});

test('without storage at all, outbox \'persistent\' still works in memory', async () => {
  const env = makeEnv();
  const chloe = new Chloe({ transports: ['websocket'], outbox: 'persistent', globals: env.globals });
  const ref = chloe.send('x');
  chloe.connect();
  await settle();
  assert.deepEqual(sentOf(open(env), 'send'), [{ type: 'send', data: 'x', ref }]);
});
