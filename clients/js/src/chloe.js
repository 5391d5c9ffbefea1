/* chloe.js: the browser client of Chloe, with no dependencies.
 *
 * This ES module is the one source of both builds (clients/js/build.mjs,
 * esbuild): the npm package's ES module (`import {Chloe} from
 * 'chloe-client'`) and the script-tag build that chloed serves at
 * /chloe.js (chloed/static/chloe.js, checked in; it sets window.Chloe).
 * Edit this file, then `npm run build` in clients/js.
 *
 *   var chloe = new Chloe({host: 'localhost', port: 8901});
 *   chloe.onmessage(function (data, meta) { ... });        // meta: {channel, id}
 *   chloe.onsubscribed(function (frame) { ... });           // {channel, recovered, members?}
 *   chloe.onpresence(function (frame) { ... });             // {channel, event: 'join'|'leave', member}
 *   chloe.connect(function () {
 *     chloe.send('hi mom');                 // or send(data, {channel, ack: fn, accepted: fn})
 *     chloe.subscribe('pumpkin', function (data, meta) { ... }, {token: t});
 *   });
 *
 * Options: host, port, secure, path, transports (default
 * ['websocket', 'sse', 'longpoll', 'jsonp']), reconnect (default true),
 * minDelay / maxDelay (reconnect backoff, ms), connectTimeout (ms to wait
 * for a transport's `connected` frame before trying the next one, default
 * 10000), pollTimeout (ms after which a long-poll or JSONP request that has
 * not answered is given up and repeated, default 65000: keep it above the
 * server's longpoll_timeout), globals (the object whose WebSocket,
 * EventSource, fetch, AbortController, setTimeout/clearTimeout, Date,
 * Math, crypto, location, document, add/removeEventListener, indexedDB,
 * IDBKeyRange, localStorage and console the client uses, default window:
 * for tests and for runtimes that have these elsewhere).
 *
 * Transports are tried in the order of `transports`, falling back when one
 * cannot connect. JSONP starts once the page has loaded: its <script> polls
 * would otherwise hold the page's `load` event for ever. After a connection
 * is lost the client reconnects by itself (exponential backoff with
 * jitter), resubscribes every channel and resumes each from the last
 * message id it saw, so nothing published in between is missed; a message
 * seen already is not handed to the page again.
 * Sends not acknowledged yet are sent again with the same ref; with
 * `outbox: 'persistent'` they are also kept in IndexedDB (localStorage
 * where there is none) and sent again by the page after a reload.
 *
 * send(data, {ack, accepted}): ack(err, frame) once the app took it (err
 * null) or it failed (err the `error` frame: upstream_rejected,
 * upstream_failed, ...). When chloed relays through a durable spool
 * (relay_spool "disk" or "redis") it answers `accepted` first, once the
 * message is on stable storage: accepted(frame) is called then, and the
 * send leaves the outbox (it is not sent again on a reconnect nor after a
 * reload: the spool delivers it). Its ack still comes later, on the same
 * connection; after a reconnect it may never come. With the memory spool
 * there is no `accepted`, only the ack.
 *
 * A reconnect asks the server to resume the previous session
 * (`?resume=<session id>`): with "resume" in chloed's events the app then
 * hears `resume` (naming the `previous` session) instead of `disconnect`
 * and `connect`.
 *
 * Users: with `token` (a connection token, a JWT with `sub`) or `getToken`
 * (a function returning a token, or a Promise of one) the client
 * authenticates every connection it opens: getToken() is called before
 * each one (so a reconnect never presents a stale token), the token goes
 * in an `auth` frame (WebSocket) or in `?token=` (SSE, long-poll, JSONP),
 * with the user cursor `since` so that messages to the user sent while it
 * was away are replayed. Then:
 *
 *   chloe.user;                                        // the token's sub, once authenticated
 *   chloe.onauthenticated(function (user, frame) {});  // each connection, {user, id, expires}
 *   chloe.ondisconnect(function (reason, reconnect) {}); // the app ended the connection
 *
 * connect's callback then runs once authenticated. Messages to the user
 * (`/send user=`) reach onmessage with meta.user. Before the token runs
 * out the server says `token_expiring` and the client sends getToken()'s
 * new token (`refresh`), on the same connection. A channel token can be
 * renewed the same way: subscribe(name, cb, {getToken: fn(channel)}), also
 * called before each resubscribe after a reconnect; a channel whose token
 * ran out without one, or that the server unsubscribed, is dropped and
 * reported to the subscription's onunsubscribed(reason), or else to
 * onerror ({code: 'unsubscribed', reason, channel}). Channels the server
 * subscribed this session to (`subscribed` with `server: true`) reach
 * onmessage with meta.channel. A `disconnect` with `reconnect: false` (a
 * ban) stops the client for good: ondisconnect(reason, false), onerror
 * ({code: 'disconnected', reason}), onclose. Refusals of the token
 * (token_invalid, token_revoked, token_required, too_many_connections) go
 * to onerror and the client tries again with backoff, a fresh token first;
 * token_expired is tried again at once with a fresh one.
 */
'use strict';

// What the client runs on unless `globals` says otherwise: the page (or a worker's global).
var root = typeof window !== 'undefined' ? window : globalThis;

var ALL_TRANSPORTS = ['websocket', 'sse', 'longpoll', 'jsonp'];
var RECENT_IDS = 1024;            // message ids remembered per channel, to drop repeats
var POST_BATCH_CHARS = 60000;     // one POST /session body (the server takes 4 x max_message_bytes)
var JSONP_BATCH_CHARS = 8000;     // URL-encoded frames of one /jsonp/send (request line limits)
var JSONP_FRAME_CHARS = 14000;    // beyond it a frame cannot go over JSONP at all
var POLL_RETRIES = 4;             // a failed poll or send is repeated this often, then the connection is lost
var MAX_AWAITING_ACK = 10000;     // accepted sends whose ack is still awaited (one may never come)
// Errors refusing the connection's token: the session ends after them,
// and the next try is a new session with a fresh token, not the next transport.
var AUTH_ERRORS = {token_required: 1, token_invalid: 1, token_expired: 1, token_revoked: 1,
                   too_many_connections: 1};

