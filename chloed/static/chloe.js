/* chloe.js: the browser client of Chloe. Plain script, no dependencies.
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
 * server's longpoll_timeout).
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
 */
(function (root) {
  'use strict';

  var ALL_TRANSPORTS = ['websocket', 'sse', 'longpoll', 'jsonp'];
  var RECENT_IDS = 1024;            // message ids remembered per channel, to drop repeats
  var POST_BATCH_CHARS = 60000;     // one POST /session body (the server takes 4 x max_message_bytes)
  var JSONP_BATCH_CHARS = 8000;     // URL-encoded frames of one /jsonp/send (request line limits)
  var JSONP_FRAME_CHARS = 14000;    // beyond it a frame cannot go over JSONP at all
  var POLL_RETRIES = 4;             // a failed poll or send is repeated this often, then the connection is lost
  var MAX_AWAITING_ACK = 10000;     // accepted sends whose ack is still awaited (one may never come)

  function noop() {}

  function randomRef() {
    var bytes = new Uint8Array(16), out = '';
    (root.crypto || root.msCrypto).getRandomValues(bytes);
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] + 256).toString(16).slice(1);
    return out;
  }

  function has(object, key) { return Object.prototype.hasOwnProperty.call(object, key); }

  function Chloe(options) {
    options = options || {};
    var loc = root.location || {};
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
    this._channels = {};        // name -> {cb, token, lastId, seen, ring, pos}
    this._pending = new Map();  // ref -> {frame, ack, accepted}, in the order sent
    this._awaiting = new Map(); // ref -> ack callback of a send the server `accepted`, not acked yet
    this._store = options.outbox === 'persistent' ? openStore(this.host + ':' + this.port) : null;
    this._messageHandlers = [];
    this._closeHandlers = [];
    this._errorHandlers = [];
    this._subscribedHandlers = [];
    this._presenceHandlers = [];
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

  Chloe.prototype.onmessage = function (fn) { this._messageHandlers.push(fn); return this; };
  Chloe.prototype.onclose = function (fn) { this._closeHandlers.push(fn); return this; };
  Chloe.prototype.onerror = function (fn) { this._errorHandlers.push(fn); return this; };
  /* Every `subscribed` frame as it comes, also after each resubscribe on a
   * reconnect (on presence- channels it carries the `members` then). */
  Chloe.prototype.onsubscribed = function (fn) { this._subscribedHandlers.push(fn); return this; };
  /* Every `presence` frame: {type, channel, event: 'join'|'leave', member}. */
  Chloe.prototype.onpresence = function (fn) { this._presenceHandlers.push(fn); return this; };

  Chloe.prototype.connect = function (callback) {
    var self = this;
    if (callback) this._onconnect = callback;
    this._closedByUser = false;
    this._stop();
    this._attempt = 0;
    if (!this._store || this._loaded) { this._open(0); return this; }
    // Sends an earlier page left unanswered go first, with their refs.
    this._store.load(function (rows) {
      var older = new Map();
      for (var i = 0; i < rows.length; i++) older.set(rows[i].ref, {frame: rows[i].frame});
      self._pending.forEach(function (value, ref) { older.set(ref, value); });
      self._pending = older;
      self._loaded = true;
      if (!self._closedByUser) self._open(0);
    });
    return this;
  };

  /* Stop everything: the connection, its polls and sends, any reconnect. */
  Chloe.prototype.close = function () {
    this._closedByUser = true;
    this._stop();
    this.transport = null;
  };

  Chloe.prototype._stop = function () {
    if (this._timer !== null) { clearTimeout(this._timer); this._timer = null; }
    if (this._awaitingLoad) { root.removeEventListener('load', this._awaitingLoad); this._awaitingLoad = null; }
    var conn = this._conn;
    this._conn = null;
    if (conn) { conn.ready = false; conn.close(); }
  };

  Chloe.prototype.send = function (data, options) {
    options = options || {};
    var ref = options.ref !== undefined ? options.ref : randomRef();
    var frame = {type: 'send', data: data, ref: ref};
    if (options.channel) frame.channel = options.channel;
    this._pending.set(ref, {frame: frame, ack: options.ack, accepted: options.accepted});
    if (this._store) this._store.put(ref, frame);
    this._write(frame);
    return ref;
  };

  Chloe.prototype.subscribe = function (channel, callback, options) {
    options = options || {};
    var sub = this._channels[channel] ||
      {lastId: null, seen: Object.create(null), ring: new Array(RECENT_IDS), pos: 0};
    sub.cb = callback;
    sub.token = options.token;
    this._channels[channel] = sub;
    this._write(this._subscribeFrame(channel));
  };

  Chloe.prototype.unsubscribe = function (channel) {
    delete this._channels[channel];
    this._write({type: 'unsubscribe', channel: channel});
  };

  Chloe.prototype._subscribeFrame = function (channel) {
    var sub = this._channels[channel], frame = {type: 'subscribe', channel: channel};
    if (sub.token) frame.token = sub.token;
    if (sub.lastId) frame.since = sub.lastId;
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
    if (this._pace && this._pace.timer) clearTimeout(this._pace.timer);
    this._pace = null;
    if (!(connected.rate_limit > 0)) return;
    var burst = Math.max(1, Math.floor((connected.burst || connected.rate_limit) * 0.9));
    this._pace = {rate: connected.rate_limit * 0.9, burst: burst, tokens: burst,
                  stamp: Date.now(), queue: [], timer: null};
  };

  Chloe.prototype._take = function (pace) {
    var now = Date.now();
    pace.tokens = Math.min(pace.burst, pace.tokens + (now - pace.stamp) * pace.rate / 1000);
    pace.stamp = now;
    if (pace.tokens < 1) return false;
    pace.tokens -= 1;
    return true;
  };

  Chloe.prototype._drainLater = function (pace) {
    var self = this;
    if (pace.timer) return;
    pace.timer = setTimeout(function () {
      pace.timer = null;
      if (self._pace !== pace || !self._conn || !self._conn.ready) return;
      while (pace.queue.length && self._take(pace)) self._conn.send(pace.queue.shift());
      if (pace.queue.length) self._drainLater(pace);
    }, Math.ceil(1000 / pace.rate));
  };

  Chloe.prototype._emit = function (handlers, args) {
    for (var i = 0; i < handlers.length; i++) {
      try { handlers[i].apply(this, args); } catch (e) { if (root.console) root.console.error(e); }
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
    if (factory && factory.afterLoad && !pageLoaded()) { this._openAfterLoad(index); return; }
    try { conn = factory ? factory(this) : null; } catch (e) { conn = null; }
    if (!conn) { this._open(index + 1); return; }
    var opened = false;
    this._conn = conn;
    var watchdog = setTimeout(function () {
      if (opened || self._conn !== conn) return;
      conn.close();
      down();
    }, this.connectTimeout);
    function down() {
      clearTimeout(watchdog);
      if (self._conn !== conn) return;
      self._conn = null;
      conn.ready = false;
      if (!opened) { self._open(index + 1); return; }
      self.transport = null;
      self._emit(self._closeHandlers, []);
      if (!self._closedByUser && self.reconnect) self._retry();
    }
    conn.onclose = down;
    conn.onframe = function (frame) {
      if (self._conn !== conn || !frame || typeof frame !== 'object') return;
      if (frame.type === 'connected' && !opened) {
        opened = true;
        clearTimeout(watchdog);
        conn.ready = true;
        self._attempt = 0;
        self.transport = name;
        self.session = frame.session;
        self._startPacing(frame);
        self._resume();
        var first = !self._connectedOnce;
        self._connectedOnce = true;
        if (first && self._onconnect) {
          try { self._onconnect.call(self); } catch (e) { if (root.console) root.console.error(e); }
        }
        return;
      }
      self._frame(frame);
    };
  };

  /* Whether the page has had its `load` event (or there is no page). */
  function pageLoaded() {
    var doc = root.document;
    return !doc || !root.addEventListener || doc.readyState === 'complete';
  }

  /* Open the transport at `index` once the page has loaded, for a transport
   * that would hold `load` (a <script> being fetched delays it). Its
   * connectTimeout starts then; what the page subscribes and sends
   * meanwhile goes out once it is connected. */
  Chloe.prototype._openAfterLoad = function (index) {
    var self = this;
    function onload() {
      root.removeEventListener('load', onload);
      if (self._awaitingLoad !== onload) return;
      self._awaitingLoad = null;
      self._open(index);
    }
    this._awaitingLoad = onload;
    root.addEventListener('load', onload);
  };

  /* After (re)connecting: every channel again, from its last id; every
   * send that has no answer yet, again, with the same ref. */
  Chloe.prototype._resume = function () {
    for (var channel in this._channels) {
      if (has(this._channels, channel)) this._write(this._subscribeFrame(channel));
    }
    var self = this;
    this._pending.forEach(function (value) { self._write(value.frame); });
  };

  Chloe.prototype._retry = function () {
    var self = this;
    if (this._closedByUser || !this.reconnect || this._timer !== null) return;
    var ceiling = Math.min(this.backoff.max, this.backoff.min * Math.pow(2, this._attempt++));
    var delay = ceiling / 2 + Math.random() * ceiling / 2;
    this._timer = setTimeout(function () { self._timer = null; self._open(0); }, delay);
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
    setTimeout(function () {
      if (again.type === 'send' ? self._pending.has(again.ref) : self._channels[again.channel]) self._write(again);
    }, 1000 + Math.random() * 500);
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
      try { pending.accepted.call(this, frame); } catch (e) { if (root.console) root.console.error(e); }
    }
  };

  /* The persistent outbox (`outbox: 'persistent'`): unanswered sends kept
   * in IndexedDB, or localStorage where there is none, so that a reloaded
   * page sends them again, with the same refs, once it connects. A send is
   * durable once its IndexedDB transaction has committed (a few ms). */
  function openStore(server) {
    var prefix = 'chloe-outbox:' + server + ':', seq = 0;
    if (root.indexedDB && root.IDBKeyRange) {
      var ready = new Promise(function (resolve) {
        var request;
        try { request = root.indexedDB.open('chloe-outbox', 1); } catch (e) { resolve(null); return; }
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
            var range = root.IDBKeyRange.bound(prefix, prefix + '\uffff');
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
          seq = Math.max(seq + 1, Date.now() * 1000);
          var row = {key: prefix + JSON.stringify(ref), ref: ref, frame: frame, order: seq};
          write(function (store) { store.put(row); });
        },
        remove: function (ref) {
          write(function (store) { store['delete'](prefix + JSON.stringify(ref)); });
        }
      };
    }
    var storage = null;
    try { storage = root.localStorage; } catch (e) { storage = null; }
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
          if (sub.cb) { try { sub.cb.call(this, frame.data, meta); } catch (e) { if (root.console) root.console.error(e); } }
          else this._emit(this._messageHandlers, [frame.data, meta]);  // subscribed without a callback
          return;
        }
        this._emit(this._messageHandlers, [frame.data, meta]);
        return;
      case 'accepted':
        this._accepted(frame);
        return;
      case 'ack':
        ack = this._settled(frame.ref);
        if (ack) {
          try { ack.call(this, null, frame); } catch (e) { if (root.console) root.console.error(e); }
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
          try { ack.call(this, frame, null); } catch (e) { if (root.console) root.console.error(e); }
          return;
        }
        if (frame.channel && (frame.code === 'forbidden' || frame.code === 'invalid_channel' ||
                              frame.code === 'too_many_subscriptions')) {
          delete this._channels[frame.channel];
        }
        this._emit(this._errorHandlers, [frame]);
        return;
      case 'subscribed':
        if (this._channels[frame.channel]) this._emit(this._subscribedHandlers, [frame]);
        return;
      case 'presence':
        if (this._channels[frame.channel]) this._emit(this._presenceHandlers, [frame]);
        return;
      default:
        return;   // unsubscribed, pong: nothing to do here
    }
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
    if (!root.WebSocket) return null;
    var ws, resume = chloe._resumeQuery();
    try {
      ws = new root.WebSocket(chloe._base(chloe.secure ? 'wss' : 'ws') + '/ws' + (resume ? '?' + resume : ''));
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

  /* fetch with a time limit; done(status, parsed JSON body or null), status
   * 0 for a network error or time-out. Returns {abort()}. */
  function request(url, init, timeout, done) {
    var controller = root.AbortController ? new root.AbortController() : null, finished = false;
    if (controller) init.signal = controller.signal;
    init.cache = 'no-store';
    function finish(status, body) {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      done(status, body);
    }
    function abort() { if (controller) controller.abort(); finish(0, null); }
    var timer = setTimeout(abort, timeout);
    root.fetch(url, init).then(function (response) {
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
  function outbox(conn, post, limit, measure) {
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
          setTimeout(pump, 250 * failures);
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
      request(chloe._httpBase() + '/session/' + encodeURIComponent(session()), {
        method: 'POST', body: body, headers: {'Content-Type': 'text/plain'}
      }, 30000, function (status, answer) { done(postOutcome(status, answer)); });
    };
  }

  /* Long-poll and JSONP: poll by cursor; a poll that failed on the network
   * is repeated with the same session and cursor (nothing is lost), a gone
   * session ends the connection. `get(query, done)` calls done(the answer,
   * or null for a network error); `first` is the query of the first poll,
   * which opens the session. Returns a function giving the session. */
  function poller(conn, get, first) {
    var session = null, cursor = 0, failures = 0;
    function handle(answer) {
      if (conn.closed) return;
      if (!answer || typeof answer !== 'object') {
        if (session === null || ++failures > POLL_RETRIES) { lost(conn); return; }
        setTimeout(poll, 250 * failures);
        return;
      }
      if (answer.error || (session === null && !answer.session)) { lost(conn); return; }
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
    if (!root.EventSource || !root.fetch) return null;
    var session = null, source, resume = chloe._resumeQuery();
    try { source = new root.EventSource(chloe._httpBase() + '/sse' + (resume ? '?' + resume : '')); } catch (e) { return null; }
    var conn = connection(function () { source.close(); });
    var types = ['connected', 'message', 'subscribed', 'unsubscribed', 'accepted', 'ack', 'pong', 'error', 'presence'];
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
    conn.send = outbox(conn, sessionPoster(chloe, function () { return session; }), POST_BATCH_CHARS, length);
    return conn;
  };

  Chloe.transports.longpoll = function (chloe) {
    if (!root.fetch) return null;
    var inflight = null;
    var conn = connection(function () { if (inflight) inflight.abort(); });
    var session = poller(conn, function (query, done) {
      inflight = request(chloe._httpBase() + '/poll' + (query ? '?' + query : ''), {method: 'GET'},
                         chloe.pollTimeout, function (status, answer) {
        inflight = null;
        if (status === 404) done({error: 'unknown_session'});
        else if (status === 200 && answer) done(answer);
        else done(null);
      });
    }, chloe._resumeQuery());
    conn.send = outbox(conn, sessionPoster(chloe, session), POST_BATCH_CHARS, length);
    return conn;
  };

  /* One JSONP request: a <script> calling a global callback of its own,
   * both removed once it ran (or failed). done(answer or null). */
  var jsonpCount = 0;
  function jsonp(url, timeout, done) {
    var doc = root.document;
    var name = '__chloe_' + (++jsonpCount) + '_' + randomRef().slice(0, 12);
    var script = doc.createElement('script'), finished = false;
    function finish(answer) {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      done(answer);
    }
    function cleanup() {
      script.onload = script.onerror = null;
      if (script.parentNode) script.parentNode.removeChild(script);
      try { delete root[name]; } catch (e) { root[name] = undefined; }
    }
    // Given up on after `timeout`; the callback stays until the script ends.
    var timer = setTimeout(function () { finish(null); }, timeout);
    root[name] = function (answer) { finish(answer && typeof answer === 'object' ? answer : null); };
    script.onload = function () { cleanup(); finish(null); };
    script.onerror = function () { cleanup(); finish(null); };
    script.async = true;
    script.src = url + (url.indexOf('?') < 0 ? '?' : '&') + 'callback=' + name;
    (doc.head || doc.getElementsByTagName('head')[0] || doc.documentElement).appendChild(script);
  }

  function encodedLength(text) { return encodeURIComponent(text).length; }

  Chloe.transports.jsonp = function (chloe) {
    if (!root.document || !root.document.createElement) return null;
    var base = chloe._httpBase();
    var conn = connection(noop);
    var session = poller(conn, function (query, done) {
      jsonp(base + '/jsonp' + (query ? '?' + query : ''), chloe.pollTimeout, done);
    }, chloe._resumeQuery());
    conn.send = outbox(conn, function (body, done) {
      var frames = encodeURIComponent(body);
      if (frames.length > JSONP_FRAME_CHARS) { done('too_large'); return; }
      jsonp(base + '/jsonp/send?session=' + encodeURIComponent(session()) + '&frames=' + frames, 30000,
            function (answer) {
        if (!answer) done('failed');
        else if (answer.ok) done('ok');
        else if (answer.error === 'unknown_session') done('gone');
        else done(typeof answer.error === 'string' ? answer.error : 'failed');
      });
    }, JSONP_BATCH_CHARS, encodedLength);
    return conn;
  };
  Chloe.transports.jsonp.afterLoad = true;  // a poll is always being fetched: it would hold `load`

  root.Chloe = Chloe;
})(typeof window !== 'undefined' ? window : this);
