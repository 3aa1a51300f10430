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
 * which is also kept on its own per socket.
 *
 * sk_data_ready runs in softirq context (on loopback: the sender's task), so it is keyed by
 * the socket and never by the current pid; only sockets the tracked proxies have read or
 * written carry state. A socket is downstream when its local port is one the proxies
 * listen on (userspace fills listen_ports), else upstream; for a process whose ports are
 * not known, its first act on the socket decides (a read: accepted; a write: connected).
 * The same logic is compiled for tp_btf and for raw_tp.
 *
 * Connection-level queueing, the fallback where requests and responses cannot be paired:
 * a burst starts when the proxy reads data that arrived on one side (downstream or
 * upstream) and ends at the proxy's next write on the other side; arrival -> that write is
 * recorded per direction (M_FORWARD_REQUEST, M_FORWARD_RESPONSE). It needs no framing, so it
 * holds for HTTP/2, gRPC and opaque TCP alike.
 *
 * Cost: the hooks fire for every socket on the node, most of them not a tracked proxy's.
 * Those runs must end after a load or two: the task's tgid is checked in an array indexed by
 * its low bits before any hash lookup, and a socket's state is looked up only when a counting
 * filter (sk_filter) says some tracked socket may live there.
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
	M_FORWARD_REQUEST = 6,  /* downstream arrival -> next write upstream, per burst */
	M_FORWARD_RESPONSE = 7, /* upstream arrival -> next write downstream, per burst */
	METRICS = 8,
};

enum counter {
	C_EVENTS = 0,         /* events from tracked proxies or on their sockets */
	C_PAIRED = 1,         /* exchanges emitted into the residency histograms */
	C_NO_ARRIVAL = 2,     /* request read on a socket first seen at that read */
	C_NO_RESPONSE = 3,    /* downstream write with no upstream arrival seen */
	C_LOCAL_REPLY = 4,    /* downstream write answering a request never forwarded */
	C_UNPAIRED_FWD = 5,   /* upstream write with no pending downstream request */
	C_STALE = 6,          /* legs or bursts longer than stale_ns, not emitted */
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
	/* The process, in its slot of procs; 0 for an empty slot, TGID_SHARED for a slot two
	 * tracked processes map to, whose state is then in tracked. */
	__u32 tgid;
	/* Non-zero when userspace put this process's listening ports in listen_ports. */
	__u32 has_ports;
	/* The downstream socket whose request this process read last: the pairing fallback
	 * for proxies whose tasks migrate between threads (Go, tokio). */
	__u64 pending_sk;
	/* The last socket of each role (index role - 1) this process read a burst from: where
	 * a write on the other side looks for the burst it ends. */
	__u64 burst_sk[2];
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
	__u64 t_burst;     /* arrival of the first data read since the last forward of it */
	__u16 lport;       /* local port, host order: what the role was decided by */
	__u8 role;
	__u8 phase;
	__u8 pad[4];
};

/* The tracked processes, each in the slot of procs its tgid's low bits select, so that
 * every event's first question (is this task a tracked proxy?) is one inlined array load
 * and a compare, not a hash lookup. Userspace fills the slots; all tracked processes are
 * also keys of tracked, which holds the state of those whose slot is shared. */
#define TGID_SLOTS (1 << 14)
#define TGID_MASK (TGID_SLOTS - 1)
#define TGID_SHARED 0xFFFFFFFFU
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TGID_SLOTS);
	__type(key, __u32);
	__type(value, struct tracked_proc);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tracked_proc);
} tracked SEC(".maps");

/* Keyed by the sk pointer and deleted on TCP_CLOSE, which every TCP socket passes through
 * before it is freed; a plain hash, whose lookups do not write (an LRU's mark their entry,
 * a shared cache line between the CPUs). A tracer lives for one measurement, so should a
 * close ever be missed, the cost is an entry until then; a full map is counted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sk_state);
} socks SEC(".maps");

/* Per thread of a tracked proxy: the pairing for proxies that keep a connection and its
 * forward on one thread (Envoy's workers). */