function noop() {}

function randomRef(g) {
  var bytes = new Uint8Array(16), out = '';
  (g.crypto || g.msCrypto).getRandomValues(bytes);
  for (var i = 0; i < bytes.length; i++) out += (bytes[i] + 256).toString(16).slice(1);
  return out;
}

function has(object, key) { return Object.prototype.hasOwnProperty.call(object, key); }

function present(value) { return value !== undefined && value !== null; }

function report(g, e) { if (g.console) g.console.error(e); }

/* Call `fn` (a getToken), which returns a token or a Promise of one;
 * done(null, token) or done(error) once, on a later turn either way. */
function obtain(fn, self, args, done) {
  var result;
  try { result = fn.apply(self, args); } catch (e) { result = Promise.reject(e); }
  Promise.resolve(result).then(function (token) {
    if (typeof token !== 'string' || !token) throw new Error('getToken gave no token');
    return token;
  }).then(function (token) {
    try { done(null, token); } catch (e) { report(self._g, e); }
  }, function (e) {
    try { done(e || new Error('getToken failed')); } catch (e2) { report(self._g, e2); }
  });
}

/* Whether message id `a` is after `b`. Ids are "<ms>-<seq>", ordered by
 * seq within one server (or cluster); a later ms with a lower seq is a
 * restarted server's. Anything else counts as newer. */
function after(a, b) {
  var x = /^(\d+)-(\d+)$/.exec(a), y = /^(\d+)-(\d+)$/.exec(b);
  return !x || !y || +x[2] > +y[2] || +x[1] > +y[1];
}

function recent() { return {seen: Object.create(null), ring: new Array(RECENT_IDS), pos: 0}; }

function Chloe(options) {
  options = options || {};
  var g = this._g = options.globals || root;
  var loc = g.location || {};
  this.secure = options.secure !== undefined ? !!options.secure : loc.protocol === 'https:';
  this.host = options.host || loc.hostname || 'localhost';
  this.port = options.port || (loc.port ? +loc.port : (this.secure ? 443 : 80));
  this.path = options.path || '';
  this.transports = (options.transports || ALL_TRANSPORTS).filter(function (t) {
    return ALL_TRANSPORTS.indexOf(t) >= 0;
  });
  this.reconnect = options.reconnect !== false;
  this.backoff = {min: options.minDelay || 250, max: options.maxDelay || 10000};
  this.connectTimeout = options.connectTimeout || 10000;
  this.pollTimeout = options.pollTimeout || 65000;
  this.transport = null;
  this.session = null;
  this.user = null;           // the connection token's sub, once authenticated
  this._token = options.token || null;
  this._getToken = typeof options.getToken === 'function' ? options.getToken : null;
  this._connToken = null;     // the token of the connection being opened, or open
  this._userSince = null;     // the user cursor: `since` of the next auth
  this._userSeen = recent();  // ids of user messages handed to the page lately
  this._epoch = 0;            // a token being fetched for a connection: stale once this moves
  this._expiredRetry = false; // a connection just ended with token_expired and was tried again at once
  this._channels = {};        // name -> {cb, token, getToken, onunsubscribed, server, fresh, lastId, seen, ring, pos}
  this._pending = new Map();  // ref -> {frame, ack, accepted}, in the order sent
  this._awaiting = new Map(); // ref -> ack callback of a send the server `accepted`, not acked yet
  this._store = options.outbox === 'persistent' ? openStore(g, this.host + ':' + this.port) : null;
  this._loaded = false;        // the persistent outbox has been read
  this._loading = false;       // ... or is being read
  this._messageHandlers = [];
  this._closeHandlers = [];
  this._errorHandlers = [];
  this._subscribedHandlers = [];
  this._presenceHandlers = [];
  this._authenticatedHandlers = [];
  this._disconnectHandlers = [];
  this._pace = null;          // the server's rate limit, kept under: {rate, burst, tokens, stamp, queue, timer}
  this._conn = null;
  this._timer = null;         // the pending reconnect
  this._awaitingLoad = null;  // the `load` listener of a transport opened once the page has loaded
  this._attempt = 0;
  this._closedByUser = false;
  this._connectedOnce = false;
}

Chloe.prototype._base = function (scheme) {
  return scheme + '://' + this.host + ':' + this.port + this.path;
};

Chloe.prototype._httpBase = function () { return this._base(this.secure ? 'https' : 'http'); };

/* The query asking the server to resume the session of the previous
 * connection, or '' before the first one. Taken when a connection
 * opens: `session` changes once it is connected. */
Chloe.prototype._resumeQuery = function () {
  return this.session ? 'resume=' + encodeURIComponent(this.session) : '';
};

/* The query opening an SSE, long-poll or JSONP session: the resume, and
 * the connection token with the user cursor (a WebSocket sends them in
 * its `auth` frame instead). Channels are never in it: each is
 * subscribed by frame with its own token. */
Chloe.prototype._openQuery = function () {
  var query = this._resumeQuery();
  if (this._connToken) {
    query += (query ? '&' : '') + 'token=' + encodeURIComponent(this._connToken);
    if (this._userSince) query += '&user_since=' + encodeURIComponent(this._userSince);
  }
  return query;
};

Chloe.prototype._authFrame = function () {
  var frame = {type: 'auth', token: this._connToken};
  if (this._userSince) frame.since = this._userSince;
  return frame;
};

Chloe.prototype.onmessage = function (fn) { this._messageHandlers.push(fn); return this; };
Chloe.prototype.onclose = function (fn) { this._closeHandlers.push(fn); return this; };
Chloe.prototype.onerror = function (fn) { this._errorHandlers.push(fn); return this; };
/* Every `subscribed` frame as it comes, also after each resubscribe on a
 * reconnect (on presence- channels it carries the `members` then). */
