// A typed use of chloe-client's whole API, checked by `tsc -p tsconfig.json`
// (the package imports itself by name, through its exports map). The lines
// marked to expect an error are mistakes the declarations must refuse.
import Chloe, {
  type AuthenticatedFrame,
  type ChloeOptions,
  type ErrorCode,
  type ErrorFrame,
  type MessageMeta,
  type PresenceFrame,
  type Ref,
  type ServerFrame,
  type SubscribedFrame,
  type TransportName,
  Chloe as Named,
} from 'chloe-client';

interface ChatMessage {
  text: string;
  from: string;
}

async function fetchToken(): Promise<string> {
  return 'a.jwt.token';
}

const options: ChloeOptions = {
  host: 'localhost',
  port: 8901,
  secure: false,
  path: '',
  transports: ['websocket', 'sse', 'longpoll', 'jsonp'],
  reconnect: true,
  minDelay: 250,
  maxDelay: 10000,
  connectTimeout: 10000,
  pollTimeout: 65000,
  outbox: 'persistent',
  getToken: fetchToken,
};

const chloe: Named = new Chloe(options);

chloe
  .onmessage<ChatMessage>((message, meta: MessageMeta) => {
    const text: string = message.text;
    const channel: string | null = meta.channel;
    const user: string | undefined = meta.user;
    console.log(text, channel, user, meta.id);
  })
  .onerror((error: ErrorFrame) => {
    const code: ErrorCode = error.code;
    if (code === 'token_unavailable' || code === 'unsubscribed' || code === 'disconnected') console.log(error.reason);
    if (code === 'rate_limited' || code === 'forbidden') console.log(error.channel, error.ref);
  })
  .onclose(() => { console.log('lost; reconnecting'); })
  .onsubscribed((frame: SubscribedFrame) => { console.log(frame.channel, frame.recovered, frame.members?.length); })
  .onpresence((frame: PresenceFrame) => { console.log(frame.event === 'join' ? 'joined' : 'left', frame.member.id); })
  .onauthenticated((user: string, frame: AuthenticatedFrame) => { console.log(user, frame.expires); })
  .ondisconnect((reason: string, reconnect: boolean) => { console.log(reason, reconnect); });

chloe.connect(function () {
  const ref: Ref = this.send<ChatMessage>({ text: 'hi', from: 'me' }, {
    channel: 'room',
    ack: (err, frame) => { console.log(err ? err.code : frame?.ref); },
    accepted: (frame) => { console.log('spooled', frame.ref); },
  });
  console.log(ref, this.session, this.user);
});

chloe.subscribe<ChatMessage>('room', (message, meta) => { console.log(message.from, meta.id); }, { since: '1700000000000-42' });
chloe.subscribe('private-staff', null, {
  getToken: (channel) => fetchToken().then((token) => token + channel),
  onunsubscribed: (reason) => { console.log(reason === 'token_expired'); },
});
chloe.subscribe('quiet');
const held: string[] = chloe.channels();
chloe.unsubscribe('room');
const transport: TransportName | null = chloe.transport;
console.log(held, transport, chloe.host, chloe.port, Chloe.transports.websocket.authFrame);
chloe.close();

function handle(frame: ServerFrame): string {
  switch (frame.type) {
    case 'message': return String(frame.channel);
    case 'disconnect': return frame.reconnect ? 'back soon' : 'banned';
    case 'token_expiring': return String(frame.expires);
    default: return frame.type;
  }
}
console.log(handle);

// @ts-expect-error: not a transport
new Chloe({ transports: ['ws'] });
// @ts-expect-error: the outbox is 'memory' or 'persistent'
new Chloe({ outbox: 'disk' });
// @ts-expect-error: a port is a number
new Chloe({ port: '8901' });
// @ts-expect-error: messages of a typed channel are of that type
chloe.subscribe<ChatMessage>('room', (message) => message.txt);
// @ts-expect-error: getToken gives a token
chloe.subscribe('private-x', null, { getToken: () => 42 });
// @ts-expect-error: meta.channel may be null
chloe.onmessage((data, meta) => meta.channel.length);

// The page itself is what the client runs on by default; it can be given as `globals`.
new Chloe({ globals: window });