struct tid_state {
	__u64 pending_sk;  /* the downstream socket whose request this thread read last */
	__u64 burst_sk[2]; /* as tracked_proc.burst_sk, for this thread */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tid_state);
} tid_pending SEC(".maps");

/* Which sockets may have state in socks, so that the others' events skip the hash lookup:
 * per slot of a hash of the socket's identity, how many sockets there were given state
 * minus those deleted on close. Zero means none; a collision costs a wasted lookup, never a
 * missed one. The identity is the socket pointer on raw_tp (a plain number there), but the
 * connection's addresses and remote port on tp_btf: there the pointer is a trusted one,
 * which the verifier will not let be hashed, and those fields share the cache line the
 * receive path has just read to find the socket, where socket local storage would cost a
 * cold line. Not the local port: at the close's tracepoint it is not always what it was
 * while the connection lived (the port can be released first), and a socket whose count
 * is taken from the wrong slot keeps its state past the close. */
#define SK_SLOTS (1 << 16)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SK_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} sk_filter SEC(".maps");

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
	__u32 slot = tgid & TGID_MASK;
	struct tracked_proc *p = bpf_map_lookup_elem(&procs, &slot);

	if (!p || !p->tgid)
		return 0;
	*tid = (__u32)id;
	if (p->tgid == tgid)
		return p;
	if (p->tgid != TGID_SHARED)
		return 0;
	return bpf_map_lookup_elem(&tracked, &tgid);
}

/* sk_ident is what the socket filter hashes: see sk_filter. */
static __always_inline __u64 sk_ident(__u64 sk, const int btf)
{
	struct sock___mesh *s = (struct sock___mesh *)sk;

	if (!btf)
		return sk;
	return s->__sk_common.skc_addrpair ^ ((__u64)s->__sk_common.skc_dport << 16);
}

static __always_inline __u32 *sk_filter_count(__u64 sk, const int btf)
{
	/* Fibonacci hashing: slab pointers share their low bits, addresses their high ones. */
	__u32 slot = (__u32)((sk_ident(sk, btf) * 0x9E3779B97F4A7C15ULL) >> 48);

	return bpf_map_lookup_elem(&sk_filter, &slot);
}

/* sock_state is the state of a socket that may have some: the filter first, a hash lookup
 * only when it allows. */
static __always_inline struct sk_state *sock_state(__u64 sk, const int btf)
{
	__u32 *n = sk_filter_count(sk, btf);

	if (!n || !*n)
		return 0;
	return bpf_map_lookup_elem(&socks, &sk);
}

static __always_inline struct sk_state *new_state(__u64 sk, __u8 role, const int btf)
{
	struct sk_state s = { .role = role };
	__u32 *n;

	if (bpf_map_update_elem(&socks, &sk, &s, BPF_ANY)) {
		count(C_STATE_FULL);
		return 0;
	}
	n = sk_filter_count(sk, btf);
	if (n)
		__sync_fetch_and_add(n, 1);
	return bpf_map_lookup_elem(&socks, &sk);
}

/* forget drops a closing socket's state. */
static __always_inline void forget(__u64 sk, const int btf)
{
	__u32 *n = sk_filter_count(sk, btf);

	if (n && *n && !bpf_map_delete_elem(&socks, &sk))
		__sync_fetch_and_add(n, -1);
}

static __always_inline struct tid_state *thread_state(__u32 tid)
{
	struct tid_state *t = bpf_map_lookup_elem(&tid_pending, &tid);
	struct tid_state zero = {};

	if (t)
		return t;
	bpf_map_update_elem(&tid_pending, &tid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&tid_pending, &tid);
}

/* begin_burst notes data read from sk that arrived at arrival: the start of a burst, unless
 * one read earlier from the same socket is still waiting for its forward. */
static __always_inline void begin_burst(struct tracked_proc *p, struct tid_state *t, __u64 sk, struct sk_state *s, __u64 arrival)
{
	__u32 i = s->role == ROLE_DOWN ? 0 : 1;

	if (!s->t_burst)
		s->t_burst = arrival;
	p->burst_sk[i] = sk;
	if (t)
		t->burst_sk[i] = sk;
}