Chloe.prototype.onsubscribed = function (fn) { this._subscribedHandlers.push(fn); return this; };
/* Every `presence` frame: {type, channel, event: 'join'|'leave', member}. */
Chloe.prototype.onpresence = function (fn) { this._presenceHandlers.push(fn); return this; };
/* With a connection token: fn(user, frame) on every `authenticated`,
 * once per connection. */
Chloe.prototype.onauthenticated = function (fn) { this._authenticatedHandlers.push(fn); return this; };
/* The app ended the connection (POST /disconnect): fn(reason, reconnect);
 * reconnect false means the client has stopped for good. */
Chloe.prototype.ondisconnect = function (fn) { this._disconnectHandlers.push(fn); return this; };

Chloe.prototype.connect = function (callback) {
  var self = this;
  if (callback) this._onconnect = callback;
  this._closedByUser = false;
  this._stop();
  this._attempt = 0;
  this._expiredRetry = false;
  if (!this._store || this._loaded) { this._begin(); return this; }
  if (this._loading) return this;  // the connection begins once the outbox is read
  this._loading = true;
  // Sends an earlier page left unanswered go first, with their refs.
  this._store.load(function (rows) {
    self._loading = false;
    var older = new Map();
    for (var i = 0; i < rows.length; i++) older.set(rows[i].ref, {frame: rows[i].frame});
    self._pending.forEach(function (value, ref) { older.set(ref, value); });
    self._pending = older;
    self._loaded = true;
    if (!self._closedByUser) self._begin();
  });
  return this;
};

/* A new connection: its token first when there is one (getToken() for
 * each, a failure reported and tried again with backoff), then the
 * transports in order. */
Chloe.prototype._begin = function () {
  var self = this, epoch = ++this._epoch;
  if (this._closedByUser) return;
  if (!this._getToken) { this._connToken = this._token; this._open(0); return; }
  obtain(this._getToken, this, [], function (err, token) {
    if (epoch !== self._epoch || self._closedByUser) return;
    if (err) {
      self._emit(self._errorHandlers, [tokenUnavailable(err)]);
      if (self.reconnect) self._retry(); else self._emit(self._closeHandlers, []);
      return;
    }
    self._connToken = token;
    self._open(0);
  });
};

function tokenUnavailable(err, channel) {
  var error = {type: 'error', code: 'token_unavailable',
               message: 'getToken failed: ' + (err && err.message ? err.message : String(err))};
  if (channel) error.channel = channel;
  return error;
}

/* Stop everything: the connection, its polls and sends, any reconnect. */
Chloe.prototype.close = function () {
  this._closedByUser = true;
  this._stop();
  this.transport = null;
};

Chloe.prototype._stop = function () {
  this._epoch++;
  if (this._timer !== null) { this._g.clearTimeout(this._timer); this._timer = null; }
  if (this._awaitingLoad) { this._g.removeEventListener('load', this._awaitingLoad); this._awaitingLoad = null; }
  var conn = this._conn;
  this._conn = null;
  if (conn) { conn.ready = false; conn.close(); }
};

Chloe.prototype.send = function (data, options) {
  options = options || {};
  var ref = options.ref !== undefined ? options.ref : randomRef(this._g);
  var frame = {type: 'send', data: data, ref: ref};
  if (options.channel) frame.channel = options.channel;
  this._pending.set(ref, {frame: frame, ack: options.ack, accepted: options.accepted});
  if (this._store) this._store.put(ref, frame);
  this._write(frame);
  return ref;
};

/* options: token (a channel token), since (the id of the last message
 * the page has: only later ones come), getToken(channel) (a function
 * returning one, or a Promise of one: called when there is no token yet,
 * before each resubscribe after a reconnect, and on `token_expiring`),
 * onunsubscribed(reason) (the server ended the subscription). */
Chloe.prototype.subscribe = function (channel, callback, options) {
  options = options || {};
  var sub = this._channels[channel] || newSubscription();
  sub.cb = callback;
  sub.token = options.token;
  sub.getToken = typeof options.getToken === 'function' ? options.getToken : null;
  sub.onunsubscribed = typeof options.onunsubscribed === 'function' ? options.onunsubscribed : null;
  sub.server = false;
  sub.fresh = !!sub.token;
  // The id of the last message the page has already (an app's history
  // snapshot: GET /channels/NAME/history): only what follows it comes.
  if (options.since && !sub.lastId) sub.lastId = String(options.since);
  this._channels[channel] = sub;
  if (this._conn && this._conn.ready) this._subscribeNow(channel, sub);
};

function newSubscription() {
  var sub = recent();
  sub.lastId = null;
  return sub;
}

/* Subscribe `channel`, with a fresh token from its getToken when it has
 * one and its token was used already. */
Chloe.prototype._subscribeNow = function (channel, sub) {
  var self = this;
  if (!sub.getToken || sub.fresh) { this._write(this._subscribeFrame(channel)); return; }
  obtain(sub.getToken, this, [channel], function (err, token) {
    if (self._channels[channel] !== sub) return;
    if (err) { self._ended(channel, sub, 'token_unavailable'); return; }
    sub.token = token;
    sub.fresh = true;
    self._write(self._subscribeFrame(channel));
  });
};

/* The server no longer has `channel` (or it cannot be subscribed again):
 * dropped here and reported, to its onunsubscribed or else to onerror.
 * A subscription of the server's own goes silently. */
Chloe.prototype._ended = function (channel, sub, reason) {
  delete this._channels[channel];
  if (sub.server) return;
  if (sub.onunsubscribed) {
    try { sub.onunsubscribed.call(this, reason); } catch (e) { report(this._g, e); }
    return;
  }
  this._emit(this._errorHandlers, [{type: 'error', code: 'unsubscribed', reason: reason, channel: channel,
                                    message: 'the subscription to ' + channel + ' ended (' + reason + ')'}]);
};

