/* The React hooks, rendered by react-test-renderer in Node: useChloe
 * connects while the component is mounted; useChannel subscribes while
 * it is mounted, shares a channel between components, and always calls
 * the latest onMessage. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createElement as h, useState } from 'react';
import TestRenderer from 'react-test-renderer';
import { ChloeProvider, useChannel, useChloe } from '../src/react.js';
import { Chloe } from '../src/chloe.js';
import { makeEnv, sentOf, settle } from './fakes.js';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const CONNECTED = { type: 'connected', session: 'S1', heartbeat: 25 };

function render(element) {
  let renderer;
  act(() => { renderer = TestRenderer.create(element); });
  return renderer;
}

test('useChloe connects once mounted and closes the client on unmount', () => {
  const env = makeEnv();
  let client = null;
  function App() {
    client = useChloe({ globals: env.globals, transports: ['websocket'] });
    return null;
  }
  const renderer = render(h(App));
  assert.ok(client instanceof Chloe);
  assert.equal(env.sockets.length, 1);
  act(() => { env.socket().receive(CONNECTED); });
  act(() => { renderer.update(h(App)); });
  assert.equal(env.sockets.length, 1);           // the same client across renders
  act(() => { renderer.unmount(); });
  assert.equal(env.socket().closed, true);
  env.clock.advance(60000);
  assert.equal(env.sockets.length, 1);
});

// StrictMode's mount, unmount and mount again is connect(), close(), connect() on one
// client (react-test-renderer does not run effects twice): close.test.js and
// outbox.test.js check that this leaves one connection.

test('useChloe calls the latest render\'s getToken', async () => {
  const env = makeEnv();
  const seen = [];
  function App({ token }) {
    useChloe({ globals: env.globals, transports: ['websocket'], getToken: () => token });
    return null;
  }
  const renderer = render(h(App, { token: 'first' }));
  await act(() => settle());
  act(() => { env.socket().receive(CONNECTED); });
  seen.push(env.socket().sent[0].token);
  act(() => { renderer.update(h(App, { token: 'second' })); });
  await act(async () => { env.socket().receive({ type: 'token_expiring', expires: 2e9 }); await settle(); });
  seen.push(env.socket().sent.at(-1).token);
  assert.deepEqual(seen, ['first', 'second']);
});

test('useChannel subscribes the provider\'s client while mounted and hands messages to the latest onMessage', () => {
  const env = makeEnv();
  const client = new Chloe({ globals: env.globals, transports: ['websocket'] });
  client.connect();
  env.socket().receive(CONNECTED);
  const ws = env.socket();
  function Room({ name, label }) {
    const [last, setLast] = useState(null);
    useChannel(name, (data, meta) => { setLast(label + ':' + data + '@' + meta.id); });
    return last;
  }
  const renderer = render(h(ChloeProvider, { client }, h(Room, { name: 'room', label: 'a' })));
  assert.deepEqual(sentOf(ws, 'subscribe'), [{ type: 'subscribe', channel: 'room' }]);
  act(() => { ws.receive({ type: 'message', channel: 'room', id: '1-1', data: 'hi' }); });
  assert.equal(renderer.toJSON(), 'a:hi@1-1');
  act(() => { renderer.update(h(ChloeProvider, { client }, h(Room, { name: 'room', label: 'b' }))); });
  act(() => { ws.receive({ type: 'message', channel: 'room', id: '1-2', data: 'yo' }); });
  assert.equal(renderer.toJSON(), 'b:yo@1-2');
  assert.equal(sentOf(ws, 'subscribe').length, 1);   // a new callback is no new subscription
  act(() => { renderer.update(h(ChloeProvider, { client }, h(Room, { name: 'other', label: 'b' }))); });
  assert.deepEqual(ws.sent.slice(-2), [{ type: 'unsubscribe', channel: 'room' }, { type: 'subscribe', channel: 'other' }]);
  act(() => { renderer.unmount(); });
  assert.deepEqual(ws.sent.at(-1), { type: 'unsubscribe', channel: 'other' });
  assert.deepEqual(client.channels(), []);
});

test('components naming one channel share its subscription; the last to go unsubscribes', () => {
  const env = makeEnv();
  const client = new Chloe({ globals: env.globals, transports: ['websocket'] });
  client.connect();
  env.socket().receive(CONNECTED);
  const ws = env.socket();
  const got = [];
  function Listener({ id }) {
    useChannel('news', (data) => { got.push(id + data); }, { token: 'tok-' + id });
    return null;
  }
  function App({ ids }) { return h(ChloeProvider, { client }, ids.map((id) => h(Listener, { key: id, id }))); }
  const renderer = render(h(App, { ids: ['a', 'b'] }));
  assert.deepEqual(sentOf(ws, 'subscribe'), [{ type: 'subscribe', channel: 'news', token: 'tok-a' }]);
  act(() => { ws.receive({ type: 'message', channel: 'news', id: '1-1', data: '!' }); });
  assert.deepEqual(got, ['a!', 'b!']);
  act(() => { renderer.update(h(App, { ids: ['b'] })); });
  assert.equal(sentOf(ws, 'unsubscribe').length, 0);
  act(() => { ws.receive({ type: 'message', channel: 'news', id: '1-2', data: '?' }); });
  assert.deepEqual(got, ['a!', 'b!', 'b?']);
  act(() => { renderer.update(h(App, { ids: [] })); });
  assert.deepEqual(sentOf(ws, 'unsubscribe'), [{ type: 'unsubscribe', channel: 'news' }]);
});

test('useChannel with the client in its options, before connecting; a null name subscribes nothing', () => {
  const env = makeEnv();
  let client = null;
  function Feed({ name }) {
    client = useChloe({ globals: env.globals, transports: ['websocket'] });
    useChannel(name, () => {}, { client, since: '5-5' });
    return null;
  }
  const renderer = render(h(Feed, { name: null }));
  assert.deepEqual(client.channels(), []);
  act(() => { renderer.update(h(Feed, { name: 'feed' })); });
  act(() => { env.socket().receive(CONNECTED); });
  assert.deepEqual(sentOf(env.socket(), 'subscribe'), [{ type: 'subscribe', channel: 'feed', since: '5-5' }]);
});

test('a channel the server ended is subscribed again by the next component naming it', () => {
  const env = makeEnv();
  const client = new Chloe({ globals: env.globals, transports: ['websocket'] });
  const ended = [];
  client.onerror((e) => { ended.push(e.code + ':' + e.channel); });
  client.connect();
  env.socket().receive(CONNECTED);
  const ws = env.socket();
  function Listener() { useChannel('news', () => {}); return null; }
  function App({ n }) { return h(ChloeProvider, { client }, Array.from({ length: n }, (_, i) => h(Listener, { key: i }))); }
  const renderer = render(h(App, { n: 1 }));
  act(() => { ws.receive({ type: 'unsubscribed', channel: 'news', reason: 'server' }); });
  assert.deepEqual(ended, ['unsubscribed:news']);      // no onunsubscribed: the client's onerror heard it
  act(() => { renderer.update(h(App, { n: 2 })); });
  assert.equal(sentOf(ws, 'subscribe').length, 2);
  act(() => { renderer.unmount(); });
  assert.deepEqual(sentOf(ws, 'unsubscribe'), [{ type: 'unsubscribe', channel: 'news' }]);
});
