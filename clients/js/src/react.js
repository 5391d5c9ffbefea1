/* React hooks for chloe.js (`import {useChloe, useChannel} from
 * 'chloe-client/react'`). React is a peer dependency: this module imports
 * it, the core does not.
 *
 *   const chloe = useChloe({host: 'localhost', port: 8901});  // connected while mounted
 *   <ChloeProvider client={chloe}>...</ChloeProvider>
 *   useChannel('room', (data, meta) => { ... });             // subscribed while mounted
 *
 * useChloe(options) makes one client for the component's lifetime: it
 * connects once mounted and is closed on unmount (React's StrictMode
 * mounts twice: close() then connect() again is a clean reconnect).
 * Options are read once; getToken is called through the latest render's,
 * so it may close over state. Give the component another `key` to connect
 * with other options.
 *
 * useChannel(name, onMessage, options) subscribes the client of the
 * nearest ChloeProvider (or options.client) to `name` while the component
 * is mounted, and hands each message to the latest onMessage. Components
 * naming the same channel share one subscription: the options (token,
 * since, getToken, onunsubscribed) of the one that subscribes it count, and
 * the last one to go unsubscribes. A channel the server ended is subscribed
 * again by the next component that names it. A null or empty name
 * subscribes nothing.
 */
import { createContext, createElement, useContext, useEffect, useRef, useState } from 'react';
import { Chloe } from './chloe.js';

export const ChloeContext = createContext(null);

/* The client that useChannel finds, for the components below. */
export function ChloeProvider(props) {
  return createElement(ChloeContext.Provider, { value: props.client }, props.children);
}

export function useChloe(options) {
  const latest = useRef(options);
  useEffect(() => { latest.current = options; });
  const [client] = useState(() => {
    const first = Object.assign({}, options);
    if (typeof first.getToken === 'function') {
      const initial = first.getToken;
      first.getToken = function () {
        const current = latest.current && latest.current.getToken;
        return (typeof current === 'function' ? current : initial).apply(this, arguments);
      };
    }
    return new Chloe(first);
  });
  useEffect(() => {
    client.connect();
    return () => { client.close(); };
  }, [client]);
  return client;
}

// client -> Map(channel -> Set of hook refs): the subscriptions the
// hooks hold, one per channel, shared by the components naming it.
const shared = new WeakMap();

function join(client, channel, hook) {
  let channels = shared.get(client);
  if (!channels) shared.set(client, channels = new Map());
  let hooks = channels.get(channel);
  if (!hooks) channels.set(channel, hooks = new Set());
  // A new one, or one the server ended or refused, is subscribed (again)
  // with this hook's options; every hook naming it hears its messages.
  if (!hooks.size || client.channels().indexOf(channel) < 0) subscribe(client, channel, hook, hooks);
  hooks.add(hook);
  return () => {
    hooks.delete(hook);
    if (hooks.size || channels.get(channel) !== hooks) return;
    channels.delete(channel);
    if (client.channels().indexOf(channel) >= 0) client.unsubscribe(channel);
  };
}

function subscribe(client, channel, owner, hooks) {
  const first = owner.current.options || {};
  const latest = (key) => {
    const current = owner.current.options && owner.current.options[key];
    return typeof current === 'function' ? current : first[key];
  };
  const options = { token: first.token, since: first.since };
  if (typeof first.getToken === 'function') {
    options.getToken = function (name) { return latest('getToken').call(this, name); };
  }
  // Without one of its own, the client's onerror hears it, as for any subscription.
  if (typeof first.onunsubscribed === 'function') {
    options.onunsubscribed = function (reason) { latest('onunsubscribed').call(this, reason); };
  }
  client.subscribe(channel, (data, meta) => {
    hooks.forEach((hook) => { hook.current.onMessage(data, meta); });
  }, options);
}

export function useChannel(name, onMessage, options) {
  const provided = useContext(ChloeContext);
  const client = (options && options.client) || provided;
  const hook = useRef({ onMessage, options });
  useEffect(() => { hook.current = { onMessage, options }; });
  useEffect(() => {
    if (!client || !name) return undefined;
    return join(client, name, hook);
  }, [client, name]);
}