static __always_inline int take_burst(__u64 cand, __u8 role, __u32 metric, __u64 now)
{
	struct sk_state *b;
	__u64 lat;

	if (!cand)
		return 0;
	b = bpf_map_lookup_elem(&socks, &cand);
	if (!b || b->role != role || !b->t_burst)
		return 0;
	lat = now - b->t_burst;
	b->t_burst = 0;
	if (lat > stale_ns)
		count(C_STALE);
	else
		observe(metric, lat);
	return 1;
}

/* end_burst: a write on a socket of role ends the burst waiting on the other side, this
 * thread's first, else the process's last. */
static __always_inline void end_burst(struct tracked_proc *p, struct tid_state *t, __u8 role, __u64 now)
{
	__u8 other = role == ROLE_UP ? ROLE_DOWN : ROLE_UP;
	__u32 i = other == ROLE_DOWN ? 0 : 1;
	__u32 metric = role == ROLE_UP ? M_FORWARD_REQUEST : M_FORWARD_RESPONSE;

	if (t && take_burst(t->burst_sk[i], other, metric, now))
		return;
	take_burst(p->burst_sk[i], other, metric, now);
}

/* new_proxy_state gives a socket first seen in a tracked proxy its state. Its role comes
 * from its local port where the proxy's listening ports are known, else from guess, what
 * the proxy's first act on it implies. */
static __always_inline struct sk_state *new_proxy_state(__u64 sk, struct tracked_proc *p, __u8 guess, const int btf)
{
	__u16 port = BPF_CORE_READ((struct sock___mesh *)sk, __sk_common.skc_num);
	struct sk_state *s;

	if (p->has_ports)
		guess = bpf_map_lookup_elem(&listen_ports, &port) ? ROLE_DOWN : ROLE_UP;
	s = new_state(sk, guess, btf);
	if (s)
		s->lport = port;
	return s;
}

static __always_inline void on_data_ready(__u64 sk, const int btf)
{
	struct sk_state *s = sock_state(sk, btf);
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

/* The protocol is read only once the task is known to be tracked: on raw_tp that read is a
 * helper call. */
#define SK_PROTOCOL_BTF(sk) ((sk)->sk_protocol)
#define SK_PROTOCOL_CORE(sk) BPF_CORE_READ((sk), sk_protocol)

#define ON_RECV(sk, proto_of, btf, ret, flags)                                  \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		if ((ret) <= 0 || ((flags) & MSG_PEEK))                      \
			break;                                               \
		p_ = current_proc(&tid_);                                    \
		if (!p_ || proto_of(sk) != IPPROTO_TCP)                      \
			break;                                               \
		on_recv(p_, tid_, (__u64)(sk), btf);                         \
	} while (0)

#define ON_SEND(sk, proto_of, btf, ret)                                      \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		if ((ret) <= 0)                                              \
			break;                                               \
		p_ = current_proc(&tid_);                                    \
		if (!p_ || proto_of(sk) != IPPROTO_TCP)                      \
			break;                                               \
		on_send(p_, tid_, (__u64)(sk), btf);                         \
	} while (0)

