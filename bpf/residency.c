//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-request residency inside a proxy process, from the socket and TCP tracepoints.
 *
 * For one HTTP/1.1 exchange through a proxy with a downstream socket D (client -> proxy)
 * and an upstream socket U (proxy -> server):
 *
 *   read(D)   proxy reads the request, which arrived at    t_ready   (read at t_read)
 *   send(U)   proxy forwards it                            t_fwd     request leg  = t_fwd - t_ready
 *   read(U)   proxy reads the response, which arrived at   t_ready   (read at t_read)
 *   send(D)   proxy answers                                now       response leg = now - t_ready(U)
 *
 * A read is tcp_rcv_space_adjust, which TCP runs as the application copies data out, before
 * it refreshes the socket's clock (tcp_clock_cache): at that moment the clock still says when
 * the socket last received a segment, which is when the message arrived. No hook has to run
 * at the arrival itself, in the sender's softirq on another CPU, so only the proxy's own
 * tasks touch its sockets' state, and a request costs the tracer four tracked events. The
 * clock is also moved by a transmit on the same socket: between a message's arrival and its
 * read there is none in HTTP/1.1, where the peer waits for the answer.
 *
 * Each socket keeps the times of its own events (U holds the response's arrival and read),
 * and the answer on D alone looks at its peer: one line of state per socket.
 *
 * residency = request leg + response leg: the time the exchange spent inside the proxy,
 * excluding the upstream's own time. The read-based variant starts each leg at the proxy's
 * first read instead of the arrival; the difference is the socket queueing (wake-up) time,
 * which is also kept on its own per socket.
 *
 * A socket is downstream when its local port is one the proxies listen on (userspace fills
 * listen_ports), else upstream; for a process whose ports are not known, its first act on
 * the socket decides (a read: accepted; a write: connected). The same logic is compiled for
 * tp_btf and for raw_tp.
 *
 * Connection-level queueing, the fallback where requests and responses cannot be paired:
 * a burst starts when the proxy reads data that arrived on one side (downstream or
 * upstream) and ends at the proxy's next write on the other side; arrival -> that write is
 * recorded per direction (M_FORWARD_REQUEST, M_FORWARD_RESPONSE). It needs no framing, so it
 * holds for HTTP/2, gRPC and opaque TCP alike. There the proxy writes on a socket while data
 * waits on it, which moves the socket's clock, so arrivals are taken from sk_data_ready,
 * which then runs too (on the sockets' softirq, keyed by the socket, never by the pid).
 *
 * Cost: the hooks fire for every TCP socket on the node (sock_send_length for every socket),
 * most of them not a tracked proxy's. Those runs must end after a load or two: the task's
 * tgid is checked in an array indexed by its low bits, and a socket is looked for in the two
 * slots of a direct-mapped table its address selects, whose keys share one cache line. Every
 * lookup is an array load the JIT inlines: a hash map's bucket walk and its extra cache lines
 * cost a tracked proxy's events more than the rest of their work together.
 */
#include "kernel.h"
#include "residency_sock.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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
	C_NO_RESPONSE = 2,    /* downstream write with no upstream arrival seen */
	C_LOCAL_REPLY = 3,    /* downstream write answering a request never forwarded */
	C_UNPAIRED_FWD = 4,   /* upstream write with no pending downstream request */
	C_STALE = 5,          /* legs or bursts longer than stale_ns, not emitted */
	C_STATE_FULL = 6,     /* socket state could not be stored */
	COUNTERS = 7,
};

enum role { ROLE_DOWN = 1, ROLE_UP = 2 };

enum phase {
	IDLE = 0,
	READ = 1,      /* D: request read, not yet forwarded */
	FORWARDED = 2, /* D: forwarded, awaiting our answer; U: request sent, awaiting response */
};

/* Pairing gives up on legs longer than this; set from userspace. */
volatile const __u64 stale_ns = 10000000000ULL;

/* Whether to measure connection-level queueing (M_FORWARD_*), which costs every write a
 * second socket lookup; set from userspace for loads whose requests cannot be paired. */
volatile const __u8 queueing = 0;

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
	__u8 pad[32];
};

/* The per-process and per-thread slots are a cache line each: a proxy's workers have
 * adjacent ids, and slots sharing a line would bounce it between the workers' CPUs on
 * every event. */
_Static_assert(sizeof(struct tracked_proc) == 64, "a process's slot is one cache line");

