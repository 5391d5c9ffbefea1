/*
 * loadgen.c - Chloe's own load generator (issue 6).
 *
 * One single-threaded epoll loop per process (--procs P forks P of them,
 * each holding about N/P clients: one process may hold at most ~19,000
 * sockets here). It opens and holds N browser clients against a chloed on
 * 127.0.0.1:PORT over one transport:
 *
 *   ws        GET /ws upgrade, then a masked text frame
 *             {"type":"subscribe","channel":C}; subscribed on "subscribed".
 *   sse       GET /sse?channel=C; subscribed on the "subscribed" event.
 *   longpoll  GET /poll?channel=C, then GET /poll?session=S&cursor=N in a
 *             loop on the same keep-alive connection.
 *   pusher    the Pusher protocol 7 layer (--app-key K --app-id I
 *             --app-secret S): GET /app/K?protocol=7&client=loadgen&version=1
 *             &flash=false upgrade; on pusher:connection_established a
 *             masked {"event":"pusher:subscribe","data":{"channel":C}};
 *             subscribed on pusher_internal:subscription_succeeded;
 *             pusher:ping is answered with pusher:pong. The publisher uses
 *             the signed HTTP API instead of /send: POST /apps/I/events
 *             ?auth_key=K&auth_timestamp=T&auth_version=1.0&body_md5=M
 *             &auth_signature=HMAC-SHA256(S, "POST\n/apps/I/events\n" +
 *             that query without the signature), JSON body
 *             {"name":"bench-ev","channel":C,"data":"ts=..."}; the data
 *             holds no character JSON escapes, so it arrives as published.
 *             No count is read from its answer (Pusher's is {}): each 2xx
 *             publish is expected to reach every client meant for its
 *             channel (as --expect-all).
 *
 * Client i subscribes to "bench-(i % K)" (--channels K), or "bench" when
 * K is 1. The generator publishes its own messages with POST /send (form
 * body channel=C&data=ts=<CLOCK_MONOTONIC us>_seq=<n>_xxx..., 100 bytes,
 * bearer secret, a few keep-alive connections) and counts one delivery for
 * every "ts=" it reads back; the timestamp gives publish->receive latency.
 *
 * Modes:
 *   --idle        connect, report server RSS per connection (--pid), hold
 *                 --hold seconds, report errors and disconnects.
 *                 --broadcast (issue 20): after the hold, one POST /send to
 *                 the channel every client subscribed to (--channels 1),
 *                 then wait (at most --broadcast-timeout s) until every
 *                 client still connected, in every process, got it:
 *                 broadcast_clients (how many did), broadcast_expected
 *                 (connected when it was published), broadcast_s (publish
 *                 to the last delivery), broadcast_p50_ms / _p99_ms
 *                 (publish->receive over the clients); one that did not
 *                 get it counts as an error (broadcast_missing).
 *   --saturate    closed loop: at most --window messages published and not
 *                 yet fully delivered; deliveries/s over --dur after --warmup.
 *   --rate R      R messages/s; latency p50/p99.
 *   --random      publish to a random channel each time (scenario c).
 *   --relay       scenario d: N WebSocket clients send {"type":"send",...}
 *                 frames (at most --window in flight each, or --rate R in
 *                 total); this process is also the app server chloed relays
 *                 to (--app-port, answers 200 at once); an ack is a delivery
 *                 and its latency is send->ack. With a durable relay spool
 *                 (disk, redis) chloed first answers {"type":"accepted",
 *                 "ref":R} once the send is on stable storage: counted
 *                 ("accepted") with its own send->accepted latency
 *                 (accepted_p50_ms, accepted_p99_ms), never taken for an ack
 *                 (the client's next send still waits for the ack).
 *
 * Several nodes (issue 9): --ports P1,P2,... spreads the clients over
 * several chloeds (client i connects to the i % n-th port); publishes go to
 * the first port (one node publishes, every node delivers: the cross-node
 * fan-out), or round-robin over all with --pub-all. --pids A,B,... sums
 * server CPU, run-queue wait and RSS over those processes (--port and --pid
 * are the one-node case): a server of several processes (chloed's parent
 * and its workers, all on one --port) is measured whole by listing them
 * all. --aux-pids C,D,... (e.g. redis-server) is measured the same way but
 * reported apart (aux_*), never in the server's figures. --expect-all: a
 * 2xx publish is expected to reach every client subscribed to its channel,
 * for backends whose /send answers "delivered":0 because each node delivers
 * later on its own (redis). --nsrc N: client i connects from 127.0.0.(1 +
 * i % N), N at most 254 (each source address has its own ephemeral ports).
 *
 * Output: one JSON line on stdout. Progress goes to stderr.
 * Only 127.0.0.x is contacted. Every loop is bounded in time and count, and
 * an alarm() ends every process whatever happens.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c -lcrypto
 * (libcrypto, from libssl-dev: MD5 and HMAC-SHA256 for --proto pusher)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAXPROCS 16
#define MAXPORTS 16               /* chloeds (--ports) */
#define MAXPIDS 64                /* server processes measured (--pids), and --aux-pids */
#define MAXPUB 64
#define HIST_US 10                /* latency histogram bucket */
#define HIST_N (30 * 100000)      /* 30 s of 10 us buckets */
#define ERRLEN 300

/* ------------------------------------------------------------------ config */
enum { PR_WS, PR_SSE, PR_LP, PR_PUSHER };
enum { M_IDLE, M_SATURATE, M_RATE };
static int proto = PR_WS, mode = M_IDLE, relay = 0, randomize = 0;
static int port = 0, app_port = 0, procs = 0, conc = 100, npub = 4, nsrc = 8, payload_len = 100;
static long nclients = 1000, nchannels = 1;
static double window = 8, rate = 0, warmup_s = 1, dur_s = 5, hold_s = 10, settle_s = 2;
static double connect_timeout_s = 120, drain_s = 15;
static long long max_msgs = 5000000;
static int ports[MAXPORTS], nports = 0, pub_all = 0, expect_all = 0;
static pid_t server_pids[MAXPIDS];
static int npids = 0;
static pid_t aux_pids[MAXPIDS];   /* --aux-pids: measured, reported apart */
static int naux = 0;
static int broadcast = 0;         /* --idle --broadcast */
static double broadcast_timeout_s = 60;
static const char *secret = "bench-secret";
static const char *app_key = NULL, *app_id = NULL, *app_secret = NULL; /* --proto pusher */
static unsigned long seed = 1;

/* ------------------------------------------------------------------ shared */
typedef struct {
  volatile long long started, connected, failed, disconnects, error_frames, delivered;
  volatile long long accepted; /* relay: {"type":"accepted"} frames (durable spools) */
  volatile long long bad_lat, done, pid;
  volatile long long last_us; /* CLOCK_MONOTONIC us of this process's last delivery */
  char first_err[ERRLEN];
} slot_t;
enum { PH_CONNECT, PH_RUN, PH_STOP };
typedef struct {
  volatile int phase, recording;
  slot_t slot[MAXPROCS];
} shared_t;
static shared_t *shm;
static uint32_t *hist_all; /* procs * HIST_N */
static uint32_t *hist;     /* this process */
static uint32_t *hist_acc_all; /* relay: send->accepted latencies, procs * HIST_N */
static uint32_t *hist_acc;     /* this process */
static slot_t *me;
static int my_index = 0;

/* ------------------------------------------------------------------ conns */
enum { K_FREE, K_SUB, K_PUB, K_APPLISTEN, K_APP };
enum { S_CONNECTING, S_OPEN };
enum { SUB_HS, SUB_WAIT, SUB_READY };
enum { H_HDR, H_BODY, H_CHSIZE, H_CHDATA, H_CHCRLF, H_CHTRAIL, H_UNTILCLOSE, H_WS };

typedef struct {
  uint8_t kind, state, sub, hs, busy, close_after, counted;
  uint8_t psent;        /* pusher: pusher:subscribe sent */
  int status;
  long long remaining;
  long idx;             /* client index, or publisher slot */
  int inflight;         /* relay: sends not yet acked */
  char *rbuf;           /* unconsumed input */
  uint32_t rlen, rcap;
  char *bbuf;           /* HTTP body / SSE events being assembled */
  uint32_t blen, bcap;
  char *wbuf;           /* output the kernel did not take yet */
  uint32_t wlen, woff, wcap;
  char sess[48];        /* long-poll session id */
  long long cursor;
  long pch;             /* publisher: channel index of the publish in flight */
} conn_t;

static int ep, maxfd;
static conn_t *conns;
static long my_share = 0, my_started = 0, my_inflight = 0;
static int pubfd[MAXPUB];
static long pub_reconnects = 0;
static long long published = 0, pub_ok = 0, pub_errors = 0, expected = 0;
static long long relay_sent = 0, app_requests = 0;
static int applisten = -1;
static int sending = 0; /* relay: an ack makes room for the next send */
static char rdbuf[1 << 18];
static char first_pub_err[ERRLEN];
static long long subs_ready = 0; /* subscribers connected after the settle */
static unsigned long long rng_state = 88172645463325252ULL;

