/* chloe.js: the browser client of Chloe. Plain script, no dependencies.
 *
 *   var chloe = new Chloe({host: 'localhost', port: 8901});
 *   chloe.onmessage(function (data, meta) { ... });        // meta: {channel, id}
 *   chloe.connect(function () {
 *     chloe.send('hi mom');                                 // or send(data, {channel, ack: fn})
 *     chloe.subscribe('pumpkin', function (data, meta) { ... }, {token: t});
 *   });
 *
 * Transports are tried in the order of `transports`, falling back when one
 * cannot connect. After a connection is lost the client reconnects by
 * itself (exponential backoff with jitter), resubscribes every channel and
 * resumes each from the last message id it saw, so nothing published in
 * between is missed.
 */
(function (root) {
  'use strict';

  var ALL_TRANSPORTS = ['websocket', 'sse', 'longpoll', 'jsonp'];

  function randomRef() {
    var bytes = new Uint8Array(16), out = '';
    (root.crypto || root.msCrypto).getRandomValues(bytes);
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] + 256).toString(16).slice(1);
    return out;
  }

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
    this.transport = null;
    this.session = null;
    this._channels = {};        // name -> {cb, token, lastId}
    this._pending = {};         // ref -> {frame, ack}
    this._messageHandlers = [];
    this._closeHandlers = [];
    this._errorHandlers = [];
    this._conn = null;
    this._attempt = 0;
    this._closedByUser = false;
    this._connectedOnce = false;
  }

  Chloe.prototype._base = function (scheme) {
    return scheme + '://' + this.host + ':' + this.port + this.path;
  };

  Chloe.prototype.onmessage = function (fn) { this._messageHandlers.push(fn); return this; };
  Chloe.prototype.onclose = function (fn) { this._closeHandlers.push(fn); return this; };
  Chloe.prototype.onerror = function (fn) { this._errorHandlers.push(fn); return this; };

  Chloe.prototype.connect = function (callback) {
    this._onconnect = callback;
    this._closedByUser = false;
    this._open(0);
    return this;
  };

  Chloe.prototype.close = function () {
    this._closedByUser = true;
    if (this._conn) this._conn.close();
    this._conn = null;
  };

  Chloe.prototype.send = function (data, options) {
    options = options || {};
    var ref = options.ref !== undefined ? options.ref : randomRef();
    var frame = {type: 'send', data: data, ref: ref};
    if (options.channel) frame.channel = options.channel;
    this._pending[ref] = {frame: frame, ack: options.ack};
    this._write(frame);
    return ref;
  };

  Chloe.prototype.subscribe = function (channel, callback, options) {
    options = options || {};
    var sub = this._channels[channel] || {lastId: null};
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
    if (this._conn && this._conn.ready) this._conn.send(frame);
  };

  Chloe.prototype._emit = function (handlers, args) {
    for (var i = 0; i < handlers.length; i++) {
      try { handlers[i].apply(this, args); } catch (e) { if (root.console) root.console.error(e); }
    }
  };

  /* Open the transport at `index`; on failure before `connected`, the next. */
  Chloe.prototype._open = function (index) {
    var self = this;
    if (index >= this.transports.length) { this._retry(); return; }
    var name = this.transports[index];
    var factory = Chloe.transports[name];
    var conn = factory ? factory(this) : null;
    if (!conn) { this._open(index + 1); return; }
    var opened = false;
    this._conn = conn;
    conn.onframe = function (frame) {
      if (self._conn !== conn) return;
      if (frame.type === 'connected' && !opened) {
        opened = true;
        conn.ready = true;
        self._attempt = 0;
        self.transport = name;
        self.session = frame.session;
        self._resume();
        var first = !self._connectedOnce;
        self._connectedOnce = true;
        if (first && self._onconnect) self._onconnect.call(self);
        return;
      }
      self._frame(frame);
    };
    conn.onclose = function () {
      if (self._conn !== conn) return;
      self._conn = null;
      conn.ready = false;
      if (!opened) { self._open(index + 1); return; }
      self.transport = null;
      self._emit(self._closeHandlers, []);
      if (!self._closedByUser && self.reconnect) self._retry();
    };
  };

  /* After (re)connecting: every channel again, from its last id; every
   * send that has no answer yet, again, with the same ref. */
  Chloe.prototype._resume = function () {
    for (var channel in this._channels) {
      if (Object.prototype.hasOwnProperty.call(this._channels, channel)) {
        this._write(this._subscribeFrame(channel));
      }
    }
    for (var ref in this._pending) {
      if (Object.prototype.hasOwnProperty.call(this._pending, ref)) this._write(this._pending[ref].frame);
    }
  };

  Chloe.prototype._retry = function () {
    var self = this;
    if (this._closedByUser || !this.reconnect) return;
    var ceiling = Math.min(this.backoff.max, this.backoff.min * Math.pow(2, this._attempt++));
    var delay = ceiling / 2 + Math.random() * ceiling / 2;
    setTimeout(function () { if (!self._closedByUser) self._open(0); }, delay);
  };

  Chloe.prototype._frame = function (frame) {
    var pending;
    switch (frame.type) {
      case 'message':
        var meta = {channel: frame.channel, id: frame.id};
        if (frame.channel) {
          var sub = this._channels[frame.channel];
          if (!sub) return;
          sub.lastId = frame.id;
          if (sub.cb) { try { sub.cb.call(this, frame.data, meta); } catch (e) { if (root.console) root.console.error(e); } }
          return;
        }
        this._emit(this._messageHandlers, [frame.data, meta]);
        return;
      case 'ack':
        pending = this._pending[frame.ref];
        delete this._pending[frame.ref];
        if (pending && pending.ack) pending.ack.call(this, null, frame);
        return;
      case 'error':
        if (frame.ref !== undefined && this._pending[frame.ref]) {
          pending = this._pending[frame.ref];
          delete this._pending[frame.ref];
          if (pending.ack) { pending.ack.call(this, frame, null); return; }
        }
        if (frame.channel && (frame.code === 'forbidden' || frame.code === 'invalid_channel' ||
                              frame.code === 'too_many_subscriptions')) {
          delete this._channels[frame.channel];
        }
        this._emit(this._errorHandlers, [frame]);
        return;
      default:
        return;   // subscribed, unsubscribed, pong, presence: nothing to do here
    }
  };

  /* Transports: each returns {send(frame), close(), ready, onframe, onclose},
   * or null when this browser cannot use it. */
  Chloe.transports = {};

  Chloe.transports.websocket = function (chloe) {
    if (!root.WebSocket) return null;
    var conn = {ready: false}, ws;
    try { ws = new root.WebSocket(chloe._base(chloe.secure ? 'wss' : 'ws') + '/ws'); } catch (e) { return null; }
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      conn.onframe(frame);
    };
    ws.onclose = function () { lost(conn); };
    conn.send = function (frame) { ws.send(JSON.stringify(frame)); };
    conn.close = function () { conn.onclose = null; ws.close(); };
    return conn;
  };

  function lost(conn) {
    var onclose = conn.onclose;
    conn.onclose = null;
    conn.closed = true;
    if (onclose) onclose();
  }

  /* Browser frames of HTTP sessions: in order, one request at a time, the
   * frames queued meanwhile batched into one JSON array. `post(body, done)`
   * makes the request and calls done(ok, gone). */
  function Outbox(conn, post) {
    var queue = [], busy = false, failures = 0;
    function pump() {
      if (busy || !queue.length || conn.closed) return;
      var batch = queue;
      queue = [];
      busy = true;
      post(JSON.stringify(batch), function (ok, gone) {
        busy = false;
        if (ok) { failures = 0; pump(); return; }
        if (gone || ++failures > 4) { lost(conn); return; }
        queue = batch.concat(queue);
        setTimeout(pump, 200 * failures);
      });
    }
    return function (frame) { queue.push(frame); pump(); };
  }

  /* Long-poll and JSONP: poll by cursor; a failed poll is repeated with the
   * same cursor (nothing is lost), a gone session ends the connection.
   * `get(query, done)` calls done(answer or null on a network error). */
  function Poller(conn, get) {
    var session = null, cursor = 0, failures = 0;
    function handle(answer) {
      if (conn.closed) return;
      if (!answer) {
        if (session === null || ++failures > 4) { lost(conn); return; }
        setTimeout(poll, 200 * failures);
        return;
      }
      if (answer.error) { lost(conn); return; }
      failures = 0;
      if (answer.session) session = answer.session;
      cursor = answer.cursor;
      for (var i = 0; i < answer.frames.length && !conn.closed; i++) conn.onframe(answer.frames[i]);
      poll();
    }
    function poll() {
      if (conn.closed) return;
      get(session === null ? '' : 'session=' + encodeURIComponent(session) + '&cursor=' + cursor, handle);
    }
    poll();
    return function () { return session; };
  }

  Chloe.transports.sse = function (chloe) {
    if (!root.EventSource || !root.fetch) return null;
    var conn = {ready: false}, session = null, base = chloe._base(chloe.secure ? 'https' : 'http');
    var source = new root.EventSource(base + '/sse');
    var types = ['connected', 'message', 'subscribed', 'unsubscribed', 'ack', 'pong', 'error', 'presence'];
    function onevent(event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === 'connected') session = frame.session;
      if (!conn.closed) conn.onframe(frame);
    }
    for (var i = 0; i < types.length; i++) source.addEventListener(types[i], onevent);
    // The browser would reconnect into a new session by itself: the client
    // does that, resuming every channel, so the stream is closed here.
    source.onerror = function () { source.close(); lost(conn); };
    conn.send = Outbox(conn, function (body, done) {
      root.fetch(base + '/session/' + encodeURIComponent(session), {
        method: 'POST', body: body, headers: {'Content-Type': 'text/plain'}
      }).then(function (r) { done(r.ok, r.status === 404); }, function () { done(false, false); });
    });
    conn.close = function () { conn.onclose = null; conn.closed = true; source.close(); };
    return conn;
  };

  Chloe.transports.longpoll = function (chloe) {
    if (!root.fetch) return null;
    var conn = {ready: false}, base = chloe._base(chloe.secure ? 'https' : 'http');
    var controller = root.AbortController ? new root.AbortController() : null;
    var signal = controller ? controller.signal : undefined;
    var session = Poller(conn, function (query, done) {
      root.fetch(base + '/poll?' + query, {signal: signal, cache: 'no-store'}).then(function (r) {
        if (r.status === 404) return {error: 'unknown_session'};
        if (!r.ok) return null;
        return r.json();
      }).then(done, function () { done(null); });
    });
    conn.send = Outbox(conn, function (body, done) {
      root.fetch(base + '/session/' + encodeURIComponent(session()), {
        method: 'POST', body: body, headers: {'Content-Type': 'text/plain'}
      }).then(function (r) { done(r.ok, r.status === 404); }, function () { done(false, false); });
    });
    conn.close = function () { conn.onclose = null; conn.closed = true; if (controller) controller.abort(); };
    return conn;
  };

  var jsonpCount = 0;
  function jsonp(url, done) {
    var name = '__chloe_jsonp_' + (++jsonpCount) + '_' + Math.floor(Math.random() * 1e9);
    var script = root.document.createElement('script'), finished = false;
    function finish(answer) {
      if (finished) return;
      finished = true;
      try { delete root[name]; } catch (e) { root[name] = undefined; }
      if (script.parentNode) script.parentNode.removeChild(script);
      done(answer);
    }
    root[name] = function (answer) { finish(answer); };
    script.onerror = function () { finish(null); };
    script.src = url + (url.indexOf('?') < 0 ? '?' : '&') + 'callback=' + name;
    root.document.getElementsByTagName('head')[0].appendChild(script);
  }

  Chloe.transports.jsonp = function (chloe) {
    if (!root.document) return null;
    var conn = {ready: false}, base = chloe._base(chloe.secure ? 'https' : 'http');
    var session = Poller(conn, function (query, done) {
      jsonp(base + '/jsonp' + (query ? '?' + query : ''), done);
    });
    conn.send = Outbox(conn, function (body, done) {
      jsonp(base + '/jsonp/send?session=' + encodeURIComponent(session()) +
            '&frames=' + encodeURIComponent(body), function (answer) {
        done(!!(answer && answer.ok), !!(answer && answer.error === 'unknown_session'));
      });
    });
    conn.close = function () { conn.onclose = null; conn.closed = true; };
    return conn;
  };

  root.Chloe = Chloe;
})(typeof window !== 'undefined' ? window : this);
