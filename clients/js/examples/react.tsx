// A typed chat room on chloe-client/react, checked by `tsc -p tsconfig.json`.
import { useState } from 'react';
import { ChloeProvider, useChannel, useChloe } from 'chloe-client/react';
import type { Chloe, MessageMeta } from 'chloe-client';

interface ChatMessage {
  text: string;
  from: string;
}

export function App({ token }: { token: string }) {
  const chloe: Chloe = useChloe({ host: 'localhost', port: 8901, getToken: () => token });
  return (
    <ChloeProvider client={chloe}>
      <Room name="room" />
    </ChloeProvider>
  );
}

export function Room({ name }: { name: string | null }) {
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  useChannel<ChatMessage>(name, (message: ChatMessage, meta: MessageMeta) => {
    if (meta.id) setMessages((all) => [...all, message]);
  }, { since: undefined, onunsubscribed: (reason) => { console.log(reason); } });
  return (
    <ul>
      {messages.map((m, i) => <li key={i}>{m.from}: {m.text}</li>)}
    </ul>
  );
}

export function Elsewhere({ client }: { client: Chloe }) {
  // @ts-expect-error: a typed channel's messages are of its type
  useChannel<ChatMessage>('room', (message) => message.body, { client });
  return null;
}