struct sk_state {
	__u64 peer;
	__u64 t_ready;     /* D: request arrival; U: response arrival */
	__u64 t_read;      /* D: first read of the request; U: first read of the response */
	__u64 t_fwd;       /* D: forward to upstream */
	__u64 t_queue;     /* arrival not yet read, from sk_data_ready (queueing only) */
	__u64 t_burst;     /* arrival of the first data read since the last forward of it */
	__u16 lport;       /* local port, host order: what the role was decided by */
	__u8 role;
	__u8 phase;
	__u8 pad[12];
};

_Static_assert(sizeof(struct sk_state) == 64, "a socket's state is one cache line");

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
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tracked_proc);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tracked_proc);
} tracked SEC(".maps");

/* Socket state, direct-mapped by the socket's address: a socket may live in either slot of
 * the pair its address hashes to (sk_pair), and sk_keys says which socket each slot holds (0:
 * free). A socket is given a slot at its proxy's first act on it and gives it back at
 * TCP_CLOSE, which every TCP socket passes through before it is freed. Should both slots be
 * taken, the socket goes untraced and C_STATE_FULL counts it. A tracer lives for one
 * measurement, so should a close ever be missed, the cost is a slot until then. */
#define SK_BITS 16
#define SK_SLOTS (1 << SK_BITS)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SK_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sk_keys SEC(".maps");

/* Mappable, so that its values start on a page and each socket's state is one cache line
 * (so too procs and threads). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SK_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct sk_state);
} socks SEC(".maps");

/* Per thread of a tracked proxy, in the slot its tid's low bits select: the pairing for
 * proxies that keep a connection and its forward on one thread (Envoy's workers). A thread
 * takes its slot over from another that maps there; the other then pairs by its process. */
struct tid_state {
	__u64 pending_sk;  /* the downstream socket whose request this thread read last */
	__u64 burst_sk[2]; /* as tracked_proc.burst_sk, for this thread */
	__u32 tid;
	__u8 pad[36];
};

_Static_assert(sizeof(struct tid_state) == 64, "a thread's slot is one cache line");

#define TID_SLOTS (1 << 14)
#define TID_MASK (TID_SLOTS - 1)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TID_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tid_state);
} threads SEC(".maps");

/* One word per CPU through which a socket's address passes to become a plain number: on
 * tp_btf the sk argument is a trusted pointer, which the verifier lets be stored but not
 * hashed. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} scratch SEC(".maps");

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

/* sk_id is the socket's address as a plain number: see scratch. */
static __always_inline __u64 sk_id(const void *sk, const int btf)
{
	__u32 zero = 0;
	__u64 *v;

	if (!btf)
		return (__u64)sk;
	v = bpf_map_lookup_elem(&scratch, &zero);
	if (!v)
		return 0;
	*(volatile __u64 *)v = (__u64)sk;
	return *(volatile __u64 *)v;
}

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* tcp_clock is the socket's TCP clock (see the header). On tp_btf the cast compiles to a
 * plain load; raw_tp reads it with a helper. */
static __always_inline __u64 tcp_clock(const void *sk, const int btf)
{
	const struct tcp_sock___mesh *tp;

	if (!btf)
		return BPF_CORE_READ((const struct tcp_sock___mesh *)sk, tcp_clock_cache);
	tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock___mesh));
	return tp->tcp_clock_cache;
}

/* sk_pair is the first of the two slots a socket may live in. Fibonacci hashing: slab
 * addresses share their low bits. */
static __always_inline __u32 sk_pair(__u64 id)
{
	return (__u32)((id * 0x9E3779B97F4A7C15ULL) >> (64 - SK_BITS)) & ~1U;
}

/* sock_state is the state of socket id, or 0 when it has none. */
static __always_inline struct sk_state *sock_state(__u64 id)
{
	__u32 slot = sk_pair(id);
	__u64 *k = bpf_map_lookup_elem(&sk_keys, &slot);

	if (!id || !k)
		return 0;
	if (*k != id) {
		slot |= 1;
		k = bpf_map_lookup_elem(&sk_keys, &slot);
		if (!k || *k != id)
			return 0;
	}
	return bpf_map_lookup_elem(&socks, &slot);
}

/* new_state gives socket id a free slot of its pair. A slot's state is zeroed when it is
 * given back, so the winner of the slot's key only sets the role. */
