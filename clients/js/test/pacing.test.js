/* Pacing under the session's rate_limit (said in `connected`): frames
 * beyond the allowance wait, in order, instead of being refused; one
 * refused anyway (rate_limited) is written again a second or so later. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Chloe } from '../src/chloe.js';
import { makeEnv, sentOf } from './fakes.js';

function paced(env, rate, burst) {
  const chloe = new Chloe({ transports: ['websocket'], globals: env.globals });
  chloe.connect();
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25, rate_limit: rate, burst });
  return chloe;
}

test('a burst goes out at once up to 90% of the server\'s burst; the rest at 90% of its rate, in order', () => {
  const env = makeEnv();
  const chloe = paced(env, 10, 5);   // allowance 4 at once, then 9 a second
  const ws = env.socket();
  for (let i = 0; i < 10; i++) chloe.send(i);
  assert.deepEqual(sentOf(ws, 'send').map((f) => f.data), [0, 1, 2, 3]);
  assert.deepEqual(env.clock.delays(), [112]);    // ceil(1000 / 9)
  env.clock.advance(112);
  assert.deepEqual(sentOf(ws, 'send').map((f) => f.data), [0, 1, 2, 3, 4]);
  env.clock.advance(1000);
  assert.deepEqual(sentOf(ws, 'send').map((f) => f.data), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual(env.clock.delays(), []);
});

test('a frame written while others wait goes behind them (subscribes too)', () => {
  const env = makeEnv();
  const chloe = paced(env, 1, 1);
  const ws = env.socket();
  chloe.send('a');
  chloe.send('b');
  chloe.subscribe('c');
  assert.deepEqual(ws.sent.map((f) => f.data || f.channel), ['a']);
  env.clock.advance(2300);
  assert.deepEqual(ws.sent.map((f) => f.data || f.channel), ['a', 'b', 'c']);
});

test('without rate_limit in `connected` nothing waits', () => {
  const env = makeEnv();
  const chloe = paced(env, undefined, undefined);
  for (let i = 0; i < 50; i++) chloe.send(i);
  assert.equal(sentOf(env.socket(), 'send').length, 50);
});

test('a new connection starts a new allowance, and frames waiting on the old one go through the outbox', () => {
  const env = makeEnv();
  const chloe = paced(env, 1, 1);
  chloe.send('a');
  chloe.send('b');
  env.socket().drop();
  env.clock.next();
  env.socket().receive({ type: 'connected', session: 's1', heartbeat: 25, rate_limit: 100, burst: 100 });
  assert.deepEqual(sentOf(env.socket(), 'send').map((f) => f.data), ['a', 'b']);
});

test('a send refused with rate_limited is written again 1 to 1.5 s later; an unknown refusal reaches onerror', () => {
  const env = makeEnv({ random: 0.5 });
  const chloe = paced(env);
  const errors = [];
  chloe.onerror((e) => { errors.push(e.code); });
  const ws = env.socket();
  const ref = chloe.send('x');
  ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', ref });
  assert.deepEqual(env.clock.delays(), [1250]);
  env.clock.advance(1250);
  assert.deepEqual(sentOf(ws, 'send').map((f) => f.ref), [ref, ref]);
  ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', ref: 'not ours' });
  assert.deepEqual(errors, ['rate_limited']);
});

test('a subscribe refused with rate_limited is written again, unless the page unsubscribed meanwhile', () => {
  const env = makeEnv({ random: 0 });
  const chloe = paced(env);
  const ws = env.socket();
  chloe.subscribe('a');
  chloe.subscribe('b');
  ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', channel: 'a' });
  ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', channel: 'b' });
  chloe.unsubscribe('b');
  env.clock.advance(1000);
  assert.deepEqual(sentOf(ws, 'subscribe').map((f) => f.channel), ['a', 'b', 'a']);
});