Chloe.prototype.unsubscribe = function (channel) {
  delete this._channels[channel];
  this._write({type: 'unsubscribe', channel: channel});
};

/* The channels this client holds (its own, and those the server
 * subscribed it to): subscribed again after each reconnect. */
Chloe.prototype.channels = function () {
  var names = [];
  for (var channel in this._channels) if (has(this._channels, channel)) names.push(channel);
  return names;
};

Chloe.prototype._subscribeFrame = function (channel) {
  var sub = this._channels[channel], frame = {type: 'subscribe', channel: channel};
  if (sub.token) frame.token = sub.token;
  if (sub.lastId) frame.since = sub.lastId;
  sub.fresh = false;
  return frame;
};

Chloe.prototype._write = function (frame) {
  if (!this._conn || !this._conn.ready) return;
  var pace = this._pace;
  if (pace && (pace.queue.length || !this._take(pace))) {
    pace.queue.push(frame);
    this._drainLater(pace);
    return;
  }
  this._conn.send(frame);
};

/* The server refuses frames beyond its rate limit (`rate_limited`); it
 * says the rate and the burst in `connected`, and the client stays under
 * both (by a margin for clock drift): frames wait here, in order, instead
 * of being refused. A new connection starts a new allowance. */
Chloe.prototype._startPacing = function (connected) {
  if (this._pace && this._pace.timer) this._g.clearTimeout(this._pace.timer);
  this._pace = null;
  if (!(connected.rate_limit > 0)) return;
  var burst = Math.max(1, Math.floor((connected.burst || connected.rate_limit) * 0.9));
  this._pace = {rate: connected.rate_limit * 0.9, burst: burst, tokens: burst,
                stamp: this._g.Date.now(), queue: [], timer: null};
};

Chloe.prototype._take = function (pace) {
  var now = this._g.Date.now();
  pace.tokens = Math.min(pace.burst, pace.tokens + (now - pace.stamp) * pace.rate / 1000);
  pace.stamp = now;
  if (pace.tokens < 1) return false;
  pace.tokens -= 1;
  return true;
};

Chloe.prototype._drainLater = function (pace) {
  var self = this;
  if (pace.timer) return;
  pace.timer = this._g.setTimeout(function () {
    pace.timer = null;
    if (self._pace !== pace || !self._conn || !self._conn.ready) return;
    while (pace.queue.length && self._take(pace)) self._conn.send(pace.queue.shift());
    if (pace.queue.length) self._drainLater(pace);
  }, Math.ceil(1000 / pace.rate));
};

Chloe.prototype._emit = function (handlers, args) {
  for (var i = 0; i < handlers.length; i++) {
    try { handlers[i].apply(this, args); } catch (e) { report(this._g, e); }
  }
};

/* Open the transport at `index`; on failure before `connected` (or no
 * `connected` within connectTimeout), the next one. */
Chloe.prototype._open = function (index) {
  var self = this;
  this._timer = null;
  if (this._closedByUser) return;
  if (index >= this.transports.length) {
    if (this.reconnect) this._retry();
    else this._emit(this._closeHandlers, []);
    return;
  }
  var name = this.transports[index];
  var factory = Chloe.transports[name], conn = null;
  if (factory && factory.afterLoad && !pageLoaded(this._g)) { this._openAfterLoad(index); return; }
  try { conn = factory ? factory(this) : null; } catch (e) { conn = null; }
  if (!conn) { this._open(index + 1); return; }
  var opened = false;
  this._conn = conn;
  var watchdog = this._g.setTimeout(function () {
    if (opened || self._conn !== conn) return;
    conn.close();
    down();
  }, this.connectTimeout);
  function down() {
    self._g.clearTimeout(watchdog);
    if (self._conn !== conn) return;
    self._conn = null;
    conn.ready = false;
    // A refused token is no reason to try another transport: the next
    // try is a new connection, with a fresh token.
    if (!opened && !conn.authError) { self._open(index + 1); return; }
    self.transport = null;
    if (opened || !self.reconnect) self._emit(self._closeHandlers, []);
    if (!self._closedByUser && self.reconnect) self._retry(conn.authError === 'token_expired');
  }
  conn.onclose = down;
  conn.onframe = function (frame) {
    if (self._conn !== conn || !frame || typeof frame !== 'object') return;
    if (frame.type === 'connected' && !opened) {
      opened = true;
      self._g.clearTimeout(watchdog);
      conn.ready = true;
      // With a token, the backoff starts again once it is taken.
      if (!self._connToken) self._attempt = 0;
      self.transport = name;
      self.session = frame.session;
      self._startPacing(frame);
      if (self._connToken && factory.authFrame) self._write(self._authFrame());
      self._resume();
      if (!self._connToken) self._connectedFirst();
      return;
    }
    self._frame(frame);
  };
};

/* connect's callback, on the first connection (authenticated, with a token). */
Chloe.prototype._connectedFirst = function () {
  if (this._connectedOnce) return;
  this._connectedOnce = true;
  if (this._onconnect) {
    try { this._onconnect.call(this); } catch (e) { report(this._g, e); }
  }
};

/* Whether the page has had its `load` event (or there is no page). */
function pageLoaded(g) {
  var doc = g.document;
  return !doc || !g.addEventListener || doc.readyState === 'complete';
}

/* Open the transport at `index` once the page has loaded, for a transport
 * that would hold `load` (a <script> being fetched delays it). Its
 * connectTimeout starts then; what the page subscribes and sends
 * meanwhile goes out once it is connected. */
Chloe.prototype._openAfterLoad = function (index) {
  var self = this;
  function onload() {
    self._g.removeEventListener('load', onload);
    if (self._awaitingLoad !== onload) return;
    self._awaitingLoad = null;
    self._open(index);
  }
  this._awaitingLoad = onload;
  this._g.addEventListener('load', onload);
};

/* After (re)connecting: every channel again, from its last id; every
 * send that has no answer yet, again, with the same ref. */
