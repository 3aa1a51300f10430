//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-request residency inside a proxy process, from the sock tracepoints alone.
 *
 * For one HTTP/1.1 exchange through a proxy with a downstream socket D (client -> proxy)
 * and an upstream socket U (proxy -> server):
 *
 *   sk_data_ready(D)  request arrives          t_ready
 *   recv(D)           proxy reads it           t_read
 *   send(U)           proxy forwards it        t_fwd       request leg  = t_fwd - t_ready
 *   sk_data_ready(U)  response arrives         t_resp
 *   recv(U)           proxy reads it           t_resp_read
 *   send(D)           proxy answers            now         response leg = now - t_resp
 *
 * residency = request leg + response leg: the time the exchange spent inside the proxy,
 * excluding the upstream's own time. The read-based variant starts each leg at the proxy's
 * first read instead of the arrival; the difference is the socket queueing (wake-up) time,
 * which is also kept on its own per socket and is the fallback for multiplexed protocols
 * (HTTP/2, gRPC), where requests cannot be paired with responses from timing alone.
 *
 * sk_data_ready runs in softirq context (on loopback: the sender's task), so it is keyed by
 * the socket and never by the current pid; only sockets the tracked proxies have read or
 * written carry state. A socket is downstream when its local port is one the proxies
 * listen on (userspace fills listen_ports), else upstream; for a process whose ports are
 * not known, its first act on the socket decides (a read: accepted; a write: connected).
 * The same logic is compiled for tp_btf and for raw_tp.
 */
#include "kernel.h"
#include "residency_sock.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MSG_PEEK 2
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

/* Log-linear buckets over nanoseconds: exact below 2^SUB_BITS ns, then SUB buckets per
 * power of two (1.6% wide) up to 2^MAX_EXP ns (about 34 s); larger values land in the last. */
#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define MAX_EXP 35
#define BUCKETS (SUB + (MAX_EXP - SUB_BITS) * SUB)

enum metric {
	M_RESIDENCY = 0,      /* request leg + response leg, from arrivals */
	M_RESIDENCY_READ = 1, /* the same from the proxy's first reads */
	M_REQUEST_LEG = 2,
	M_RESPONSE_LEG = 3,
	M_QUEUE_DOWN = 4,     /* arrival -> first read on downstream sockets */
	M_QUEUE_UP = 5,       /* the same on upstream sockets */
	METRICS = 6,
};

enum counter {
	C_EVENTS = 0,         /* events from tracked proxies or on their sockets */
	C_PAIRED = 1,         /* exchanges emitted into the residency histograms */
	C_NO_ARRIVAL = 2,     /* request read on a socket first seen at that read */
	C_NO_RESPONSE = 3,    /* downstream write with no upstream arrival seen */
	C_LOCAL_REPLY = 4,    /* downstream write answering a request never forwarded */
	C_UNPAIRED_FWD = 5,   /* upstream write with no pending downstream request */
	C_STALE = 6,          /* legs longer than stale_ns, not emitted */
	C_STATE_FULL = 7,     /* socket state could not be stored */
	COUNTERS = 8,
};

enum role { ROLE_DOWN = 1, ROLE_UP = 2 };

enum phase {
	IDLE = 0,
	READ = 1,      /* D: request read, not yet forwarded */
	FORWARDED = 2, /* D: forwarded, awaiting our answer; U: request sent, awaiting response */
};

/* Pairing gives up on legs longer than this; set from userspace. */
volatile const __u64 stale_ns = 10000000000ULL;

struct tracked_proc {
	/* The downstream socket whose request this process read last: the pairing fallback
	 * for proxies whose tasks migrate between threads (Go, tokio). */
	__u64 pending_sk;
	/* Non-zero when userspace put this process's listening ports in listen_ports. */
	__u32 has_ports;
	__u32 pad;
};

struct sk_state {
	__u64 peer;
	__u64 t_ready;     /* D: request arrival; U: response arrival */
	__u64 t_read;      /* D: first read of the request; U: first read of the response */
	__u64 t_fwd;       /* D: forward to upstream */
	__u64 t_resp;      /* D: response arrival on the peer */
	__u64 t_resp_read; /* D: first read of the response on the peer */
	__u64 t_next;      /* D: next request's arrival, seen before our answer's tracepoint */
	__u64 t_queue;     /* arrival not yet read, for the queueing histograms */
	__u16 lport;       /* local port, host order: what the role was decided by */
	__u8 role;
	__u8 phase;
	__u8 pad[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tracked_proc);
} tracked SEC(".maps");

/* Keyed by the sk pointer and deleted on TCP_CLOSE; LRU so that a missed close cannot fill
 * it. A reused pointer starts from the state the close left, which is none. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sk_state);
} socks SEC(".maps");

/* The downstream socket each thread read last: the pairing for proxies that keep a
 * connection and its forward on one thread (Envoy's workers). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} tid_pending SEC(".maps");

/* Local ports the tracked proxies accept connections on. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} listen_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS * BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		(*v)++;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, s;

	s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 bucket(__u64 ns)
{
	__u32 msb;

	if (ns < SUB)
		return ns;
	msb = log2_u64(ns);
	if (msb >= MAX_EXP)
		return BUCKETS - 1;
	return SUB + (msb - SUB_BITS) * SUB + ((ns >> (msb - SUB_BITS)) - SUB);
}

static __always_inline void observe(__u32 metric, __u64 ns)
{
	__u32 key = metric * BUCKETS + bucket(ns);
	__u64 *v = bpf_map_lookup_elem(&hist, &key);
	if (v)
		(*v)++;
}

static __always_inline struct tracked_proc *current_proc(__u32 *tid)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;

	*tid = (__u32)id;
	return bpf_map_lookup_elem(&tracked, &tgid);
}

static __always_inline struct sk_state *new_state(__u64 sk, __u8 role)
{
	struct sk_state s = { .role = role };

	if (bpf_map_update_elem(&socks, &sk, &s, BPF_ANY)) {
		count(C_STATE_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&socks, &sk);
}

/* new_proxy_state gives a socket first seen in a tracked proxy its state. Its role comes
 * from its local port where the proxy's listening ports are known, else from guess, what
 * the proxy's first act on it implies. */
static __always_inline struct sk_state *new_proxy_state(__u64 sk, struct tracked_proc *p, __u8 guess)
{
	__u16 port = BPF_CORE_READ((struct sock___mesh *)sk, __sk_common.skc_num);
	struct sk_state *s;

	if (p->has_ports)
		guess = bpf_map_lookup_elem(&listen_ports, &port) ? ROLE_DOWN : ROLE_UP;
	s = new_state(sk, guess);
	if (s)
		s->lport = port;
	return s;
}

static __always_inline void on_data_ready(__u64 sk)
{
	struct sk_state *s = bpf_map_lookup_elem(&socks, &sk);
	struct sk_state *d;
	__u64 now;

	if (!s)
		return;
	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	if (!s->t_queue)
		s->t_queue = now;
	if (s->role == ROLE_DOWN) {
		if (s->phase == IDLE) {
			if (!s->t_ready)
				s->t_ready = now;
		} else if (s->phase == FORWARDED && s->t_resp && !s->t_next) {
			/* The client can send its next request before our answer's send returns. */
			s->t_next = now;
		}
		return;
	}
	if (s->phase != FORWARDED || s->t_ready)
		return;
	s->t_ready = now;
	d = bpf_map_lookup_elem(&socks, &s->peer);
	if (d && d->phase == FORWARDED && !d->t_resp)
		d->t_resp = now;
}

static __always_inline void on_recv(__u64 sk, __u16 protocol, int ret, int flags)
{
	struct tracked_proc *p;
	struct sk_state *s, *d;
	__u64 now;
	__u32 tid;

	if (protocol != IPPROTO_TCP || ret <= 0 || (flags & MSG_PEEK))
		return;
	p = current_proc(&tid);
	if (!p)
		return;
	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = bpf_map_lookup_elem(&socks, &sk);
	if (!s) {
		/* A proxy's first act on an accepted connection is to read it. */
		s = new_proxy_state(sk, p, ROLE_DOWN);
		if (!s)
			return;
		/* Its arrival came before the socket had state: this one cannot be timed. */
		if (s->role == ROLE_DOWN)
			count(C_NO_ARRIVAL);
	}
	if (s->t_queue) {
		observe(s->role == ROLE_DOWN ? M_QUEUE_DOWN : M_QUEUE_UP, now - s->t_queue);
		s->t_queue = 0;
	}
	if (s->role == ROLE_DOWN) {
		if (s->phase != IDLE)
			return;
		s->phase = READ;
		s->t_read = now;
		p->pending_sk = sk;
		bpf_map_update_elem(&tid_pending, &tid, &sk, BPF_ANY);
		return;
	}
	if (s->phase != FORWARDED || !s->t_ready || s->t_read)
		return;
	s->t_read = now;
	d = bpf_map_lookup_elem(&socks, &s->peer);
	if (d && d->phase == FORWARDED && !d->t_resp_read)
		d->t_resp_read = now;
}

static __always_inline struct sk_state *pending_down(__u64 *cand)
{
	struct sk_state *d;

	if (!*cand)
		return 0;
	d = bpf_map_lookup_elem(&socks, cand);
	if (d && d->role == ROLE_DOWN && d->phase == READ)
		return d;
	return 0;
}

static __always_inline void forward(struct tracked_proc *p, __u32 tid, __u64 sk, struct sk_state *u, __u64 now)
{
	struct sk_state *d;
	__u64 dsk = u->peer, *t;

	/* A connection pool that keeps U for one D pairs by that; otherwise the thread's last
	 * read, then the process's. A candidate counts only if its request is still unforwarded. */
	d = pending_down(&dsk);
	if (!d) {
		t = bpf_map_lookup_elem(&tid_pending, &tid);
		if (t) {
			dsk = *t;
			d = pending_down(&dsk);
		}
	}
	if (!d) {
		dsk = p->pending_sk;
		d = pending_down(&dsk);
	}
	u->phase = FORWARDED;
	u->t_ready = 0;
	u->t_read = 0;
	if (!d) {
		u->peer = 0;
		count(C_UNPAIRED_FWD);
		return;
	}
	u->peer = dsk;
	d->peer = sk;
	d->phase = FORWARDED;
	d->t_fwd = now;
	d->t_resp = 0;
	d->t_resp_read = 0;
	d->t_next = 0;
}

static __always_inline void answer(struct sk_state *d, __u64 now)
{
	__u64 req, resp, req_r, resp_r;

	if (d->phase == READ) {
		count(C_LOCAL_REPLY);
	} else if (!d->t_resp) {
		count(C_NO_RESPONSE);
	} else if (d->t_ready) {
		req = d->t_fwd - d->t_ready;
		resp = now - d->t_resp;
		if (req > stale_ns || resp > stale_ns) {
			count(C_STALE);
		} else {
			observe(M_REQUEST_LEG, req);
			observe(M_RESPONSE_LEG, resp);
			observe(M_RESIDENCY, req + resp);
			if (d->t_resp_read) {
				req_r = d->t_fwd - d->t_read;
				resp_r = now - d->t_resp_read;
				observe(M_RESIDENCY_READ, req_r + resp_r);
			}
			count(C_PAIRED);
		}
	}
	d->phase = IDLE;
	/* Only an arrival after the response reached us can be the next request. */
	d->t_ready = d->t_next;
	d->t_next = 0;
	d->t_resp = 0;
	d->t_resp_read = 0;
}

static __always_inline void on_send(__u64 sk, __u16 protocol, int ret)
{
	struct tracked_proc *p;
	struct sk_state *s;
	__u64 now;
	__u32 tid;

	if (protocol != IPPROTO_TCP || ret <= 0)
		return;
	p = current_proc(&tid);
	if (!p)
		return;
	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = bpf_map_lookup_elem(&socks, &sk);
	if (!s) {
		/* A proxy's first act on a connection it opened is to write a request. */
		s = new_proxy_state(sk, p, ROLE_UP);
		if (!s)
			return;
	}
	if (s->role == ROLE_UP) {
		/* Further writes before any response are the same request's body. */
		if (s->phase == FORWARDED && !s->t_ready)
			return;
		forward(p, tid, sk, s, now);
		return;
	}
	/* Further writes of the same answer find the socket idle and are ignored: the leg ends
	 * at the first byte written. */
	if (s->phase != IDLE)
		answer(s, now);
}

static __always_inline void on_state(__u64 sk, __u16 protocol, int newstate)
{
	struct tracked_proc *p;
	__u32 tid;

	if (protocol != IPPROTO_TCP)
		return;
	if (newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&socks, &sk);
		return;
	}
	if (newstate != TCP_SYN_SENT)
		return;
	/* connect() runs in the proxy's task: the socket is upstream from its first byte. */
	p = current_proc(&tid);
	if (p)
		new_proxy_state(sk, p, ROLE_UP);
}

SEC("tp_btf/sk_data_ready")
int BPF_PROG(tp_btf_sk_data_ready, const struct sock *sk)
{
	on_data_ready((__u64)sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tp_btf_sock_recv_length, struct sock *sk, int ret, int flags)
{
	on_recv((__u64)sk, sk->sk_protocol, ret, flags);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_btf_sock_send_length, struct sock *sk, int ret, int flags)
{
	on_send((__u64)sk, sk->sk_protocol, ret);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_btf_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	on_state((__u64)sk, sk->sk_protocol, newstate);
	return 0;
}

SEC("raw_tp/sk_data_ready")
int BPF_PROG(raw_tp_sk_data_ready, const struct sock *sk)
{
	on_data_ready((__u64)sk);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(raw_tp_sock_recv_length, struct sock *sk, int ret, int flags)
{
	on_recv((__u64)sk, BPF_CORE_READ(sk, sk_protocol), ret, flags);
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(raw_tp_sock_send_length, struct sock *sk, int ret, int flags)
{
	on_send((__u64)sk, BPF_CORE_READ(sk, sk_protocol), ret);
	return 0;
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(raw_tp_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	on_state((__u64)sk, BPF_CORE_READ(sk, sk_protocol), newstate);
	return 0;
}