static __always_inline void on_recv(struct tracked_proc *p, __u32 tid, __u64 sk, const int btf)
{
	struct sk_state *s, *d;
	struct tid_state *t;
	__u64 now, arrival;

	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = bpf_map_lookup_elem(&socks, &sk);
	if (!s) {
		/* A proxy's first act on an accepted connection is to read it. */
		s = new_proxy_state(sk, p, ROLE_DOWN, btf);
		if (!s)
			return;
		/* Its arrival came before the socket had state: this one cannot be timed. */
		if (s->role == ROLE_DOWN)
			count(C_NO_ARRIVAL);
	}
	t = thread_state(tid);
	arrival = s->t_queue;
	if (arrival) {
		observe(s->role == ROLE_DOWN ? M_QUEUE_DOWN : M_QUEUE_UP, now - arrival);
		s->t_queue = 0;
		begin_burst(p, t, sk, s, arrival);
	}
	if (s->role == ROLE_DOWN) {
		if (s->phase != IDLE)
			return;
		s->phase = READ;
		s->t_read = now;
		p->pending_sk = sk;
		if (t)
			t->pending_sk = sk;
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

static __always_inline void forward(struct tracked_proc *p, struct tid_state *t, __u64 sk, struct sk_state *u, __u64 now)
{
	struct sk_state *d;
	__u64 dsk = u->peer;

	/* A connection pool that keeps U for one D pairs by that; otherwise the thread's last
	 * read, then the process's. A candidate counts only if its request is still unforwarded. */
	d = pending_down(&dsk);
	if (!d && t) {
		dsk = t->pending_sk;
		d = pending_down(&dsk);
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

static __always_inline void on_send(struct tracked_proc *p, __u32 tid, __u64 sk, const int btf)
{
	struct sk_state *s;
	struct tid_state *t;
	__u64 now;

	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = bpf_map_lookup_elem(&socks, &sk);
	if (!s) {
		/* A proxy's first act on a connection it opened is to write a request. */
		s = new_proxy_state(sk, p, ROLE_UP, btf);
		if (!s)
			return;
	}
	t = bpf_map_lookup_elem(&tid_pending, &tid);
	end_burst(p, t, s->role, now);
	if (s->role == ROLE_UP) {
		/* Further writes before any response are the same request's body. */
		if (s->phase == FORWARDED && !s->t_ready)
			return;
		forward(p, t, sk, s, now);
		return;
	}
	/* Further writes of the same answer find the socket idle and are ignored: the leg ends
	 * at the first byte written. */
	if (s->phase != IDLE)
		answer(s, now);
}

/* Only the close (state to forget) and the connect (an upstream born) matter; every other
 * transition, and every task but a tracked one's connect, ends before reading the socket.
 * On tp_btf the connect is left to the first write, which gives the same role: the filter
 * hashes the ports there, and connect() picks the local port after this transition. */
#define ON_STATE(sk, proto_of, btf, newstate)                                \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		if ((newstate) == TCP_CLOSE) {                               \
			forget((__u64)(sk), btf);                            \
			break;                                               \
		}                                                            \
		if ((newstate) != TCP_SYN_SENT || (btf))                     \
			break;                                               \
		/* connect() runs in the proxy's task: the socket is         \
		 * upstream from its first byte. */                          \
		p_ = current_proc(&tid_);                                    \
		if (p_ && proto_of(sk) == IPPROTO_TCP)                       \
			new_proxy_state((__u64)(sk), p_, ROLE_UP, btf);      \
	} while (0)

#define BTF 1
#define RAW 0

SEC("tp_btf/sk_data_ready")
int BPF_PROG(tp_btf_sk_data_ready, const struct sock *sk)
{
	on_data_ready((__u64)sk, BTF);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tp_btf_sock_recv_length, struct sock *sk, int ret, int flags)
{
	ON_RECV(sk, SK_PROTOCOL_BTF, BTF, ret, flags);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_btf_sock_send_length, struct sock *sk, int ret, int flags)
{
	ON_SEND(sk, SK_PROTOCOL_BTF, BTF, ret);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_btf_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	ON_STATE(sk, SK_PROTOCOL_BTF, BTF, newstate);
	return 0;
}

SEC("raw_tp/sk_data_ready")
int BPF_PROG(raw_tp_sk_data_ready, const struct sock *sk)
{
	on_data_ready((__u64)sk, RAW);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(raw_tp_sock_recv_length, struct sock *sk, int ret, int flags)
{
	ON_RECV(sk, SK_PROTOCOL_CORE, RAW, ret, flags);
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(raw_tp_sock_send_length, struct sock *sk, int ret, int flags)
{
	ON_SEND(sk, SK_PROTOCOL_CORE, RAW, ret);
	return 0;
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(raw_tp_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	ON_STATE(sk, SK_PROTOCOL_CORE, RAW, newstate);
	return 0;
}