Chloe.prototype._resume = function () {
  var channel, sub;
  for (channel in this._channels) {
    if (!has(this._channels, channel)) continue;
    sub = this._channels[channel];
    // The server's own subscriptions were the last session's: a new one
    // gets those that persist from the server again.
    if (sub.server) delete this._channels[channel];
    else this._subscribeNow(channel, sub);
  }
  var self = this;
  this._pending.forEach(function (value) { self._write(value.frame); });
};

/* The next connection after a backoff; `soon`: a connection whose token
 * ran out is tried again at once with a fresh one (once in a row). */
Chloe.prototype._retry = function (soon) {
  var self = this, delay = 0;
  if (this._closedByUser || !this.reconnect || this._timer !== null) return;
  if (soon && this._getToken && !this._expiredRetry) this._expiredRetry = true;
  else {
    var ceiling = Math.min(this.backoff.max, this.backoff.min * Math.pow(2, this._attempt++));
    delay = ceiling / 2 + this._g.Math.random() * ceiling / 2;
  }
  this._timer = this._g.setTimeout(function () { self._timer = null; self._begin(); }, delay);
};

/* Whether `id` was seen on `sub` lately; remembers it. A subscribe that
 * reached the server twice (a POST repeated after a network error whose
 * first try did arrive) replays messages the page has had already. */
function seenBefore(sub, id) {
  if (sub.seen[id]) return true;
  var old = sub.ring[sub.pos];
  if (old !== undefined) delete sub.seen[old];
  sub.ring[sub.pos] = id;
  sub.pos = (sub.pos + 1) % RECENT_IDS;
  sub.seen[id] = true;
  return false;
}

/* A frame refused with `rate_limited`: a send still pending, or a
 * subscribe to a channel still wanted, is written again a second later. */
Chloe.prototype._refused = function (frame) {
  var self = this, again = null;
  if (frame.ref !== undefined && frame.ref !== null && this._pending.has(frame.ref)) {
    again = this._pending.get(frame.ref).frame;
  } else if (frame.channel && this._channels[frame.channel]) {
    again = this._subscribeFrame(frame.channel);
  }
  if (!again) { this._emit(this._errorHandlers, [frame]); return; }
  this._g.setTimeout(function () {
    if (again.type === 'send' ? self._pending.has(again.ref) : self._channels[again.channel]) self._write(again);
  }, 1000 + this._g.Math.random() * 500);
};

/* A send was answered (ack or error), or accepted by a durable spool:
 * it leaves the outbox. */
Chloe.prototype._answered = function (ref) {
  var pending = this._pending.get(ref);
  this._pending['delete'](ref);
  if (pending && this._store) this._store.remove(ref);
  return pending;
};

/* The ack callback of a send still pending, or accepted earlier and
 * awaiting its answer; either way it is forgotten here. */
Chloe.prototype._settled = function (ref) {
  if (ref === undefined || ref === null) return undefined;
  if (this._pending.has(ref)) return this._answered(ref).ack || noop;
  var ack = this._awaiting.get(ref);
  if (ack) this._awaiting['delete'](ref);
  return ack;
};

/* `accepted`: the spool has the send, so the outbox lets it go (it must
 * not be sent again: the spool delivers it); its ack is awaited apart.
 * A second `accepted` (a send repeated before the first came) finds it
 * gone from the outbox and is ignored. */
Chloe.prototype._accepted = function (frame) {
  if (frame.ref === undefined || frame.ref === null || !this._pending.has(frame.ref)) return;
  var pending = this._answered(frame.ref);
  if (pending.ack) {
    this._awaiting.set(frame.ref, pending.ack);
    // After a reconnect an ack may never come: the oldest go first.
    while (this._awaiting.size > MAX_AWAITING_ACK) this._awaiting['delete'](this._awaiting.keys().next().value);
  }
  if (pending.accepted) {
    try { pending.accepted.call(this, frame); } catch (e) { report(this._g, e); }
  }
};

/* The persistent outbox (`outbox: 'persistent'`): unanswered sends kept
 * in IndexedDB, or localStorage where there is none, so that a reloaded
 * page sends them again, with the same refs, once it connects. A send is
 * durable once its IndexedDB transaction has committed (a few ms). */
function openStore(g, server) {
  var prefix = 'chloe-outbox:' + server + ':', seq = 0;
  if (g.indexedDB && g.IDBKeyRange) {
    var ready = new Promise(function (resolve) {
      var request;
      try { request = g.indexedDB.open('chloe-outbox', 1); } catch (e) { resolve(null); return; }
      request.onupgradeneeded = function () {
        request.result.createObjectStore('sends', {keyPath: 'key'});
      };
      request.onsuccess = function () { resolve(request.result); };
      request.onerror = function () { resolve(null); };
    });
    var write = function (work) {
      ready.then(function (db) { if (db) work(db.transaction('sends', 'readwrite').objectStore('sends')); });
    };
    return {
      load: function (done) {
        ready.then(function (db) {
          if (!db) { done([]); return; }
          var range = g.IDBKeyRange.bound(prefix, prefix + '\uffff');
          var request = db.transaction('sends', 'readonly').objectStore('sends').getAll(range);
          request.onsuccess = function () {
            var rows = request.result.sort(function (a, b) { return a.order - b.order; });
            seq = rows.length ? rows[rows.length - 1].order : 0;
            done(rows);
          };
          request.onerror = function () { done([]); };
        });
      },
      put: function (ref, frame) {
        seq = Math.max(seq + 1, g.Date.now() * 1000);
        var row = {key: prefix + JSON.stringify(ref), ref: ref, frame: frame, order: seq};
        write(function (store) { store.put(row); });
      },
      remove: function (ref) {
        write(function (store) { store['delete'](prefix + JSON.stringify(ref)); });
      }
    };
  }
  var storage = null;
  try { storage = g.localStorage; } catch (e) { storage = null; }
  function read() {
    try { return JSON.parse(storage.getItem(prefix) || '[]'); } catch (e) { return []; }
  }
  function save(rows) { try { storage.setItem(prefix, JSON.stringify(rows)); } catch (e) { /* full */ } }
  return {
    load: function (done) { done(storage ? read() : []); },
    put: function (ref, frame) {
      if (storage) { var rows = read(); rows.push({ref: ref, frame: frame}); save(rows); }
    },
    remove: function (ref) {
      if (storage) save(read().filter(function (row) { return row.ref !== ref; }));
    }
  };
}

