/* Fakes of what chloe.js takes from the browser, handed to it as
 * `globals`: a clock (setTimeout, clearTimeout, Date) that only moves when
 * a test says so, Math.random as the test sets it, WebSocket, EventSource,
 * fetch and AbortController that record what the client opens and let the
 * test answer as chloed would, a page (document, load event, <script> for
 * JSONP), IndexedDB and localStorage that outlive a client (a reload is a
 * new client on the same globals), and a console that collects errors. */

/** Timers that run only on advance(); time starts at 1e12 ms. */
export class FakeClock {
  constructor() {
    this.now = 1e12;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, delay) => {
      const id = this.nextId++;
      this.timers.set(id, { fn, at: this.now + Math.max(0, +delay || 0), delay: +delay || 0, id });
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
    this.Date = { now: () => this.now };
  }

  /** The delays of the timers pending, in the order they were set. */
  delays() { return [...this.timers.values()].map((t) => t.delay); }

  /** Move time on by `ms`, running each timer as its time comes (also those set meanwhile). */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let due = null;
      for (const t of this.timers.values()) if (t.at <= end && (!due || t.at < due.at)) due = t;
      if (!due) break;
      this.timers.delete(due.id);
      this.now = due.at;
      due.fn();
    }
    this.now = end;
  }

  /** Run the next timer, whenever it is due; its delay. */
  next() {
    let due = null;
    for (const t of this.timers.values()) if (!due || t.at < due.at) due = t;
    if (!due) throw new Error('no timer pending');
    this.advance(due.at - this.now);
    return due.delay;
  }
}

/** A WebSocket the test plays the server of: receive(frame) as chloed says it, drop() for a lost connection. */
function makeWebSocket(env) {
  return class FakeWebSocket {
    constructor(url) {
      if (env.refuse.websocket) throw new Error('refused');
      this.url = url;
      this.sent = [];
      this.closed = false;
      env.sockets.push(this);
    }
    send(text) {
      if (this.closed) throw new Error('closed');
      this.sent.push(JSON.parse(text));
    }
    close() { this.closed = true; }
    receive(frame) { this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) }); }
    drop() { this.closed = true; this.onclose({ code: 1006 }); }
  };
}

function makeEventSource(env) {
  return class FakeEventSource {
    constructor(url) {
      if (env.refuse.sse) throw new Error('refused');
      this.url = url;
      this.listeners = {};
      this.closed = false;
      env.sources.push(this);
    }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    close() { this.closed = true; }
    receive(frame) {
      for (const fn of this.listeners[frame.type] || []) fn({ data: JSON.stringify(frame) });
    }
    fail() { this.onerror({}); }
  };
}

class FakeAbortController {
  constructor() { this.signal = { aborted: false }; }
  abort() { this.signal.aborted = true; }
}

/** fetch: each call is recorded in env.requests, for the test to answer (respond) or fail. */
function makeFetch(env) {
  return function fetch(url, init) {
    return new Promise((resolve, reject) => {
      const request = {
        url, init, method: init.method, body: init.body, answered: false,
        respond(status, body) {
          request.answered = true;
          const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
          resolve({ status, text: () => Promise.resolve(text) });
        },
        fail() { request.answered = true; reject(new TypeError('network error')); },
      };
      env.requests.push(request);
    });
  };
}

/** A page: readyState, the `load` event, and <script> elements (JSONP) the test answers. */
function makePage(env) {
  const listeners = {};
  const head = {
    appendChild(script) { script.parentNode = head; env.scripts.push(script); },
    removeChild(script) { script.parentNode = null; },
  };
  const document = {
    readyState: 'complete',
    head,
    createElement(tag) {
      const script = { tag, parentNode: null };
      // The answer of the script's callback, as chloed's JSONP body calls it, then its onload.
      script.answer = (answer) => {
        const name = /[?&]callback=([^&]+)/.exec(script.src)[1];
        if (typeof env.globals[name] === 'function') env.globals[name](answer);
        if (script.onload) script.onload();
      };
      script.fail = () => { if (script.onerror) script.onerror(); };
      return script;
    },
  };
  return {
    document,
    addEventListener(type, fn) { (listeners[type] = listeners[type] || []).push(fn); },
    removeEventListener(type, fn) { listeners[type] = (listeners[type] || []).filter((f) => f !== fn); },
    fire(type) {
      if (type === 'load') document.readyState = 'complete';
      for (const fn of [...(listeners[type] || [])]) fn({ type });
    },
    listeners,
  };
}