static __always_inline struct sk_state *new_state(__u64 id, __u8 role)
{
	__u32 slot = sk_pair(id);
	struct sk_state *s;
	__u64 *k;

#pragma unroll
	for (int i = 0; i < 2; i++, slot |= 1) {
		k = bpf_map_lookup_elem(&sk_keys, &slot);
		if (!k || !id)
			return 0;
		if (*k || __sync_val_compare_and_swap(k, 0, id))
			continue;
		s = bpf_map_lookup_elem(&socks, &slot);
		if (s)
			s->role = role;
		return s;
	}
	count(C_STATE_FULL);
	return 0;
}

/* forget gives a closing socket's slot back: both, should two CPUs have raced to give the
 * socket one each. */
static __always_inline void forget(__u64 id)
{
	__u32 slot = sk_pair(id);
	struct sk_state *s;
	__u64 *k;

#pragma unroll
	for (int i = 0; i < 2; i++, slot |= 1) {
		k = bpf_map_lookup_elem(&sk_keys, &slot);
		if (!k || !id || *k != id)
			continue;
		s = bpf_map_lookup_elem(&socks, &slot);
		if (s)
			__builtin_memset(s, 0, sizeof(*s));
		__sync_val_compare_and_swap(k, id, 0);
	}
}

/* thread_state is the calling thread's state; claim takes the slot over from another
 * thread, else such a slot gives none. */
static __always_inline struct tid_state *thread_state(__u32 tid, const int claim)
{
	__u32 slot = tid & TID_MASK;
	struct tid_state *t = bpf_map_lookup_elem(&threads, &slot);

	if (!t)
		return 0;
	if (t->tid == tid)
		return t;
	if (!claim)
		return 0;
	t->tid = tid;
	t->pending_sk = 0;
	t->burst_sk[0] = 0;
	t->burst_sk[1] = 0;
	return t;
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
	b = sock_state(cand);
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
static __always_inline struct sk_state *new_proxy_state(const struct sock___mesh *sk, __u64 id, struct tracked_proc *p, __u8 guess)
{
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	struct sk_state *s;

	if (p->has_ports)
		guess = bpf_map_lookup_elem(&listen_ports, &port) ? ROLE_DOWN : ROLE_UP;
	s = new_state(id, guess);
	if (s)
		s->lport = port;
	return s;
}

/* response is the upstream socket holding the answer to the request D (dsk) forwarded,
 * once its first byte has arrived: the peer, while it still serves D. */
static __always_inline struct sk_state *response(struct sk_state *d, __u64 dsk)
{
	struct sk_state *u = sock_state(d->peer);

	if (u && u->peer == dsk && u->phase == FORWARDED && u->t_ready)
		return u;
	return 0;
}

/* on_data_ready notes when data arrived on a proxy's socket that it has not read yet: the
 * arrivals of connection-level queueing, which runs this hook. The receive path has just
 * refreshed the socket's clock. */
static __always_inline void on_data_ready(const void *skp, const int btf)
{
	__u64 sk = sk_id(skp, btf);
	struct sk_state *s = sock_state(sk);

	if (!s)
		return;
	count(C_EVENTS);
	if (!s->t_queue)
		s->t_queue = tcp_clock(skp, btf);
}

/* A read's socket is TCP by the tracepoint's nature. */
#define ON_READ(sk, btf)                                                     \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		p_ = current_proc(&tid_);                                    \
		if (p_)                                                      \
			on_read(p_, tid_, (const struct sock___mesh *)(sk), btf); \
	} while (0)

/* The protocol is read only once the task is known to be tracked: on raw_tp that read is a
 * helper call. */
#define SK_PROTOCOL_BTF(sk) ((sk)->sk_protocol)
#define SK_PROTOCOL_CORE(sk) BPF_CORE_READ((sk), sk_protocol)

#define ON_SEND(sk, proto_of, btf, ret)                                      \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		if ((ret) <= 0)                                              \
			break;                                               \
		p_ = current_proc(&tid_);                                    \
		if (!p_ || proto_of(sk) != IPPROTO_TCP)                      \
			break;                                               \
		on_send(p_, tid_, (const struct sock___mesh *)(sk), btf);    \
	} while (0)

/* on_read runs as the proxy copies data out of socket sk, once per buffer copied. A
 * message's first read takes its arrival: sk_data_ready's where that runs, else the TCP
 * clock, which this copy has not refreshed yet. A later read of the same message finds the
 * socket past that phase and is ignored. */