Chloe.prototype._frame = function (frame) {
  var ack;
  switch (frame.type) {
    case 'message':
      var meta = {channel: frame.channel, id: frame.id};
      if (frame.channel) {
        var sub = this._channels[frame.channel];
        if (!sub) return;
        if (frame.id !== undefined && frame.id !== null) {
          if (seenBefore(sub, String(frame.id))) return;
          sub.lastId = frame.id;
        }
        if (sub.cb) { try { sub.cb.call(this, frame.data, meta); } catch (e) { report(this._g, e); } }
        else this._emit(this._messageHandlers, [frame.data, meta]);  // subscribed without a callback, or by the server
        return;
      }
      if (present(frame.user)) {
        // To the user (every tab of it): replayed after a reconnect from the user cursor.
        meta.user = frame.user;
        if (present(frame.id)) {
          if (seenBefore(this._userSeen, String(frame.id))) return;
          if (!this._userSince || after(String(frame.id), this._userSince)) this._userSince = String(frame.id);
        }
      }
      this._emit(this._messageHandlers, [frame.data, meta]);
      return;
    case 'authenticated':
      this._authenticated(frame);
      return;
    case 'token_expiring':
      if (frame.channel) this._refreshChannel(frame.channel);
      else this._refreshConnection();
      return;
    case 'refreshed':
      if (frame.channel && this._channels[frame.channel]) this._channels[frame.channel].refreshing = false;
      return;
    case 'disconnect':
      this._disconnected(frame);
      return;
    case 'accepted':
      this._accepted(frame);
      return;
    case 'ack':
      ack = this._settled(frame.ref);
      if (ack) {
        try { ack.call(this, null, frame); } catch (e) { report(this._g, e); }
      }
      return;
    case 'error':
      if (frame.code === 'rate_limited') {
        // Only when the server counts differently from us (the pacing
        // above keeps under its limit): what it refused goes again later.
        this._refused(frame);
        return;
      }
      ack = this._settled(frame.ref);
      if (ack && ack !== noop) {
        try { ack.call(this, frame, null); } catch (e) { report(this._g, e); }
        return;
      }
      var refused = frame.channel ? this._channels[frame.channel] : null;
      if (refused && refused.refreshing) {
        // A refused refresh: the subscription stays until its token runs out.
        refused.refreshing = false;
      } else if (refused && (frame.code === 'forbidden' || frame.code === 'invalid_channel' ||
                             frame.code === 'too_many_subscriptions' || has(AUTH_ERRORS, frame.code))) {
        delete this._channels[frame.channel];
      } else if (!frame.channel && has(AUTH_ERRORS, frame.code) && this._conn) {
        this._conn.authError = frame.code;  // the session ends after it
      }
      this._emit(this._errorHandlers, [frame]);
      return;
    case 'subscribed':
      if (frame.server && !this._channels[frame.channel]) {
        var own = this._channels[frame.channel] = newSubscription();
        own.server = true;
        own.cb = null;
      }
      if (this._channels[frame.channel]) this._emit(this._subscribedHandlers, [frame]);
      return;
    case 'unsubscribed':
      if (frame.reason && this._channels[frame.channel]) this._unsubscribed(frame.channel, frame.reason);
      return;   // without a reason: the answer to the page's own unsubscribe
    case 'presence':
      if (this._channels[frame.channel]) this._emit(this._presenceHandlers, [frame]);
      return;
    default:
      return;   // pong: nothing to do here
  }
};

/* `authenticated`: the connection is the user's; the cursor is where its
 * messages stand now (those missed since `since` follow). */
Chloe.prototype._authenticated = function (frame) {
  this.user = frame.user;
  if (present(frame.id)) this._userSince = String(frame.id);
  this._attempt = 0;
  this._expiredRetry = false;
  this._emit(this._authenticatedHandlers, [frame.user, frame]);
  this._connectedFirst();
};

/* `token_expiring`: getToken()'s new token, on this connection. Without
 * getToken the server ends the session at `exp` (token_expired) and the
 * next connection presents `token` again. */
Chloe.prototype._refreshConnection = function () {
  var self = this, conn = this._conn;
  if (!this._getToken) return;
  obtain(this._getToken, this, [], function (err, token) {
    if (self._conn !== conn || !conn.ready) return;  // a new connection fetched its own
    if (err) { self._emit(self._errorHandlers, [tokenUnavailable(err)]); return; }
    self._connToken = token;
    self._write({type: 'refresh', token: token});
  });
};

Chloe.prototype._refreshChannel = function (channel) {
  var self = this, conn = this._conn, sub = this._channels[channel];
  if (!sub || !sub.getToken) return;  // the server unsubscribes it at `exp`
  obtain(sub.getToken, this, [channel], function (err, token) {
    if (self._channels[channel] !== sub || self._conn !== conn || !conn.ready) return;
    if (err) { self._emit(self._errorHandlers, [tokenUnavailable(err, channel)]); return; }
    sub.token = token;
    sub.refreshing = true;
    self._write({type: 'refresh', channel: channel, token: token});
  });
};

/* The server ended a subscription: one whose token ran out is taken
 * again with a fresh token when it has getToken (from its last id:
 * nothing is missed), anything else is dropped and reported. */
Chloe.prototype._unsubscribed = function (channel, reason) {
  var sub = this._channels[channel];
  sub.refreshing = false;
  if (reason === 'token_expired' && sub.getToken && !sub.server) {
    sub.fresh = false;
    this._subscribeNow(channel, sub);
    return;
  }
  this._ended(channel, sub, reason);
};

