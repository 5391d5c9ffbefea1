/**
 * React hooks for chloe-client (React is a peer dependency).
 *
 * ```tsx
 * import { ChloeProvider, useChannel, useChloe } from 'chloe-client/react';
 *
 * function App() {
 *   const chloe = useChloe({ host: 'localhost', port: 8901 });
 *   return <ChloeProvider client={chloe}><Room /></ChloeProvider>;
 * }
 * function Room() {
 *   const [last, setLast] = useState('');
 *   useChannel<{ text: string }>('room', (message) => setLast(message.text));
 *   return <p>{last}</p>;
 * }
 * ```
 */
import type { Context, ReactElement, ReactNode } from 'react';
import type { Chloe, ChloeOptions, MessageMeta, SubscribeOptions } from './chloe.js';

/** The client useChannel finds: the nearest ChloeProvider's. */
export declare const ChloeContext: Context<Chloe | null>;

export interface ChloeProviderProps {
  client: Chloe | null;
  children?: ReactNode;
}

export declare function ChloeProvider(props: ChloeProviderProps): ReactElement;

/**
 * One client for the component's lifetime, connected while it is mounted
 * and closed on unmount. The options are read once (getToken through the
 * latest render's); give the component another `key` to change them.
 */
export declare function useChloe(options?: ChloeOptions): Chloe;

export interface UseChannelOptions extends SubscribeOptions {
  /** Default: the nearest ChloeProvider's client. */
  client?: Chloe | null;
}

/**
 * Subscribes to `name` while the component is mounted (none while it is
 * null or empty) and hands each message to the latest `onMessage`.
 * Components naming one channel share its subscription.
 */
export declare function useChannel<T = unknown>(
  name: string | null | undefined,
  onMessage: (data: T, meta: MessageMeta) => void,
  options?: UseChannelOptions,
): void;