static inline long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}
static double now_s(void) { return now_us() / 1e6; }
static inline unsigned long long rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void note_err(const char *what, const char *p, size_t n) {
  if (me->first_err[0]) return;
  size_t w = (size_t)snprintf(me->first_err, ERRLEN, "%s: ", what);
  for (size_t i = 0; i < n && w < ERRLEN - 1; i++) me->first_err[w++] = (p[i] >= 32 && p[i] < 127) ? p[i] : ' ';
  me->first_err[w < ERRLEN ? w : ERRLEN - 1] = 0;
}

/* ------------------------------------------------------------------ /proc */
static long proc_rss_kb(pid_t pid) {
  char path[64], line[256];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
  fclose(f);
  return kb;
}
/* utime + stime of one process, seconds */
static double proc_cpu_s(pid_t pid) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *s = strrchr(buf, ')');
  if (!s) return -1;
  /* after ") ": field 3 is state; utime is field 14, stime field 15 */
  unsigned long long ut = 0, st = 0;
  int field = 3;
  for (char *p = s + 2; *p && field <= 15; field++) {
    if (field == 14) ut = strtoull(p, NULL, 10);
    if (field == 15) st = strtoull(p, NULL, 10);
    while (*p && *p != ' ') p++;
    while (*p == ' ') p++;
  }
  return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}
/* time the server was runnable but waiting for a CPU (schedstat), seconds */
static double proc_wait_s(pid_t pid) {
  char path[64];
  unsigned long long run = 0, wait = 0;
  snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
  fclose(f);
  return wait / 1e9;
}
/* busy and total jiffies of cpu0 and cpu1 (/proc/stat) */
static void cpu_jiffies(double busy[2], double total[2]) {
  char line[512];
  busy[0] = busy[1] = total[0] = total[1] = 0;
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    int id;
    unsigned long long v[8] = {0};
    if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &id, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7]) >= 5 && id >= 0 && id < 2) {
      unsigned long long all = 0;
      for (int k = 0; k < 8; k++) all += v[k];
      total[id] = (double)all;
      busy[id] = (double)(all - v[3] - v[4]); /* everything but idle and iowait */
    }
  }
  fclose(f);
}
/* proportional set size (shared pages split among their users), kB */
static long proc_pss_kb(pid_t pid) {
  char path[64], line[256];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "Pss:", 4)) { kb = atol(line + 4); break; }
  fclose(f);
  return kb;
}
/* RSS (or PSS) and CPU summed over a list of processes; -1 if one is gone */
static long long sum_mem_kb(const pid_t *pids, int n, long (*of)(pid_t)) {
  if (!n) return -1;
  long long t = 0;
  for (int k = 0; k < n; k++) {
    long kb = of(pids[k]);
    if (kb < 0) return -1;
    t += kb;
  }
  return t;
}
static double sum_cpu_s(const pid_t *pids, int n) {
  double t = 0;
  for (int k = 0; k < n; k++) {
    double c = proc_cpu_s(pids[k]);
    if (c > 0) t += c;
  }
  return t;
}
/* server RSS, CPU and run-queue wait summed over every --pids process */
static long long servers_rss_kb(void) { return sum_mem_kb(server_pids, npids, proc_rss_kb); }
static long long servers_pss_kb(void) { return sum_mem_kb(server_pids, npids, proc_pss_kb); }
static double servers_cpu_s(void) { return sum_cpu_s(server_pids, npids); }
static long long aux_rss_kb(void) { return sum_mem_kb(aux_pids, naux, proc_rss_kb); }
static double aux_cpu_s(void) { return sum_cpu_s(aux_pids, naux); }
static double servers_wait_s(void) {
  double t = 0;
  for (int k = 0; k < npids; k++) t += proc_wait_s(server_pids[k]);
  return t;
}
/* each server's CPU over the window (per node), seconds */
static double each_cpu0[MAXPIDS], each_cpu[MAXPIDS];
static void each_cpu_mark(int end) {
  for (int k = 0; k < npids; k++) {
    double c = proc_cpu_s(server_pids[k]);
    if (end) each_cpu[k] = c - each_cpu0[k];
    else each_cpu0[k] = c;
  }
}
/* comma-separated integers into out[max]; how many, or -1 */
static int parse_list(const char *v, int *out, int max) {
  int n = 0;
  for (const char *p = v; *p; n++) {
    if (n >= max) return -1;
    char *e;
    long x = strtol(p, &e, 10);
    if (e == p || x <= 0 || x > 4194304) return -1;
    out[n] = (int)x;
    if (*e == ',') e++;
    else if (*e) return -1;
    p = e;
  }
  return n;
}
static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}
/* CPU of every loader process (this one and its children) */
static double loader_cpu_s(void) {
  double t = self_cpu_s();
  for (int p = 1; p < procs; p++) {
    double c = proc_cpu_s((pid_t)shm->slot[p].pid);
    if (c > 0) t += c;
  }
  return t;
}