static __always_inline void on_read(struct tracked_proc *p, __u32 tid, const struct sock___mesh *skp, const int btf)
{
	__u64 sk = sk_id(skp, btf);
	__u64 clock = tcp_clock(skp, btf);
	struct sk_state *s;
	struct tid_state *t;
	__u64 now, arrival;

	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = sock_state(sk);
	if (!s) {
		/* A proxy's first act on an accepted connection is to read it. */
		s = new_proxy_state(skp, sk, p, ROLE_DOWN);
		if (!s)
			return;
	}
	t = thread_state(tid, 1);
	arrival = s->t_queue;
	if (arrival) {
		s->t_queue = 0;
		observe(s->role == ROLE_DOWN ? M_QUEUE_DOWN : M_QUEUE_UP, now - arrival);
		if (queueing)
			begin_burst(p, t, sk, s, arrival);
	}
	if (s->role == ROLE_DOWN) {
		if (s->phase != IDLE)
			return;
		s->phase = READ;
		p->pending_sk = sk;
		if (t)
			t->pending_sk = sk;
	} else if (s->phase != FORWARDED || s->t_ready) {
		return;
	}
	if (!arrival) {
		/* The two clocks are one (CLOCK_MONOTONIC) read two ways. */
		arrival = clock < now ? clock : now;
		observe(s->role == ROLE_DOWN ? M_QUEUE_DOWN : M_QUEUE_UP, now - arrival);
	}
	s->t_ready = arrival;
	s->t_read = now;
}

static __always_inline struct sk_state *pending_down(__u64 *cand)
{
	struct sk_state *d = sock_state(*cand);

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
}

static __always_inline void answer(struct sk_state *d, __u64 dsk, __u64 now)
{
	struct sk_state *u = 0;
	__u64 req, resp, req_r, resp_r;

	if (d->phase == READ)
		count(C_LOCAL_REPLY);
	else if (!(u = response(d, dsk)))
		count(C_NO_RESPONSE);
	if (u && d->t_ready) {
		req = d->t_fwd - d->t_ready;
		resp = now - u->t_ready;
		if (req > stale_ns || resp > stale_ns) {
			count(C_STALE);
		} else {
			observe(M_REQUEST_LEG, req);
			observe(M_RESPONSE_LEG, resp);
			observe(M_RESIDENCY, req + resp);
			if (u->t_read) {
				req_r = d->t_fwd - d->t_read;
				resp_r = now - u->t_read;
				observe(M_RESIDENCY_READ, req_r + resp_r);
			}
			count(C_PAIRED);
		}
	}
	d->phase = IDLE;
	d->t_ready = 0;
}

static __always_inline void on_send(struct tracked_proc *p, __u32 tid, const struct sock___mesh *skp, const int btf)
{
	__u64 sk = sk_id(skp, btf);
	struct sk_state *s;
	struct tid_state *t;
	__u64 now;

	count(C_EVENTS);
	now = bpf_ktime_get_ns();
	s = sock_state(sk);
	if (!s) {
		/* A proxy's first act on a connection it opened is to write a request. */
		s = new_proxy_state(skp, sk, p, ROLE_UP);
		if (!s)
			return;
	}
	t = thread_state(tid, 0);
	if (queueing)
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
		answer(s, sk, now);
}

/* Only the close (state to forget) and the connect (an upstream born) matter; every other
 * transition, and every task but a tracked one's connect, ends before reading the socket. */
#define ON_STATE(sk, proto_of, btf, newstate)                                \
	do {                                                                 \
		struct tracked_proc *p_;                                     \
		__u32 tid_;                                                  \
		if ((newstate) == TCP_CLOSE) {                               \
			forget(sk_id((sk), btf));                            \
			break;                                               \
		}                                                            \
		if ((newstate) != TCP_SYN_SENT)                              \
			break;                                               \
		/* connect() runs in the proxy's task: the socket is         \
		 * upstream from its first byte. */                          \
		p_ = current_proc(&tid_);                                    \
		if (p_ && proto_of(sk) == IPPROTO_TCP)                       \
			new_proxy_state((const struct sock___mesh *)(sk),    \
					sk_id((sk), btf), p_, ROLE_UP);      \
	} while (0)

#define BTF 1
#define RAW 0

SEC("tp_btf/sk_data_ready")
int BPF_PROG(tp_btf_sk_data_ready, const struct sock *sk)
{
	on_data_ready(sk, BTF);
	return 0;
}

SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(tp_btf_tcp_rcv_space_adjust, struct sock *sk)
{
	ON_READ(sk, BTF);
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
	on_data_ready(sk, RAW);
	return 0;
}

SEC("raw_tp/tcp_rcv_space_adjust")
int BPF_PROG(raw_tp_tcp_rcv_space_adjust, struct sock *sk)
{
	ON_READ(sk, RAW);
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