/* `disconnect`: the app ended this connection. With reconnect false (a
 * ban) the client stops for good, as close() does. */
Chloe.prototype._disconnected = function (frame) {
  var reason = typeof frame.reason === 'string' ? frame.reason : 'disconnected by the application';
  var again = frame.reconnect !== false;
  this._emit(this._disconnectHandlers, [reason, again]);
  if (again) return;  // the server closes the connection; the client comes back as usual
  this.close();
  this._emit(this._errorHandlers, [{type: 'error', code: 'disconnected', reason: reason, message: reason}]);
  this._emit(this._closeHandlers, []);
};

/* Transports: each returns {send(frame), close(), ready, onframe, onclose},
 * or null when this browser cannot use it. A transport calls
 * lost(conn) when its connection is gone; close() ends it without a
 * word to onclose. */
Chloe.transports = {};

function connection(teardown) {
  var conn = {ready: false, closed: false, onframe: noop, onclose: null, teardown: teardown};
  conn.close = function () { conn.onclose = null; lost(conn); };
  return conn;
}

function lost(conn) {
  if (conn.closed) return;
  conn.closed = true;
  conn.ready = false;
  try { conn.teardown(); } catch (e) { /* already gone */ }
  var onclose = conn.onclose;
  conn.onclose = null;
  if (onclose) onclose();
}

Chloe.transports.websocket = function (chloe) {
  var g = chloe._g;
  if (!g.WebSocket) return null;
  var ws, resume = chloe._resumeQuery();
  try {
    ws = new g.WebSocket(chloe._base(chloe.secure ? 'wss' : 'ws') + '/ws' + (resume ? '?' + resume : ''));
  } catch (e) { return null; }
  var conn = connection(function () { ws.close(); });
  ws.onmessage = function (event) {
    var frame;
    try { frame = JSON.parse(event.data); } catch (e) { return; }
    if (!conn.closed) conn.onframe(frame);
  };
  ws.onclose = function () { lost(conn); };
  conn.send = function (frame) {
    if (conn.closed) return;
    try { ws.send(JSON.stringify(frame)); } catch (e) { lost(conn); }
  };
  return conn;
};
Chloe.transports.websocket.authFrame = true;  // the token goes in an `auth` frame, not in the URL

/* fetch with a time limit; done(status, parsed JSON body or null), status
 * 0 for a network error or time-out. Returns {abort()}. */
function request(g, url, init, timeout, done) {
  var controller = g.AbortController ? new g.AbortController() : null, finished = false;
  if (controller) init.signal = controller.signal;
  init.cache = 'no-store';
  function finish(status, body) {
    if (finished) return;
    finished = true;
    g.clearTimeout(timer);
    done(status, body);
  }
  function abort() { if (controller) controller.abort(); finish(0, null); }
  var timer = g.setTimeout(abort, timeout);
  g.fetch(url, init).then(function (response) {
    return response.text().then(function (text) {
      var body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
      finish(response.status, body);
    });
  }).then(null, function () { finish(0, null); });
  return {abort: abort};
}

/* What a send request came to: 'ok', 'gone' (the session is no more),
 * 'failed' (the network: try again), or the error code refusing it. */
function postOutcome(status, body) {
  if (status >= 200 && status < 300) return 'ok';
  if (status === 404) return 'gone';
  if (status === 413) return 'too_large';
  if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
    return (body && typeof body.error === 'string') ? body.error : 'bad_frame';
  }
  return 'failed';
}

/* Browser frames of HTTP sessions: in order, one request at a time, the
 * frames queued meanwhile batched into one JSON array of at most `limit`
 * characters (as measured by `measure`; a bigger frame goes alone).
 * `post(body, done)` makes the
 * request and calls done(outcome), see postOutcome. A request that failed
 * on the network is repeated (a frame may then reach the server twice:
 * sends carry their ref, repeated messages are dropped by the client); a
 * refused batch is split, and a refused frame answered with an error. */
function outbox(conn, post, limit, measure, g) {
  var queue = [], busy = false, failures = 0, alone = 0;
  function refuse(item, code) {
    var frame = item.frame, error = {type: 'error', code: code, message: 'the server refused this frame (' + code + ')'};
    if (frame.ref !== undefined) error.ref = frame.ref;
    if (frame.channel !== undefined) error.channel = frame.channel;
    if (!conn.closed) conn.onframe(error);
  }
  function pump() {
    if (busy || conn.closed || !queue.length) return;
    var batch = [], size = 2;
    while (queue.length && (batch.length === 0 || (alone === 0 && size + queue[0].size + 1 <= limit))) {
      size += queue[0].size + 1;
      batch.push(queue.shift());
    }
    if (alone > 0) alone--;
    busy = true;
    post('[' + batch.map(function (item) { return item.text; }).join(',') + ']', function (outcome) {
      busy = false;
      if (conn.closed) return;
      if (outcome === 'ok') { failures = 0; pump(); return; }
      if (outcome === 'gone') { lost(conn); return; }
      if (outcome === 'failed') {
        if (++failures > POLL_RETRIES) { lost(conn); return; }
        queue = batch.concat(queue);
        g.setTimeout(pump, 250 * failures);
        return;
      }
      failures = 0;
      if (batch.length > 1) { alone += batch.length; queue = batch.concat(queue); }
      else refuse(batch[0], outcome);
      pump();
    });
  }
  return function (frame) {
    var text = JSON.stringify(frame);
    queue.push({frame: frame, text: text, size: measure(text)});
    pump();
  };
}

function length(text) { return text.length; }

/* POST /session/<id>, for SSE and long-poll sessions. */
function sessionPoster(chloe, session) {
  return function (body, done) {
    request(chloe._g, chloe._httpBase() + '/session/' + encodeURIComponent(session()), {
      method: 'POST', body: body, headers: {'Content-Type': 'text/plain'}
    }, 30000, function (status, answer) { done(postOutcome(status, answer)); });
  };
}