/** An IndexedDB holding one object store per name, enough for chloe.js's outbox; answers on a later turn. */
export function makeIndexedDB() {
  const databases = new Map();
  const later = (fn) => { setImmediate(fn); };
  function request() { return { result: undefined, onsuccess: null, onerror: null, onupgradeneeded: null }; }
  function objectStore(rows, keyPath) {
    return {
      put(row) { rows.set(row[keyPath], structuredClone(row)); },
      delete(key) { rows.delete(key); },
      getAll(range) {
        const req = request();
        later(() => {
          req.result = [...rows.entries()].filter(([key]) => range.includes(key)).map(([, row]) => structuredClone(row));
          req.onsuccess && req.onsuccess();
        });
        return req;
      },
    };
  }
  const indexedDB = {
    databases,
    open(name) {
      const req = request();
      later(() => {
        let db = databases.get(name);
        const fresh = !db;
        if (!db) {
          const stores = new Map();
          db = {
            stores,
            createObjectStore(store, options) { stores.set(store, { rows: new Map(), keyPath: options.keyPath }); },
            transaction(store) {
              const s = stores.get(store);
              return { objectStore: () => objectStore(s.rows, s.keyPath) };
            },
          };
          databases.set(name, db);
        }
        req.result = db;
        if (fresh && req.onupgradeneeded) req.onupgradeneeded();
        req.onsuccess && req.onsuccess();
      });
      return req;
    },
  };
  const IDBKeyRange = {
    bound(lower, upper) { return { includes: (key) => key >= lower && key <= upper }; },
  };
  return { indexedDB, IDBKeyRange };
}

export function makeLocalStorage() {
  const items = new Map();
  return {
    items,
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => { items.set(key, String(value)); },
    removeItem: (key) => { items.delete(key); },
  };
}

// Random bytes that never repeat in a test run (refs stay unique across "reloads").
let counter = 0;

/**
 * Globals for one test, and the handles on them.
 *
 * @param {object} options  websocket, sse, fetch, page (default true each), storage: 'indexeddb' |
 *   'localstorage' | null, random (Math.random's value, default 0.5)
 */
export function makeEnv(options = {}) {
  const has = (key) => options[key] !== false;
  const env = {
    clock: new FakeClock(),
    sockets: [], sources: [], requests: [], scripts: [], errors: [],
    refuse: {},
    random: options.random === undefined ? 0.5 : options.random,
  };
  const page = makePage(env);
  const globals = {
    setTimeout: env.clock.setTimeout,
    clearTimeout: env.clock.clearTimeout,
    Date: env.clock.Date,
    Math: { random: () => env.random },
    crypto: {
      getRandomValues(bytes) {
        counter++;
        for (let i = 0; i < bytes.length; i++) bytes[i] = (counter >>> (8 * (i % 4))) & 255;
        return bytes;
      },
    },
    console: { error: (e) => { env.errors.push(e); } },
    location: { protocol: 'http:', hostname: 'chloe.test', port: '8901' },
  };
  if (has('websocket')) globals.WebSocket = makeWebSocket(env);
  if (has('sse')) globals.EventSource = makeEventSource(env);
  if (has('fetch')) { globals.fetch = makeFetch(env); globals.AbortController = FakeAbortController; }
  if (has('page')) {
    globals.document = page.document;
    globals.addEventListener = page.addEventListener;
    globals.removeEventListener = page.removeEventListener;
  }
  if (options.storage === 'indexeddb') Object.assign(globals, options.indexedDB || makeIndexedDB());
  if (options.storage === 'localstorage') globals.localStorage = options.localStorage || makeLocalStorage();
  env.globals = globals;
  env.page = page;
  /** The last WebSocket opened. */
  env.socket = () => env.sockets[env.sockets.length - 1];
  return env;
}

/** Let promises (getToken, fetch answers, IndexedDB) settle: a few turns of the real event loop. */
export async function settle(turns = 6) {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => { setImmediate(resolve); });
}

/** The frames of `type` a socket sent. */
export function sentOf(socket, type) {
  return socket.sent.filter((frame) => frame.type === type);
}