/* ------------------------------------------------------------------ io */
static void ep_set(int fd, uint32_t ev) {
  struct epoll_event e = {.events = ev, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
}
static void ensure(char **buf, uint32_t *cap, size_t need) {
  if (need <= *cap) return;
  size_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  *buf = realloc(*buf, c);
  if (!*buf) { fprintf(stderr, "out of memory\n"); _exit(3); }
  *cap = c;
}
static int pub_connect(int slotno);

/* why: 0 = we close on purpose, 1 = failure/disconnect */
static void conn_close(int fd, int failure) {
  conn_t *c = &conns[fd];
  if (c->kind == K_FREE) return;
  if (c->kind == K_SUB) {
    if (c->sub == SUB_READY) {
      me->connected--;
      if (failure) me->disconnects++;
    } else {
      my_inflight--;
      me->failed++;
    }
  }
  int kind = c->kind, slotno = (int)c->idx;
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  free(c->rbuf);
  free(c->bbuf);
  free(c->wbuf);
  memset(c, 0, sizeof *c);
  if (kind == K_PUB) {
    pubfd[slotno] = -1;
    if (failure && shm->phase != PH_STOP && pub_reconnects++ < 1000) pub_connect(slotno);
  }
}
static void flush_out(int fd) {
  conn_t *c = &conns[fd];
  while (c->woff < c->wlen) {
    ssize_t w = write(fd, c->wbuf + c->woff, c->wlen - c->woff);
    if (w < 0) {
      if (errno == EAGAIN) return;
      note_err("write", strerror(errno), strlen(strerror(errno)));
      conn_close(fd, 1);
      return;
    }
    c->woff += (uint32_t)w;
  }
  c->woff = c->wlen = 0;
  ep_set(fd, EPOLLIN);
}
static void send_bytes(int fd, const char *d, size_t n) {
  conn_t *c = &conns[fd];
  if (c->kind == K_FREE) return;
  if (c->wlen == 0) {
    ssize_t w = write(fd, d, n);
    if (w == (ssize_t)n) return;
    if (w < 0) {
      if (errno != EAGAIN) { conn_close(fd, 1); return; }
      w = 0;
    }
    d += w;
    n -= (size_t)w;
  }
  ensure(&c->wbuf, &c->wcap, c->wlen + n);
  memcpy(c->wbuf + c->wlen, d, n);
  c->wlen += (uint32_t)n;
  ep_set(fd, EPOLLIN | EPOLLOUT);
}
/* a client-to-server WebSocket frame: masked, as RFC 6455 wants */
static void ws_send(int fd, int opcode, const char *p, size_t n) {
  char buf[4096];
  if (n > sizeof buf - 14) return;
  size_t h = 0;
  buf[h++] = (char)(0x80 | opcode);
  if (n < 126) buf[h++] = (char)(0x80 | n);
  else { buf[h++] = (char)(0x80 | 126); buf[h++] = (char)(n >> 8); buf[h++] = (char)(n & 255); }
  uint32_t mask = (uint32_t)rnd();
  unsigned char mk[4];
  memcpy(mk, &mask, 4);
  memcpy(buf + h, mk, 4);
  h += 4;
  for (size_t i = 0; i < n; i++) buf[h + i] = (char)(p[i] ^ mk[i & 3]);
  send_bytes(fd, buf, h + n);
}

/* ------------------------------------------------------------------ clients */
static inline int client_port(long i) { return ports[i % nports]; }
static inline int pub_port(int slotno) { return pub_all ? ports[slotno % nports] : ports[0]; }
/* clients meant to subscribe to channel index ch */
static long long subs_of_channel(long ch) {
  if (nchannels <= 1) return subs_ready;
  return nclients / nchannels + (ch < nclients % nchannels ? 1 : 0);
}
static void channel_of(long i, char *out, size_t n) {
  if (nchannels <= 1) snprintf(out, n, "bench");
  else snprintf(out, n, "bench-%ld", i % nchannels);
}
static inline void record_latency_in(uint32_t *h, long long sent_us, long long tnow) {
  if (!shm->recording) return;
  long long lat = tnow - sent_us;
  if (lat < 0 || lat > 3600LL * 1000000) { me->bad_lat++; return; }
  long long b = lat / HIST_US;
  h[b < HIST_N ? b : HIST_N - 1]++;
}
static inline void record_latency(long long sent_us, long long tnow) { record_latency_in(hist, sent_us, tnow); }
/* relay: the send time in us a frame's "ref":<digits> carries (0: none) */
static long long frame_ref(const char *p, size_t n) {
  const char *q = memmem(p, n, "\"ref\":", 6);
  long long ts = 0;
  if (q)
    for (q += 6; q < p + n && *q >= '0' && *q <= '9'; q++) ts = ts * 10 + (*q - '0');
  return ts;
}
/* every "ts=<digits>" in p[0..n) is one delivery */
static void count_deliveries(const char *p, size_t n, long long tnow) {
  const char *end = p + n;
  while (p < end) {
    const char *q = memmem(p, (size_t)(end - p), "ts=", 3);
    if (!q) break;
    q += 3;
    long long ts = 0;
    while (q < end && *q >= '0' && *q <= '9') ts = ts * 10 + (*q++ - '0');
    me->delivered++;
    me->last_us = tnow;
    record_latency(ts, tnow);
    p = q;
  }
}
static void became_ready(int fd) {
  conn_t *c = &conns[fd];
  if (c->sub == SUB_READY) return;
  c->sub = SUB_READY;
  my_inflight--;
  me->connected++;
}
static void relay_send(int fd);

/* One frame of Chloe's (WebSocket message, SSE data, or a whole long-poll
 * answer): count deliveries, notice subscribed / error / ack frames. */
static void on_frame(int fd, const char *p, size_t n, long long tnow) {
  conn_t *c = &conns[fd];
  static const char T[] = "{\"type\":\"";
  char kind = 0;
  if (n > 10 && !memcmp(p, T, 9)) kind = p[9];
  if (kind == 'm') { count_deliveries(p, n, tnow); return; } /* message: the hot path */
  if (kind == 'a' && relay && n > 18 && !memcmp(p + 9, "accepted\"", 9)) {
    /* a durable spool has it: not an ack (the next send waits for that) */
    me->accepted++;
    record_latency_in(hist_acc, frame_ref(p, n), tnow);
    return;
  }
  if (kind == 'a' && relay && n > 13 && !memcmp(p + 9, "ack\"", 4)) { /* ack: "ref":<send us> */
    me->delivered++;
    record_latency(frame_ref(p, n), tnow);
    if (c->inflight > 0) c->inflight--;
    if (mode == M_SATURATE && sending) relay_send(fd);
    return;
  }
  if (kind == 'c' && relay && c->sub == SUB_WAIT) { became_ready(fd); return; }
  if (kind == 's' && !memcmp(p + 9, "subscribed\"", 11)) {
    if (c->sub == SUB_WAIT) became_ready(fd);
    return;
  }
  if (kind == 0) { /* a long-poll answer: several frames in one body */
    count_deliveries(p, n, tnow);
    if (c->sub == SUB_WAIT && memmem(p, n, "\"type\":\"subscribed\"", 19)) became_ready(fd);
  }
  if (kind == 'e' || (kind == 0 && memmem(p, n, "\"type\":\"error\"", 14))) {
    me->error_frames++;
    note_err("error frame", p, n);
    if (relay && c->inflight > 0) {
      c->inflight--;
      if (mode == M_SATURATE && sending) relay_send(fd);
    }
    if (c->sub == SUB_WAIT) conn_close(fd, 1);
  }
}

/* the value of the "event" key (JSON whitespace allowed around the colon) */
static const char *pusher_event(const char *p, size_t n) {
  const char *end = p + n, *q = p;
  for (int k = 0; k < 8 && q < end; k++) {
    const char *e = memmem(q, (size_t)(end - q), "\"event\"", 7);
    if (!e) return NULL;
    q = e + 7;
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    if (q >= end || *q != ':') continue;
    q++;
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
    if (q < end && *q == '"') return q + 1;
  }
  return NULL;
}
/* One Pusher protocol 7 message, {"event":E,"channel":C,"data":"..."} with
 * its keys in any order: an event is a delivery (its data's "ts="); the
 * pusher: and pusher_internal: ones drive the subscription. */
static void pusher_frame(int fd, const char *p, size_t n, long long tnow) {
  conn_t *c = &conns[fd];
  const char *e = pusher_event(p, n);
  if (!e) {
    me->error_frames++;
    note_err("pusher message without an event", p, n);
    return;
  }
  size_t left = (size_t)(p + n - e);
  if (left < 7 || memcmp(e, "pusher", 6)) { count_deliveries(p, n, tnow); return; } /* the hot path */
#define PUSHER_IS(name) (left >= sizeof(name) && !memcmp(e, name "\"", sizeof(name)))
  if (PUSHER_IS("pusher:connection_established")) {
    if (c->psent || c->sub != SUB_WAIT) return;
    char m[160], ch[64];
    channel_of(c->idx, ch, sizeof ch);
    int k = snprintf(m, sizeof m, "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"%s\"}}", ch);
    c->psent = 1;
    ws_send(fd, 1, m, (size_t)k);
    return;
  }
  if (PUSHER_IS("pusher_internal:subscription_succeeded")) {
    if (c->sub == SUB_WAIT && c->psent) became_ready(fd);
    return;
  }
  if (PUSHER_IS("pusher:ping")) {
    static const char PONG[] = "{\"event\":\"pusher:pong\",\"data\":{}}";
    ws_send(fd, 1, PONG, sizeof PONG - 1);
    return;
  }
  const char *q = memchr(e, '"', left);
  if (q && memmem(e, (size_t)(q - e), "error", 5)) { /* pusher:error, pusher:subscription_error */
    me->error_frames++;
    note_err("pusher error", p, n);
    if (c->sub == SUB_WAIT) conn_close(fd, 1);
  }
  /* anything else of the protocol's (pusher:pong, member_added, ...): nothing to do */
#undef PUSHER_IS
}

static void sub_send_request(int fd) {
  conn_t *c = &conns[fd];
  char req[1024], ch[64];
  int n, port = client_port(c->idx);
  channel_of(c->idx, ch, sizeof ch);
  if (proto == PR_WS)
    n = snprintf(req, sizeof req,
                 "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: Y2hsb2UtYmVuY2gta2V5IQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 port);
  else if (proto == PR_PUSHER)
    n = snprintf(req, sizeof req,
                 "GET /app/%s?protocol=7&client=loadgen&version=1&flash=false HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: Y2hsb2UtYmVuY2gta2V5IQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 app_key, port);
  else if (proto == PR_SSE)
    n = snprintf(req, sizeof req,
                 "GET /sse?channel=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n\r\n", ch, port);
  else if (c->sess[0])
    n = snprintf(req, sizeof req, "GET /poll?session=%s&cursor=%lld HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", c->sess,
                 c->cursor, port);
  else
    n = snprintf(req, sizeof req, "GET /poll?channel=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", ch, port);
  send_bytes(fd, req, (size_t)n);
}

/* a complete long-poll answer in c->bbuf */
static void lp_answer(int fd, long long tnow) {
  conn_t *c = &conns[fd];
  const char *b = c->bbuf;
  size_t n = c->blen;
  if (c->status != 200) {
    note_err(c->sub == SUB_READY ? "poll lost its session" : "poll refused", b, n);
    conn_close(fd, 1);
    return;
  }
  const char *q = memmem(b, n, "\"session\":\"", 11);
  if (q && !c->sess[0]) {
    q += 11;
    size_t k = 0;
    while (q < b + n && *q != '"' && k < sizeof c->sess - 1) c->sess[k++] = *q++;
    c->sess[k] = 0;
  }
  q = memmem(b, n, "\"cursor\":", 9);
  if (q) c->cursor = atoll(q + 9);
  on_frame(fd, b, n, tnow);
  if (conns[fd].kind == K_FREE) return;
  if (!c->sess[0]) { note_err("poll answer without session", b, n); conn_close(fd, 1); return; }
  c->blen = 0;
  sub_send_request(fd);
}

/* SSE: split the body into events, hand each data line on */
static void sse_events(int fd, long long tnow) {
  conn_t *c = &conns[fd];
  size_t off = 0;
  for (;;) {
    char *e = memmem(c->bbuf + off, c->blen - off, "\n\n", 2);
    if (!e) break;
    char *ev = c->bbuf + off;
    size_t len = (size_t)(e - ev);
    char *d = memmem(ev, len, "data: ", 6);
    if (d) on_frame(fd, d + 6, len - (size_t)(d + 6 - ev), tnow);
    if (conns[fd].kind == K_FREE) return;
    off += len + 2;
  }
  if (off) {
    memmove(c->bbuf, c->bbuf + off, c->blen - off);
    c->blen -= (uint32_t)off;
  }
}

/* ------------------------------------------------------------------ publisher */
static int last_pub_status = 0;
static void pub_response(int fd) {
  conn_t *c = &conns[fd];
  last_pub_status = c->status;
  if (c->status >= 200 && c->status < 300) {
    pub_ok++;
    const char *q = memmem(c->bbuf, c->blen, "\"delivered\":", 12);
    if (expect_all || proto == PR_PUSHER) expected += subs_of_channel(c->pch);
    else if (q) expected += atoll(q + 12);
  } else {
    pub_errors++;
    if (!first_pub_err[0]) {
      int k = snprintf(first_pub_err, ERRLEN, "HTTP %d: ", c->status);
      for (uint32_t i = 0; i < c->blen && k < ERRLEN - 1; i++) first_pub_err[k++] = c->bbuf[i] >= 32 ? c->bbuf[i] : ' ';
      first_pub_err[k] = 0;
    }
  }
  c->blen = 0;
  c->busy = 0;
}
static void hex(const unsigned char *d, unsigned int n, char *out) {
  static const char H[] = "0123456789abcdef";
  for (unsigned int i = 0; i < n; i++) {
    out[2 * i] = H[d[i] >> 4];
    out[2 * i + 1] = H[d[i] & 15];
  }
  out[2 * n] = 0;
}
/* POST /apps/ID/events, signed as the Pusher HTTP API wants; 0 if the
 * digests failed (nothing is sent then) */
static int pusher_request(int fd, const char *ch, const char *pay, char *req, size_t reqcap, int *rn) {
  char body[1024], query[512], tosign[1024], md5hex[2 * EVP_MAX_MD_SIZE + 1], sighex[2 * EVP_MAX_MD_SIZE + 1];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  int bn = snprintf(body, sizeof body, "{\"name\":\"bench-ev\",\"channel\":\"%s\",\"data\":\"%s\"}", ch, pay);
  if (!EVP_Digest(body, (size_t)bn, md, &mdlen, EVP_md5(), NULL)) return 0;
  hex(md, mdlen, md5hex);
  int qn = snprintf(query, sizeof query, "auth_key=%s&auth_timestamp=%lld&auth_version=1.0&body_md5=%s", app_key,
                    (long long)time(NULL), md5hex);
  int sn = snprintf(tosign, sizeof tosign, "POST\n/apps/%s/events\n%.*s", app_id, qn, query);
  if (!HMAC(EVP_sha256(), app_secret, (int)strlen(app_secret), (const unsigned char *)tosign, (size_t)sn, md, &mdlen))
    return 0;
  hex(md, mdlen, sighex);
  *rn = snprintf(req, reqcap,
                 "POST /apps/%s/events?%s&auth_signature=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                 "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                 app_id, query, sighex, pub_port((int)conns[fd].idx), bn, body);
  return 1;
}
static void publish_one(int fd) {
  char pay[512], ch[64], req[2048];
  int pn = snprintf(pay, sizeof pay, "ts=%lld_seq=%lld_", now_us(), published);
  while (pn < payload_len && pn < (int)sizeof pay - 1) pay[pn++] = 'x';
  pay[pn] = 0;
  long which = randomize ? (long)(rnd() % (unsigned long long)nchannels) : published;
  channel_of(which, ch, sizeof ch);
  if (proto == PR_PUSHER) {
    int rn = 0;
    if (!pusher_request(fd, ch, pay, req, sizeof req, &rn)) {
      fprintf(stderr, "loadgen: MD5 / HMAC-SHA256 failed (libcrypto)\n");
      _exit(3);
    }
    conns[fd].busy = 1;
    conns[fd].pch = nchannels <= 1 ? 0 : which % nchannels;
    published++;
    send_bytes(fd, req, (size_t)rn);
    return;
  }
  char body[1024];
  int bn = snprintf(body, sizeof body, "channel=%s&data=%s", ch, pay);
  int rn = snprintf(req, sizeof req,
                    "POST /send HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
                    pub_port((int)conns[fd].idx), secret, bn, body);
  conns[fd].busy = 1;
  conns[fd].pch = nchannels <= 1 ? 0 : which % nchannels;
  published++;
  send_bytes(fd, req, (size_t)rn);
}

/* relay: one {"type":"send"} frame; ref is the send time in us */
static void relay_send(int fd) {
  conn_t *c = &conns[fd];
  if (c->kind != K_SUB || c->sub != SUB_READY) return;
  if (relay_sent >= max_msgs) return;
  char pay[512], fr[1024];
  long long t = now_us();
  int pn = snprintf(pay, sizeof pay, "ts=%lld_seq=%lld_", t, relay_sent);
  while (pn < payload_len && pn < (int)sizeof pay - 1) pay[pn++] = 'x';
  pay[pn] = 0;
  int n = snprintf(fr, sizeof fr, "{\"type\":\"send\",\"data\":\"%s\",\"ref\":%lld}", pay, t);
  c->inflight++;
  relay_sent++;
  ws_send(fd, 1, fr, (size_t)n);
}

/* ------------------------------------------------------------------ http parsing */
/* The response head is complete in p[0..hlen): note status and framing. */
static void parse_head(conn_t *c, const char *p, size_t hlen) {
  c->status = (hlen > 12 && !memcmp(p, "HTTP/1.", 7)) ? atoi(p + 9) : 0;
  c->remaining = -1;
  int chunked = 0;
  c->close_after = 0;
  const char *end = p + hlen;
  for (const char *l = memchr(p, '\n', hlen); l && l + 1 < end;) {
    l++;
    const char *e = memchr(l, '\n', (size_t)(end - l));
    if (!e) break;
    if (!strncasecmp(l, "content-length:", 15)) c->remaining = atoll(l + 15);
    else if (!strncasecmp(l, "transfer-encoding:", 18) && memmem(l, (size_t)(e - l), "chunked", 7)) chunked = 1;
    else if (!strncasecmp(l, "connection:", 11) && memmem(l, (size_t)(e - l), "close", 5)) c->close_after = 1;
    l = e;
  }
  if (chunked) c->hs = H_CHSIZE;
  else if (c->remaining >= 0) c->hs = H_BODY;
  else c->hs = H_UNTILCLOSE;
}
static void body_bytes(int fd, const char *p, size_t n, long long tnow) {
  conn_t *c = &conns[fd];
  if (c->blen + n > (64u << 20)) { note_err("body too large", "", 0); conn_close(fd, 1); return; }
  ensure(&c->bbuf, &c->bcap, c->blen + n);
  memcpy(c->bbuf + c->blen, p, n);
  c->blen += (uint32_t)n;
  if (c->kind == K_SUB && proto == PR_SSE) sse_events(fd, tnow);
}
static void body_done(int fd, long long tnow) {
  conn_t *c = &conns[fd];
  c->hs = H_HDR;
  if (c->kind == K_PUB) pub_response(fd);
  else if (c->kind == K_SUB && proto == PR_LP) lp_answer(fd, tnow);
  else if (c->kind == K_SUB) { note_err("stream ended", c->bbuf, c->blen); conn_close(fd, 1); return; }
  if (conns[fd].kind != K_FREE && c->close_after) conn_close(fd, c->kind == K_SUB);
}
/* WebSocket frames from the server; returns bytes consumed */
static size_t ws_frames(int fd, const unsigned char *b, size_t len, long long tnow) {
  size_t off = 0;
  while (len - off >= 2) {
    const unsigned char *f = b + off;
    int op = f[0] & 15;
    uint64_t pl = f[1] & 127;
    size_t h = 2;
    if (pl == 126) {
      if (len - off < 4) break;
      pl = ((uint64_t)f[2] << 8) | f[3];
      h = 4;
    } else if (pl == 127) {
      if (len - off < 10) break;
      pl = 0;
      for (int i = 0; i < 8; i++) pl = (pl << 8) | f[2 + i];
      h = 10;
    }
    if (f[1] & 0x80) h += 4; /* servers do not mask, but be lenient */
    if (pl > (64u << 20)) { note_err("ws frame too large", "", 0); conn_close(fd, 1); return len; }
    if (len - off < h + pl) break;
    const char *p = (const char *)f + h;
    if (op == 1 || op == 0 || op == 2) {
      if (proto == PR_PUSHER) pusher_frame(fd, p, (size_t)pl, tnow);
      else on_frame(fd, p, (size_t)pl, tnow);
    }
    else if (op == 9) ws_send(fd, 10, p, (size_t)pl);
    else if (op == 8) {
      int code = pl >= 2 ? ((unsigned char)p[0] << 8 | (unsigned char)p[1]) : 0;
      char why[160];
      snprintf(why, sizeof why, "code %d %.*s", code, (int)(pl > 2 ? (pl - 2 < 100 ? pl - 2 : 100) : 0), p + 2);
      note_err("server closed the WebSocket", why, strlen(why));
      conn_close(fd, 1);
      return len;
    }
    if (conns[fd].kind == K_FREE) return len;
    off += h + pl;
  }
  return off;
}
/* HTTP request from chloed's relay to our app server: answer 200 */
static size_t app_requests_in(int fd, const char *p, size_t len) {
  size_t off = 0;
  static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n";
  while (off < len) {
    const char *e = memmem(p + off, len - off, "\r\n\r\n", 4);
    if (!e) break;
    size_t hlen = (size_t)(e - (p + off)) + 4;
    long long clen = 0;
    for (const char *l = p + off; l < e;) {
      const char *nl = memchr(l, '\n', (size_t)(e - l));
      if (!nl) break;
      l = nl + 1;
      if (!strncasecmp(l, "content-length:", 15)) clen = atoll(l + 15);
    }
    if (len - off < hlen + (size_t)clen) break;
    off += hlen + (size_t)clen;
    app_requests++;
    send_bytes(fd, OK, sizeof OK - 1);
    if (conns[fd].kind == K_FREE) return len;
  }
  return off;
}
/* Feed input; returns bytes consumed (the rest waits for more). */
static size_t feed(int fd, const char *p, size_t len, long long tnow) {
  conn_t *c = &conns[fd];
  if (c->kind == K_APP) return app_requests_in(fd, p, len);
  size_t off = 0;
  while (off < len && conns[fd].kind != K_FREE) {
    const char *q = p + off;
    size_t n = len - off;
    switch (c->hs) {
      case H_HDR: {
        const char *e = memmem(q, n, "\r\n\r\n", 4);
        if (!e) {
          if (n > 65536) { note_err("response head too large", q, 200); conn_close(fd, 1); return len; }
          return off;
        }
        size_t hlen = (size_t)(e - q) + 4;
        parse_head(c, q, hlen);
        off += hlen;
        if (c->kind == K_SUB && (proto == PR_WS || proto == PR_PUSHER)) {
          if (c->status != 101) { note_err("handshake refused", q, hlen); conn_close(fd, 1); return len; }
          c->hs = H_WS;
          c->sub = SUB_WAIT;
          if (!relay && proto == PR_WS) {
            char m[160], ch[64];
            channel_of(c->idx, ch, sizeof ch);
            int k = snprintf(m, sizeof m, "{\"type\":\"subscribe\",\"channel\":\"%s\"}", ch);
            ws_send(fd, 1, m, (size_t)k);
          }
          break;
        }
        if (c->kind == K_SUB && proto == PR_SSE && c->status != 200) {
          note_err("SSE refused", q, hlen);
          conn_close(fd, 1);
          return len;
        }
        if (c->kind == K_SUB && c->sub == SUB_HS) c->sub = SUB_WAIT;
        if (c->hs == H_BODY && c->remaining == 0) body_done(fd, tnow);
        break;
      }
      case H_BODY: {
        size_t k = n < (size_t)c->remaining ? n : (size_t)c->remaining;
        body_bytes(fd, q, k, tnow);
        off += k;
        c->remaining -= (long long)k;
        if (conns[fd].kind != K_FREE && c->remaining == 0) body_done(fd, tnow);
        break;
      }
      case H_CHSIZE: {
        const char *e = memmem(q, n, "\r\n", 2);
        if (!e) return off;
        c->remaining = strtoll(q, NULL, 16);
        off += (size_t)(e - q) + 2;
        c->hs = c->remaining ? H_CHDATA : H_CHTRAIL;
        break;
      }
      case H_CHDATA: {
        size_t k = n < (size_t)c->remaining ? n : (size_t)c->remaining;
        body_bytes(fd, q, k, tnow);
        off += k;
        c->remaining -= (long long)k;
        if (c->remaining == 0) c->hs = H_CHCRLF;
        break;
      }
      case H_CHCRLF:
        if (n < 2) return off;
        off += 2;
        c->hs = H_CHSIZE;
        break;
      case H_CHTRAIL: {
        const char *e = memmem(q, n, "\r\n", 2);
        if (!e) return off;
        off += (size_t)(e - q) + 2;
        if (e == q) body_done(fd, tnow);
        break;
      }
      case H_UNTILCLOSE:
        body_bytes(fd, q, n, tnow);
        off += n;
        break;
      case H_WS:
        off += ws_frames(fd, (const unsigned char *)q, n, tnow);
        return off;
    }
  }
  return off;
}

/* ------------------------------------------------------------------ connect */
static int open_socket(int to_port, long i) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (fd >= maxfd) { close(fd); errno = EMFILE; return -1; }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (nsrc > 1) { /* several source addresses: plenty of ephemeral ports */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
    src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(i % nsrc));
    bind(fd, (struct sockaddr *)&src, sizeof src);
  }
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)to_port)};
  a.sin_addr.s_addr = htonl(0x7f000001u);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) { close(fd); return -1; }
  return fd;
}
static int pub_connect(int slotno) {
  int fd = open_socket(pub_port(slotno), slotno);
  if (fd < 0) { pubfd[slotno] = -1; return -1; }
  conn_t *c = &conns[fd];
  memset(c, 0, sizeof *c);
  c->kind = K_PUB;
  c->state = S_CONNECTING;
  c->idx = slotno;
  c->busy = 1;
  struct epoll_event e = {.events = EPOLLOUT, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  pubfd[slotno] = fd;
  return fd;
}
static void start_client(void) {
  long i = my_index + (long)procs * my_started; /* global client index */
  my_started++;
  me->started++;
  int fd = open_socket(client_port(i), i);
  if (fd < 0) {
    me->failed++;
    note_err("socket/connect", strerror(errno), strlen(strerror(errno)));
    return;
  }
  conn_t *c = &conns[fd];
  memset(c, 0, sizeof *c);
  c->kind = K_SUB;
  c->state = S_CONNECTING;
  c->idx = i;
  my_inflight++;
  struct epoll_event e = {.events = EPOLLOUT, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}
static void app_accept(void) {
  for (int k = 0; k < 256; k++) {
    int fd = accept4(applisten, NULL, NULL, SOCK_NONBLOCK);
    if (fd < 0) return;
    if (fd >= maxfd) { close(fd); continue; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_t *c = &conns[fd];
    memset(c, 0, sizeof *c);
    c->kind = K_APP;
    c->state = S_OPEN;
    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  }
}

/* ------------------------------------------------------------------ loop */
static void on_event(int fd, uint32_t ev) {
  conn_t *c = &conns[fd];
  if (c->kind == K_FREE) return;
  if (c->kind == K_APPLISTEN) { app_accept(); return; }
  if (c->state == S_CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err || (ev & (EPOLLERR | EPOLLHUP))) {
      if (c->kind == K_SUB) note_err("connect", strerror(err ? err : ECONNRESET), strlen(strerror(err ? err : ECONNRESET)));
      conn_close(fd, 1);
      return;
    }
    c->state = S_OPEN;
    ep_set(fd, EPOLLIN);
    if (c->kind == K_PUB) c->busy = 0;
    else sub_send_request(fd);
    return;
  }
  if (ev & EPOLLOUT) {
    flush_out(fd);
    if (conns[fd].kind == K_FREE) return;
  }
  if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  long long tnow = now_us();
  for (int guard = 0; guard < 16; guard++) {
    size_t have = c->rlen;
    if (have) memcpy(rdbuf, c->rbuf, have);
    size_t room = sizeof rdbuf - have;
    ssize_t r = read(fd, rdbuf + have, room);
    if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
      if (c->kind == K_SUB) {
        if (c->hs == H_UNTILCLOSE && c->blen) body_done(fd, tnow);
        if (conns[fd].kind != K_FREE) note_err(r == 0 ? "server closed the connection" : "read", r == 0 ? "" : strerror(errno), r == 0 ? 0 : strlen(strerror(errno)));
      }
      if (conns[fd].kind != K_FREE) conn_close(fd, c->kind != K_APP);
      return;
    }
    if (r < 0) return; /* EAGAIN: leftover is still in c->rbuf */
    have += (size_t)r;
    c->rlen = 0;
    size_t used = feed(fd, rdbuf, have, tnow);
    if (conns[fd].kind == K_FREE) return;
    if (used < have) {
      ensure(&c->rbuf, &c->rcap, have - used);
      memcpy(c->rbuf, rdbuf + used, have - used);
      c->rlen = (uint32_t)(have - used);
    }
    if ((size_t)r < room) break; /* drained */
  }
}
static struct epoll_event evs[4096];
static void loop_once(int timeout_ms) {
  int n = epoll_wait(ep, evs, 4096, timeout_ms);
  for (int i = 0; i < n; i++) on_event(evs[i].data.fd, evs[i].events);
}
/* start connections while this process has some left and room in flight */
static void connect_more(int per_proc_conc) {
  if (shm->phase != PH_CONNECT) return;
  while (my_started < my_share && my_inflight < per_proc_conc) start_client();
  if (my_started >= my_share && my_inflight == 0) me->done = 1;
}

/* ------------------------------------------------------------------ totals */
static long long sum_of(size_t field_offset) {
  long long t = 0;
  for (int p = 0; p < procs; p++) t += *(volatile long long *)((char *)&shm->slot[p] + field_offset);
  return t;
}
#define SUM(f) sum_of(offsetof(slot_t, f))
static double percentile_ms_of(const uint32_t *h, double q, long long *count) {
  long long n = 0;
  for (int p = 0; p < procs; p++)
    for (long i = 0; i < HIST_N; i++) n += h[(size_t)p * HIST_N + i];
  *count = n;
  if (!n) return -1;
  long long want = (long long)(q * (double)n), acc = 0;
  for (long i = 0; i < HIST_N; i++) {
    for (int p = 0; p < procs; p++) acc += h[(size_t)p * HIST_N + i];
    if (acc > want) return (i + 0.5) * HIST_US / 1000.0;
  }
  return HIST_N * HIST_US / 1000.0;
}
static double max_ms_of(const uint32_t *h) {
  for (long i = HIST_N - 1; i >= 0; i--)
    for (int p = 0; p < procs; p++)
      if (h[(size_t)p * HIST_N + i]) return (i + 1) * HIST_US / 1000.0;
  return -1;
}
static double percentile_ms(double q, long long *count) { return percentile_ms_of(hist_all, q, count); }
static double max_ms(void) { return max_ms_of(hist_all); }
static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') { putchar('\\'); putchar(*s); }
    else if ((unsigned char)*s < 32) printf("\\u%04x", *s);
    else putchar(*s);
  }
  putchar('"');
}