/* Long-poll and JSONP: poll by cursor; a poll that failed on the network
 * is repeated with the same session and cursor (nothing is lost), a gone
 * session ends the connection. `get(query, done)` calls done(the answer,
 * or null for a network error); `first` is the query of the first poll,
 * which opens the session. Returns a function giving the session. */
function poller(conn, get, first, g) {
  var session = null, cursor = 0, failures = 0;
  function handle(answer) {
    if (conn.closed) return;
    if (!answer || typeof answer !== 'object') {
      if (session === null || ++failures > POLL_RETRIES) { lost(conn); return; }
      g.setTimeout(poll, 250 * failures);
      return;
    }
    if (answer.error || (session === null && !answer.session)) {
      // A refused token comes as an answer, not as a frame: told as one.
      if (has(AUTH_ERRORS, answer.error)) conn.onframe({type: 'error', code: answer.error, message: answer.message});
      lost(conn);
      return;
    }
    failures = 0;
    if (session === null) session = answer.session;
    if (typeof answer.cursor === 'number') cursor = answer.cursor;
    var frames = answer.frames || [];
    for (var i = 0; i < frames.length && !conn.closed; i++) conn.onframe(frames[i]);
    poll();
  }
  function poll() {
    if (conn.closed) return;
    get(session === null ? first : 'session=' + encodeURIComponent(session) + '&cursor=' + cursor, handle);
  }
  poll();
  return function () { return session; };
}

Chloe.transports.sse = function (chloe) {
  var g = chloe._g;
  if (!g.EventSource || !g.fetch) return null;
  var session = null, source, query = chloe._openQuery();
  try { source = new g.EventSource(chloe._httpBase() + '/sse' + (query ? '?' + query : '')); } catch (e) { return null; }
  var conn = connection(function () { source.close(); });
  var types = ['connected', 'message', 'subscribed', 'unsubscribed', 'accepted', 'ack', 'pong', 'error', 'presence',
               'authenticated', 'token_expiring', 'refreshed', 'disconnect'];
  function onevent(event) {
    var frame;
    try { frame = JSON.parse(event.data); } catch (e) { return; }
    if (conn.closed) return;
    if (frame && frame.type === 'connected') session = frame.session;
    conn.onframe(frame);
  }
  for (var i = 0; i < types.length; i++) source.addEventListener(types[i], onevent);
  // The browser would reconnect into a new session by itself, silently:
  // the client does that instead, resuming every channel, so the stream
  // is closed here and the connection reported lost.
  source.onerror = function () { lost(conn); };
  conn.send = outbox(conn, sessionPoster(chloe, function () { return session; }), POST_BATCH_CHARS, length, g);
  return conn;
};

Chloe.transports.longpoll = function (chloe) {
  var g = chloe._g;
  if (!g.fetch) return null;
  var inflight = null;
  var conn = connection(function () { if (inflight) inflight.abort(); });
  var session = poller(conn, function (query, done) {
    inflight = request(g, chloe._httpBase() + '/poll' + (query ? '?' + query : ''), {method: 'GET'},
                       chloe.pollTimeout, function (status, answer) {
      inflight = null;
      if (status === 404) done({error: 'unknown_session'});
      else if (status === 200 && answer) done(answer);
      else if (answer && has(AUTH_ERRORS, answer.error)) done(answer);  // 401, 403, 429: refused
      else done(null);
    });
  }, chloe._openQuery(), g);
  conn.send = outbox(conn, sessionPoster(chloe, session), POST_BATCH_CHARS, length, g);
  return conn;
};

/* One JSONP request: a <script> calling a global callback of its own,
 * both removed once it ran (or failed). done(answer or null). */
var jsonpCount = 0;
function jsonp(g, url, timeout, done) {
  var doc = g.document;
  var name = '__chloe_' + (++jsonpCount) + '_' + randomRef(g).slice(0, 12);
  var script = doc.createElement('script'), finished = false;
  function finish(answer) {
    if (finished) return;
    finished = true;
    g.clearTimeout(timer);
    done(answer);
  }
  function cleanup() {
    script.onload = script.onerror = null;
    if (script.parentNode) script.parentNode.removeChild(script);
    try { delete g[name]; } catch (e) { g[name] = undefined; }
  }
  // Given up on after `timeout`; the callback stays until the script ends.
  var timer = g.setTimeout(function () { finish(null); }, timeout);
  g[name] = function (answer) { finish(answer && typeof answer === 'object' ? answer : null); };
  script.onload = function () { cleanup(); finish(null); };
  script.onerror = function () { cleanup(); finish(null); };
  script.async = true;
  script.src = url + (url.indexOf('?') < 0 ? '?' : '&') + 'callback=' + name;
  (doc.head || doc.getElementsByTagName('head')[0] || doc.documentElement).appendChild(script);
}

function encodedLength(text) { return encodeURIComponent(text).length; }

Chloe.transports.jsonp = function (chloe) {
  var g = chloe._g;
  if (!g.document || !g.document.createElement) return null;
  var base = chloe._httpBase();
  var conn = connection(noop);
  var session = poller(conn, function (query, done) {
    jsonp(g, base + '/jsonp' + (query ? '?' + query : ''), chloe.pollTimeout, done);
  }, chloe._openQuery(), g);
  conn.send = outbox(conn, function (body, done) {
    var frames = encodeURIComponent(body);
    if (frames.length > JSONP_FRAME_CHARS) { done('too_large'); return; }
    jsonp(g, base + '/jsonp/send?session=' + encodeURIComponent(session()) + '&frames=' + frames, 30000,
          function (answer) {
      if (!answer) done('failed');
      else if (answer.ok) done('ok');
      else if (answer.error === 'unknown_session') done('gone');
      else done(typeof answer.error === 'string' ? answer.error : 'failed');
    });
  }, JSONP_BATCH_CHARS, encodedLength, g);
  return conn;
};
Chloe.transports.jsonp.afterLoad = true;  // a poll is always being fetched: it would hold `load`

export { Chloe };
export default Chloe;