/* ------------------------------------------------------------------ main */
static void usage(void) {
  fprintf(stderr,
          "usage: loadgen (--port PORT | --ports P1,P2,... [--pub-all]) [--proto ws|sse|longpoll|pusher] [--n N]\n"
          "               [--channels K] [--conc C] [--procs P] [--expect-all]\n"
          "               (--idle [--hold S] [--broadcast [--broadcast-timeout S]] | --saturate [--window W] | --rate R)\n"
          "               [--random] [--relay --app-port P]\n"
          "               [--pid SERVER_PID | --pids A,B,...] [--aux-pids C,D,...] [--secret S] [--warmup S] [--dur S]\n"
          "               [--settle S]\n"
          "               [--npub N] [--app-key KEY --app-id ID --app-secret SECRET (--proto pusher)]\n"
          "               [--payload BYTES] [--connect-timeout S] [--drain S] [--max-msgs N] [--nsrc N] [--seed N]\n");
  exit(2);
}
/* an app key or id as the contract allows: [A-Za-z0-9_-]{1,64} (it goes into
 * a path and a query unescaped) */
static int pusher_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 64) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
          s[i] == '-'))
      return 0;
  return 1;
}
static void child_loop(int per_proc_conc, double deadline) {
  while (shm->phase != PH_STOP && now_s() < deadline) {
    connect_more(per_proc_conc);
    loop_once(shm->phase == PH_CONNECT ? 5 : 50);
  }
  _exit(0);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && ++i)
    if (OPT("--port")) port = atoi(v);
    else if (OPT("--ports")) { nports = parse_list(v, ports, MAXPORTS); if (nports < 1) usage(); }
    else if (!strcmp(a, "--pub-all")) pub_all = 1;
    else if (!strcmp(a, "--expect-all")) expect_all = 1;
    else if (OPT("--proto")) {
      if (!strcmp(v, "ws")) proto = PR_WS;
      else if (!strcmp(v, "sse")) proto = PR_SSE;
      else if (!strcmp(v, "longpoll")) proto = PR_LP;
      else if (!strcmp(v, "pusher")) proto = PR_PUSHER;
      else usage();
    } else if (OPT("--n")) nclients = atol(v);
    else if (OPT("--channels")) nchannels = atol(v);
    else if (OPT("--conc")) conc = atoi(v);
    else if (OPT("--procs")) procs = atoi(v);
    else if (!strcmp(a, "--idle")) mode = M_IDLE;
    else if (!strcmp(a, "--saturate")) mode = M_SATURATE;
    else if (OPT("--rate")) { mode = M_RATE; rate = atof(v); }
    else if (!strcmp(a, "--random")) randomize = 1;
    else if (!strcmp(a, "--relay")) relay = 1;
    else if (OPT("--app-port")) app_port = atoi(v);
    else if (OPT("--window")) window = atof(v);
    else if (OPT("--hold")) hold_s = atof(v);
    else if (OPT("--warmup")) warmup_s = atof(v);
    else if (OPT("--dur")) dur_s = atof(v);
    else if (OPT("--settle")) settle_s = atof(v);
    else if (OPT("--drain")) drain_s = atof(v);
    else if (OPT("--connect-timeout")) connect_timeout_s = atof(v);
    else if (OPT("--pid")) { server_pids[0] = atoi(v); npids = server_pids[0] > 0 ? 1 : 0; }
    else if (OPT("--pids")) {
      int got[MAXPIDS];
      npids = parse_list(v, got, MAXPIDS);
      if (npids < 1) usage();
      for (int k = 0; k < npids; k++) server_pids[k] = (pid_t)got[k];
    }
    else if (OPT("--aux-pids")) {
      int got[MAXPIDS];
      naux = parse_list(v, got, MAXPIDS);
      if (naux < 1) usage();
      for (int k = 0; k < naux; k++) aux_pids[k] = (pid_t)got[k];
    }
    else if (!strcmp(a, "--broadcast")) broadcast = 1;
    else if (OPT("--broadcast-timeout")) broadcast_timeout_s = atof(v);
    else if (OPT("--secret")) secret = v;
    else if (OPT("--app-key")) app_key = v;
    else if (OPT("--app-id")) app_id = v;
    else if (OPT("--app-secret")) app_secret = v;
    else if (OPT("--npub")) npub = atoi(v);
    else if (OPT("--payload")) payload_len = atoi(v);
    else if (OPT("--max-msgs")) max_msgs = atoll(v);
    else if (OPT("--nsrc")) nsrc = atoi(v);
    else if (OPT("--seed")) seed = strtoul(v, NULL, 10);
    else usage();
  }
  if (nports == 0 && port > 0) ports[nports++] = port;
  if (nports > 0) port = ports[0];
  if (port <= 0 || nclients < 0 || nchannels < 1 || conc < 1) usage();
  if (relay && nports > 1) { fprintf(stderr, "--relay takes one --port\n"); exit(2); }
  if (relay && !app_port) usage();
  if (relay && proto != PR_WS) { fprintf(stderr, "--relay needs --proto ws\n"); exit(2); }
  if (broadcast && (mode != M_IDLE || relay || nchannels != 1)) {
    fprintf(stderr, "--broadcast goes with --idle and --channels 1 (not --relay)\n");
    exit(2);
  }
  if (broadcast_timeout_s < 1) broadcast_timeout_s = 1;
  if (broadcast_timeout_s > 600) broadcast_timeout_s = 600;
  if (proto == PR_PUSHER) {
    if (!app_key || !app_id || !app_secret) { fprintf(stderr, "--proto pusher needs --app-key, --app-id and --app-secret\n"); exit(2); }
    if (!pusher_name_ok(app_key) || !pusher_name_ok(app_id)) {
      fprintf(stderr, "--app-key and --app-id: 1 to 64 of [A-Za-z0-9_-]\n");
      exit(2);
    }
  }
  if (nsrc < 1) nsrc = 1;
  if (nsrc > 254) nsrc = 254; /* 127.0.0.1 .. 127.0.0.254: never beyond 127.0.0.x */
  if (npub < 1) npub = 1;
  if (npub > MAXPUB) npub = MAXPUB;
  if (payload_len < 40) payload_len = 40;
  if (payload_len > 400) payload_len = 400;
  if (procs <= 0) procs = nclients > 18000 ? (int)((nclients + 17999) / 18000) : 1;
  if (relay) procs = 1;
  if (procs > MAXPROCS) procs = MAXPROCS;
  rng_state ^= seed * 0x9E3779B97F4A7C15ULL;

  /* everything ends, whatever happens */
  double budget = connect_timeout_s + settle_s + warmup_s + dur_s + hold_s + drain_s + 60;
  if (broadcast) budget += broadcast_timeout_s + 10; /* + the publisher's connect */
  alarm((unsigned)budget);

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  maxfd = rl.rlim_cur > 1000000 ? 1000000 : (int)rl.rlim_cur;

  shm = mmap(NULL, sizeof(shared_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  hist_all = mmap(NULL, (size_t)procs * HIST_N * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  /* relay only (one process); untouched pages of an anonymous map cost nothing */
  hist_acc_all = mmap(NULL, (size_t)procs * HIST_N * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED || hist_all == MAP_FAILED || hist_acc_all == MAP_FAILED) { perror("mmap"); exit(3); }
  memset(shm, 0, sizeof *shm);
  shm->phase = PH_CONNECT;
  int per_proc_conc = conc / procs > 0 ? conc / procs : 1;
  long long rss_before = servers_rss_kb(), pss_before = servers_pss_kb(), aux_rss_before = aux_rss_kb();
  double t_start = now_s();

  for (int p = 0; p < procs; p++) shm->slot[p].pid = getpid();
  for (int p = 1; p < procs; p++) {
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); shm->phase = PH_STOP; exit(3); }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      my_index = p;
      break;
    }
    shm->slot[p].pid = pid;
  }
  me = &shm->slot[my_index];
  me->pid = getpid();
  hist = hist_all + (size_t)my_index * HIST_N;
  hist_acc = hist_acc_all + (size_t)my_index * HIST_N;
  my_share = nclients / procs + (my_index < nclients % procs ? 1 : 0);
  rng_state ^= (unsigned long long)(my_index + 1) * 0xD1B54A32D192ED03ULL;
  conns = calloc((size_t)maxfd, sizeof(conn_t));
  ep = epoll_create1(0);
  if (!conns || ep < 0) { perror("setup"); _exit(3); }
  for (int i = 0; i < MAXPUB; i++) pubfd[i] = -1;
  if (my_index > 0) child_loop(per_proc_conc, t_start + budget - 5);

  /* ---- the parent: its own share of clients, the phases, the publisher */
  if (relay) {
    applisten = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(applisten, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)app_port)};
    a.sin_addr.s_addr = htonl(0x7f000001u);
    if (bind(applisten, (struct sockaddr *)&a, sizeof a) < 0 || listen(applisten, 1024) < 0) {
      perror("app server listen");
      exit(3);
    }
    conns[applisten].kind = K_APPLISTEN;
    conns[applisten].state = S_OPEN;
    struct epoll_event e = {.events = EPOLLIN, .data.fd = applisten};
    epoll_ctl(ep, EPOLL_CTL_ADD, applisten, &e);
  }

  /* connect */
  double t0 = now_s(), last_progress = t0;
  long long last_count = -1;
  for (;;) {
    connect_more(per_proc_conc);
    loop_once(5);
    long long got = SUM(connected) + SUM(failed);
    if (got != last_count) { last_count = got; last_progress = now_s(); }
    int all_done = 1;
    for (int p = 0; p < procs; p++) all_done &= shm->slot[p].done ? 1 : 0;
    if (all_done) break;
    if (now_s() - t0 > connect_timeout_s) { fprintf(stderr, "connect timeout\n"); break; }
    if (now_s() - last_progress > 20) { fprintf(stderr, "connect stalled\n"); break; }
  }
  double connect_s = now_s() - t0;
  shm->phase = PH_RUN;
  long long connected0 = SUM(connected), failed0 = SUM(failed);
  fprintf(stderr, "loadgen: %lld/%ld connected (%lld failed) in %.1f s\n", connected0, nclients, failed0, connect_s);
  double t_settle = now_s();
  while (now_s() - t_settle < settle_s) loop_once(20);
  long long rss_after = servers_rss_kb(), pss_after = servers_pss_kb(), aux_rss_after = aux_rss_kb();
  long long connected_settled = SUM(connected);
  subs_ready = connected_settled;

  long long d0 = 0, d1 = 0;
  double wall = 0, scpu = 0, lcpu = 0, pub_rate = 0;
  long long pubs_in_window = 0, missing = 0, pub_unanswered = 0;
  double swait = 0, cb0[2], ct0[2], cb1[2], ct1[2];
  long long rss_end = -1, pss_end = -1, aux_rss_end = -1;
  double held_s = 0, acpu = 0;
  /* --broadcast */
  long long bc_expected = -1, bc_got = 0, bc_missing = 0;
  double bc_s = -1, bc_answer_ms = -1, bc_scpu = 0, bc_acpu = 0;
  int bc_status = 0;

  if (mode == M_IDLE) {
    double h0 = now_s(), sc0 = servers_cpu_s(), lc0 = loader_cpu_s(), ac0 = aux_cpu_s();
    each_cpu_mark(0);
    double sw0 = servers_wait_s();
    cpu_jiffies(cb0, ct0);
    while (now_s() - h0 < hold_s) loop_once(50);
    held_s = now_s() - h0;
    wall = held_s;
    scpu = servers_cpu_s() - sc0;
    each_cpu_mark(1);
    lcpu = loader_cpu_s() - lc0;
    swait = servers_wait_s() - sw0;
    cpu_jiffies(cb1, ct1);
    rss_end = servers_rss_kb();
    pss_end = servers_pss_kb();
    aux_rss_end = aux_rss_kb();
    acpu = aux_cpu_s() - ac0;
    d1 = d0 = SUM(delivered);
    if (broadcast) {
      /* one publisher connection, answered before anything is published */
      pub_connect(0);
      double tc = now_s();
      while (now_s() - tc < 10 && (pubfd[0] < 0 || conns[pubfd[0]].busy || conns[pubfd[0]].state != S_OPEN)) {
        if (pubfd[0] < 0 && pub_reconnects++ < 1000) pub_connect(0);
        loop_once(10);
      }
      if (pubfd[0] < 0 || conns[pubfd[0]].busy || conns[pubfd[0]].state != S_OPEN) {
        if (!first_pub_err[0]) snprintf(first_pub_err, ERRLEN, "broadcast: the publisher could not connect");
        pub_errors++;
      } else {
        for (int p = 0; p < procs; p++) shm->slot[p].last_us = 0;
        long long dd0 = SUM(delivered);
        double bsc0 = servers_cpu_s(), bac0 = aux_cpu_s();
        bc_expected = SUM(connected);
        shm->recording = 1;
        long long tpub = now_us();
        publish_one(pubfd[0]);
        double tw = now_s();
        for (;;) {
          loop_once(5);
          if (bc_answer_ms < 0 && pub_ok + pub_errors >= published) {
            bc_answer_ms = (now_us() - tpub) / 1000.0;
            bc_status = last_pub_status;
          }
          bc_got = SUM(delivered) - dd0;
          if (bc_answer_ms >= 0 && bc_got >= SUM(connected)) break; /* every client still here has it */
          if (pub_errors) break;                                    /* refused: nothing to wait for */
          if (now_s() - tw > broadcast_timeout_s) { fprintf(stderr, "loadgen: broadcast timeout\n"); break; }
        }
        shm->recording = 0;
        bc_scpu = servers_cpu_s() - bsc0;
        bc_acpu = aux_cpu_s() - bac0;
        long long last = 0;
        for (int p = 0; p < procs; p++)
          if (shm->slot[p].last_us > last) last = shm->slot[p].last_us;
        if (bc_got > 0 && last >= tpub) bc_s = (last - tpub) / 1e6;
        bc_missing = bc_expected - bc_got;
        if (bc_missing < 0) bc_missing = 0;
        fprintf(stderr, "loadgen: broadcast: %lld/%lld clients got it in %.3f s (answered HTTP %d in %.1f ms)\n",
                bc_got, bc_expected, bc_s, bc_status, bc_answer_ms);
      }
      if (!relay) pub_unanswered = published - pub_ok - pub_errors;
    }
  } else {
    double subs_per_msg = (double)connected_settled / (double)nchannels;
    if (subs_per_msg < 1) subs_per_msg = 1;
    if (!relay) {
      for (int i = 0; i < npub; i++) pub_connect(i);
      double tp = now_s();
      while (now_s() - tp < 0.3) loop_once(10);
    }
    long long tp0 = now_us();
    long long tm0 = tp0 + (long long)(warmup_s * 1e6), tm1 = tm0 + (long long)(dur_s * 1e6);
    int measuring = 0;
    long long p0 = 0, tmeas0 = 0;
    double sc0 = 0, lc0 = 0, sw0 = 0, ac0 = 0;
    long rr = 0; /* relay round robin */
    sending = 1;
    if (relay && mode == M_SATURATE) /* fill every client's window; acks refill it */
      for (int fd = 0; fd < maxfd; fd++)
        if (conns[fd].kind == K_SUB && conns[fd].sub == SUB_READY)
          for (int w = 0; w < (int)window; w++) relay_send(fd);
    for (;;) {
      long long t = now_us();
      if (!measuring && t >= tm0) {
        measuring = 1;
        shm->recording = 1;
        d0 = SUM(delivered);
        p0 = relay ? relay_sent : published;
        sc0 = servers_cpu_s();
        ac0 = aux_cpu_s();
        each_cpu_mark(0);
        lc0 = loader_cpu_s();
        sw0 = servers_wait_s();
        cpu_jiffies(cb0, ct0);
        tmeas0 = t;
      }
      if (measuring && t >= tm1) break;
      if (!relay) {
        for (int i = 0; i < npub; i++) {
          int fd = pubfd[i];
          if (fd < 0) { if (pub_reconnects++ < 1000) pub_connect(i); continue; }
          if (conns[fd].busy || conns[fd].state != S_OPEN) continue;
          if (published >= max_msgs) break;
          if (mode == M_RATE) {
            if (published >= (long long)((double)(t - tp0) / 1e6 * rate) + 1) break;
          } else {
            double outstanding = (double)published - (double)SUM(delivered) / subs_per_msg;
            if (outstanding >= window) break;
          }
          publish_one(fd);
        }
      } else if (mode == M_RATE) {
        long long target = (long long)((double)(t - tp0) / 1e6 * rate) + 1;
        for (int tries = 0; relay_sent < target && relay_sent < max_msgs && tries < maxfd; tries++) {
          rr = (rr + 1) % maxfd;
          if (conns[rr].kind == K_SUB && conns[rr].sub == SUB_READY && conns[rr].inflight < 64) relay_send((int)rr);
        }
      }
      loop_once(mode == M_RATE ? 1 : 2);
    }
    long long tmeas1 = now_us();
    sending = 0;
    d1 = SUM(delivered);
    scpu = servers_cpu_s() - sc0;
    acpu = aux_cpu_s() - ac0;
    each_cpu_mark(1);
    lcpu = loader_cpu_s() - lc0;
    swait = servers_wait_s() - sw0;
    cpu_jiffies(cb1, ct1);
    rss_end = servers_rss_kb();
    pss_end = servers_pss_kb();
    aux_rss_end = aux_rss_kb();
    shm->recording = 0;
    wall = (tmeas1 - tmeas0) / 1e6;
    pubs_in_window = (relay ? relay_sent : published) - p0;
    pub_rate = pubs_in_window / wall;
    /* drain: everything sent should arrive (bounded in time) */
    shm->phase = PH_RUN;
    double td = now_s(), last = td;
    long long lastd = SUM(delivered);
    while (now_s() - td < drain_s) {
      loop_once(20);
      long long d = SUM(delivered);
      if (d != lastd) { lastd = d; last = now_s(); }
      int busy = 0;
      for (int i = 0; i < npub; i++)
        if (pubfd[i] >= 0 && conns[pubfd[i]].busy) busy = 1;
      if (relay) {
        if (d + SUM(error_frames) >= relay_sent) break;
      } else if (!busy && d >= expected) break;
      if (now_s() - last > 5) break;
    }
    long long dtot = SUM(delivered);
    fprintf(stderr, "loadgen: drained: %lld published, %lld delivered, %lld expected\n", relay ? relay_sent : published,
            dtot, relay ? relay_sent : expected);
    missing = relay ? relay_sent - dtot - SUM(error_frames) : expected - dtot;
    if (missing < 0) missing = 0;
    if (!relay) pub_unanswered = published - pub_ok - pub_errors;
  }

  long long connected_end = SUM(connected);
  shm->phase = PH_STOP;
  for (int p = 1; p < procs; p++) {
    for (int k = 0; k < 200; k++) { /* up to 2 s each */
      if (waitpid((pid_t)shm->slot[p].pid, NULL, WNOHANG) != 0) break;
      usleep(10000);
    }
  }
  long long failed = SUM(failed), disconnects = SUM(disconnects), error_frames = SUM(error_frames);
  long long not_connected = nclients - connected0 - failed0; /* still in flight at the timeout */
  if (not_connected < 0) not_connected = 0;
  long long errors = failed + not_connected + disconnects + error_frames + pub_errors + pub_unanswered + missing +
                     bc_missing;
  long long lat_n = 0;
  double p50 = percentile_ms(0.50, &lat_n), p99 = percentile_ms(0.99, &lat_n), pmax = max_ms();
  long long deliveries = d1 - d0;
  long long acc_n = 0;
  double acc_p50 = percentile_ms_of(hist_acc_all, 0.50, &acc_n), acc_p99 = percentile_ms_of(hist_acc_all, 0.99, &acc_n);
  double acc_max = max_ms_of(hist_acc_all);
  static const char *pn[] = {"ws", "sse", "longpoll", "pusher"};
  static const char *mn[] = {"idle", "saturate", "rate"};
  printf("{\"proto\":\"%s\",\"mode\":\"%s\",\"relay\":%s,\"random\":%s,\"n\":%ld,\"channels\":%ld,\"procs\":%d,"
         "\"window\":%g,\"rate\":%g,\"connected\":%lld,\"connect_s\":%.2f,\"connected_end\":%lld,"
         "\"failed\":%lld,\"not_connected\":%lld,\"disconnects\":%lld,\"error_frames\":%lld,"
         "\"pub_errors\":%lld,\"pub_unanswered\":%lld,\"missing\":%lld,\"errors\":%lld,",
         pn[proto], mn[mode], relay ? "true" : "false", randomize ? "true" : "false", nclients, nchannels, procs,
         window, rate, connected0, connect_s, connected_end, failed, not_connected, disconnects, error_frames,
         pub_errors, pub_unanswered, missing, errors);
  printf("\"wall_s\":%.3f,\"published\":%lld,\"pub_rate\":%.2f,\"deliveries\":%lld,\"deliveries_per_s\":%.1f,"
         "\"total_published\":%lld,\"total_expected\":%lld,\"total_delivered\":%lld,\"app_requests\":%lld,"
         "\"lat_n\":%lld,\"lat_p50_ms\":%.3f,\"lat_p99_ms\":%.3f,\"lat_max_ms\":%.3f,\"bad_lat\":%lld,",
         wall, pubs_in_window, pub_rate, deliveries, wall > 0 ? deliveries / wall : 0.0, relay ? relay_sent : published,
         relay ? relay_sent : expected, SUM(delivered), app_requests, lat_n, p50, p99, pmax, SUM(bad_lat));
  printf("\"server_cpu_s\":%.3f,\"server_cpu_share\":%.3f,\"cpu_s_per_million\":%.3f,\"loader_cpu_s\":%.3f,"
         "\"loader_cpu_share\":%.3f,\"rss_before_kb\":%lld,\"rss_after_kb\":%lld,\"rss_end_kb\":%lld,"
         "\"bytes_per_conn\":%.0f,\"held_s\":%.1f,\"server_wait_share\":%.3f,\"cpu0_busy\":%.3f,"
         "\"cpu1_busy\":%.3f",
         scpu, wall > 0 ? scpu / wall : 0.0, deliveries > 0 ? scpu / (deliveries / 1e6) : -1.0, lcpu,
         wall > 0 ? lcpu / wall : 0.0, rss_before, rss_after, rss_end,
         connected_settled > 0 && rss_before >= 0 ? (double)(rss_after - rss_before) * 1024.0 / connected_settled : -1.0,
         held_s, wall > 0 ? swait / wall : 0.0, ct1[0] > ct0[0] ? (cb1[0] - cb0[0]) / (ct1[0] - ct0[0]) : -1.0,
         ct1[1] > ct0[1] ? (cb1[1] - cb0[1]) / (ct1[1] - ct0[1]) : -1.0);
  printf(",\"accepted\":%lld,\"accepted_lat_n\":%lld,\"accepted_p50_ms\":%.3f,\"accepted_p99_ms\":%.3f,"
         "\"accepted_max_ms\":%.3f", SUM(accepted), acc_n, acc_p50, acc_p99, acc_max);
  printf(",\"ports\":%d,\"pub_all\":%s,\"expect_all\":%s,\"servers\":%d,\"server_cpu_s_each\":[", nports,
         pub_all ? "true" : "false", expect_all ? "true" : "false", npids);
  for (int k = 0; k < npids; k++) printf("%s%.3f", k ? "," : "", each_cpu[k]);
  printf("],\"server_rss_end_kb_each\":[");
  for (int k = 0; k < npids; k++) printf("%s%ld", k ? "," : "", proc_rss_kb(server_pids[k]));
  printf("],\"pss_before_kb\":%lld,\"pss_after_kb\":%lld,\"pss_end_kb\":%lld", pss_before, pss_after, pss_end);
  printf(",\"aux\":%d,\"aux_rss_before_kb\":%lld,\"aux_rss_after_kb\":%lld,\"aux_rss_end_kb\":%lld,\"aux_cpu_s\":%.3f,"
         "\"aux_cpu_share\":%.4f", naux, aux_rss_before, aux_rss_after, aux_rss_end, acpu, wall > 0 ? acpu / wall : 0.0);
  if (broadcast) {
    long long bn = 0;
    double b50 = percentile_ms(0.50, &bn), b99 = percentile_ms(0.99, &bn);
    printf(",\"broadcast\":true,\"broadcast_expected\":%lld,\"broadcast_clients\":%lld,\"broadcast_missing\":%lld,"
           "\"broadcast_s\":%.4f,\"broadcast_p50_ms\":%.3f,\"broadcast_p99_ms\":%.3f,\"broadcast_answer_ms\":%.2f,"
           "\"broadcast_status\":%d,\"broadcast_server_cpu_s\":%.3f,\"broadcast_aux_cpu_s\":%.3f",
           bc_expected, bc_got, bc_missing, bc_s, b50, b99, bc_answer_ms, bc_status, bc_scpu, bc_acpu);
  }
  printf(",\"first_error\":");
  const char *fe = first_pub_err[0] ? first_pub_err : "";
  for (int p = 0; p < procs && !fe[0]; p++)
    if (shm->slot[p].first_err[0]) fe = shm->slot[p].first_err;
  json_str(fe);
  printf("}\n");
  fflush(stdout);
  return 0;
}
