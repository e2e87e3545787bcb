/* tcpstate-tracer: every TCP state transition, from sock:inet_sock_set_state.
 *
 * Tracepoints only, and only their arguments: the program never reads a kernel
 * struct through a header definition, so headers that do not match the running
 * kernel are harmless. Sockets are identified by their address (skaddr) while
 * they live; what the tracepoint does not carry (role, service port, owner) is
 * remembered in maps keyed by that address: in a young socket's life (`lives`),
 * and for the others in `socks` (user space fills it in for the lives it takes).
 *
 * Load-time constants (set by tracer/sources/bcc.py through cflags):
 *   TCPSTATE_RINGBUF_PAGES  ring buffer size in pages (power of two)
 *   TCPSTATE_MAX_SOCKS      sockets whose role and owner are remembered
 *   TCPSTATE_MAX_COUNTS     (service port, kind, transition) counters
 *   TCPSTATE_MAX_LIVES      young sockets assembled at once
 *
 * A socket the program sees open is assembled in the `lives` map and sent as one
 * record when it closes: at this machine's churn ceiling that is five times fewer
 * records for user space to decode, which is what lets it keep every transition.
 * User space takes the lives that grow old (open for more than a moment) out of
 * the map; from then on, and for sockets that were open before the program
 * attached, every transition is a record of its own.
 */
#include "tcpstates.h"

/* tcp:tcp_send_reset has an `enum sk_rst_reason` field since Linux 6.10; BCC
 * declares the tracepoint's arguments with that type, so it must be complete
 * even when the header tree is older than the running kernel. Its value is
 * never read. */
#if __has_include(<net/rstreason.h>)
#include <net/rstreason.h>
#else
enum sk_rst_reason { SK_RST_REASON_UNKNOWN_TO_HEADERS };
#endif

#ifndef TCPSTATE_RINGBUF_PAGES
#define TCPSTATE_RINGBUF_PAGES 4096
#endif
#ifndef TCPSTATE_MAX_SOCKS
#define TCPSTATE_MAX_SOCKS 524288
#endif
#ifndef TCPSTATE_MAX_COUNTS
#define TCPSTATE_MAX_COUNTS 16384
#endif
#ifndef TCPSTATE_MAX_LIVES
#define TCPSTATE_MAX_LIVES 65536
#endif

/* Kernel values (include/net/tcp_states.h, include/linux/socket.h, in.h),
 * spelled here so that no kernel header has to agree with the running kernel. */
#define ST_ESTABLISHED 1
#define ST_SYN_SENT    2
#define ST_SYN_RECV    3
#define ST_FIN_WAIT1   4
#define ST_CLOSE       7
#define ST_CLOSE_WAIT  8
#define ST_LAST_ACK    9
#define ST_LISTEN      10
#define FAMILY_INET    2
#define FAMILY_INET6   10
#define PROTO_TCP      6

struct sockinfo {
	u32 pid;
	u16 service_port;
	u8  role;
	u8  flags;
	char comm[TCPSTATE_COMM_LEN];
};

struct portinfo {
	u32 listeners;        /* sockets listening on this port, all namespaces */
	u32 pid;              /* owner of the most recent listener */
	char comm[TCPSTATE_COMM_LEN];
};

BPF_RINGBUF_OUTPUT(events, TCPSTATE_RINGBUF_PAGES);
/* Not preallocated: preallocation would hold its whole capacity in kernel memory
 * for good. Its allocator refills and drains through an irq_work, whose interrupt
 * lets the softirq that follows run transitions the kernel then skips the program
 * for (counted in program misses; README "what the tool cannot see"), so young
 * sockets, most of them, never touch it. */
BPF_F_TABLE("hash", u64, struct sockinfo, socks, TCPSTATE_MAX_SOCKS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u32, struct portinfo, ports, 65536, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", struct tcpstate_count_key, u64, counts, TCPSTATE_MAX_COUNTS, 0);
BPF_PERCPU_ARRAY(overflow_counts, u64, TCPSTATE_OVERFLOW_SLOTS);
BPF_PERCPU_ARRAY(stats, u64, TCPSTATE_STAT_NSLOTS);
/* Young sockets by address, each the record being assembled. The program adds a
 * transition in place, its count last; user space takes an entry with one
 * lookup-and-delete, and whoever deletes an entry owns it (a close, a full
 * record). A transition added as user space took the entry is also sent on its
 * own: user space drops it when the copy it took holds it too. */
BPF_F_TABLE("hash", u64, struct tcpstate_event, lives, TCPSTATE_MAX_LIVES, 0);

/* shutdown() in flight, by thread -> its `how` (SHUT_WR or SHUT_RDWR; SHUT_RD sends no
 * FIN and is not kept): the FIN transition it makes happens between its enter and exit. */
#define SHUT_WR_   1
#define SHUT_RDWR_ 2
BPF_HASH(shutdown_calls, u64, u8, 4096);

static __always_inline void stat_add(u32 slot, u64 n)
{
	u64 *v = stats.lookup(&slot);
	if (v)
		*v += n;
}

static __always_inline void stat_inc(u32 slot)
{
	stat_add(slot, 1);
}

static __always_inline void count(u16 port, u8 kind, u8 oldstate, u8 newstate)
{
	struct tcpstate_count_key key = {};
	u64 zero = 0, *v;

	key.port = port;
	key.kind = kind;
	key.oldstate = oldstate;
	key.newstate = newstate;
	v = counts.lookup_or_try_init(&key, &zero);
	if (v) {
		(*v)++;
		return;
	}
	/* Map full: the port is lost, the transition is still counted. */
	stat_inc(TCPSTATE_STAT_COUNTS_FULL);
	u32 slot = ((u32)kind << 8) | ((u32)(oldstate & 15) << 4) | (newstate & 15);
	if (slot < TCPSTATE_OVERFLOW_SLOTS) {
		v = overflow_counts.lookup(&slot);
		if (v)
			(*v)++;
	}
}

/* Role and service port of a socket first seen mid-life: a socket on a port
 * somebody listens on is the passive side, any other is the active opener. */
static __always_inline void infer(struct sockinfo *si, u16 sport, u16 dport)
{
	u32 port = sport;
	struct portinfo *pi = ports.lookup(&port);

	si->flags |= TCPSTATE_F_ROLE_INFERRED;
	if (pi && pi->listeners) {
		si->role = TCPSTATE_ROLE_PASSIVE;
		si->service_port = sport;
		si->pid = pi->pid;
		__builtin_memcpy(si->comm, pi->comm, sizeof(si->comm));
		si->flags |= TCPSTATE_F_OWNER_INHERITED;
	} else {
		si->role = TCPSTATE_ROLE_ACTIVE;
		si->service_port = dport;
	}
}

static __always_inline void set_owner(struct sockinfo *si)
{
	si->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&si->comm, sizeof(si->comm));
	si->flags &= ~TCPSTATE_F_OWNER_INHERITED;
}

/* Copies a tracepoint address; an IPv4-mapped IPv6 address becomes IPv4. */
static __always_inline u8 copy_addrs(struct tcpstate_event *ev, u16 family,
				     const void *s4, const void *d4,
				     const void *s6, const void *d6)
{
	if (family == FAMILY_INET) {
		bpf_probe_read_kernel(ev->saddr, 4, s4);
		bpf_probe_read_kernel(ev->daddr, 4, d4);
		return FAMILY_INET;
	}
	bpf_probe_read_kernel(ev->saddr, 16, s6);
	bpf_probe_read_kernel(ev->daddr, 16, d6);
	u64 *hi = (u64 *)ev->saddr;
	u32 *mid = (u32 *)(ev->saddr + 8);
	if (hi[0] == 0 && *mid == 0xffff0000) { /* ::ffff:a.b.c.d, little-endian word */
		__builtin_memcpy(ev->saddr, ev->saddr + 12, 4);
		__builtin_memcpy(ev->daddr, ev->daddr + 12, 4);
		__builtin_memset(ev->saddr + 4, 0, 12);
		__builtin_memset(ev->daddr + 4, 0, 12);
		return FAMILY_INET;
	}
	return FAMILY_INET6;
}

/* Everything but the addresses, in a zeroed record. */
static __always_inline void fill(struct tcpstate_event *ev, u64 sk, struct sockinfo *si, u8 kind,
				 u8 oldstate, u8 newstate, u16 sport, u16 dport)
{
	ev->ts_ns = bpf_ktime_get_ns();
	ev->skaddr = sk;
	ev->pid = si->pid;
	ev->sport = sport;
	ev->dport = dport;
	ev->service_port = si->service_port;
	ev->kind = kind;
	ev->oldstate = oldstate;
	ev->newstate = newstate;
	ev->role = si->role;
	ev->flags = si->flags;
	__builtin_memcpy(ev->comm, si->comm, sizeof(ev->comm));
}

/* A zeroed record with everything but the addresses filled in, or NULL (and the
 * loss counted) when the ring buffer is full. The caller adds the addresses. */
static __always_inline struct tcpstate_event *new_event(u64 sk, struct sockinfo *si, u8 kind,
							u8 oldstate, u8 newstate,
							u16 sport, u16 dport)
{
	struct tcpstate_event *ev = events.ringbuf_reserve(sizeof(*ev));

	if (!ev) {
		stat_inc(TCPSTATE_STAT_RINGBUF_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	fill(ev, sk, si, kind, oldstate, newstate, sport, dport);
	return ev;
}

/* BPF_RB_NO_WAKEUP: the reader polls on a short timer instead. A wakeup is an
 * irq_work, whose self-interrupt fires while this program still runs; the
 * softirq that follows on return from it processes loopback packets, their
 * transitions fire the tracepoint nested in this program, and the kernel skips
 * nested tracing programs (bpf_prog_active): wakeups would lose transitions at
 * full loopback churn (README "what the tool cannot see"). */
static __always_inline void submit(struct tcpstate_event *ev)
{
	events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	stat_inc(TCPSTATE_STAT_EVENTS);
}

/* Sends an assembled life (a copy on the stack); its transitions are counted. */
static __always_inline void emit(struct tcpstate_event *life)
{
	u64 n = 1 + (life->more & 7);

	if (events.ringbuf_output(life, sizeof(*life), BPF_RB_NO_WAKEUP))
		stat_add(TCPSTATE_STAT_RINGBUF_FULL, n);
	else
		stat_add(TCPSTATE_STAT_EVENTS, n);
}

/* A socket the program saw open starts a life. 0 when the map is full: the
 * caller sends the transition on its own, as it will the socket's next ones. */
static __always_inline int start_life(u64 sk, struct sockinfo *si, u8 oldstate, u8 newstate,
				      u16 sport, u16 dport, u16 family,
				      const void *s4, const void *d4, const void *s6, const void *d6)
{
	struct tcpstate_event life;
	struct tcpstate_event *p = lives.lookup(&sk);

	if (p) {
		/* A life still open at this address: the program never ran for that socket's
		 * end (skipped, or its transitions processed on top of a thread the kernel
		 * runs no BPF program for, tracer/host/blindspots.py). What it saw goes out,
		 * still open, and is counted. */
		__builtin_memcpy(&life, p, sizeof(life));
		if (!lives.delete(&sk)) {
			emit(&life);
			stat_inc(TCPSTATE_STAT_LIVES_STALE);
		}
	}
	__builtin_memset(&life, 0, sizeof(life));
	fill(&life, sk, si, TCPSTATE_KIND_STATE, oldstate, newstate, sport, dport);
	life.family = copy_addrs(&life, family, s4, d4, s6, d6);
	if (lives.insert(&sk, &life)) {
		stat_inc(TCPSTATE_STAT_LIVES_FULL);
		return 0;
	}
	return 1;
}

/* Who a socket not being born is: from its life `p` (a young socket has no entry
 * in `socks`), else from `socks`, else inferred into `fresh` (then *inferred = 1). */
static __always_inline struct sockinfo *identify(u64 sk, const struct tcpstate_event *p,
						 struct sockinfo *fresh, u16 sport, u16 dport,
						 int *inferred)
{
	struct sockinfo *si;

	if (p) {
		fresh->pid = p->pid;
		fresh->service_port = p->service_port;
		fresh->role = p->role;
		fresh->flags = p->flags;
		__builtin_memcpy(fresh->comm, p->comm, sizeof(fresh->comm));
		return fresh;
	}
	si = socks.lookup(&sk);
	if (si)
		return si;
	infer(fresh, sport, dport);
	*inferred = 1;
	return fresh;
}

/* Adds a transition or reset to the socket's life `p` (the caller's lookup); a
 * close sends the life. 0 when it has none (never had, or user space took it):
 * the caller sends the transition on its own. A life that leaves the map open
 * leaves who the socket is in `socks`, as user space does for the lives it takes. */
static __always_inline int append(struct tcpstate_event *p, u64 sk, struct sockinfo *si, u8 kind,
				  u8 newstate, u16 sport, u16 dport, u16 family,
				  const void *s4, const void *d4, const void *s6, const void *d6)
{
	struct tcpstate_event life;

	if (!p)
		return 0;
	u32 i = p->more;
	if (i >= TCPSTATE_MORE || (kind == TCPSTATE_KIND_STATE && newstate == ST_CLOSE)) {
		/* The life leaves the map: whoever deletes it owns it. */
		__builtin_memcpy(&life, p, sizeof(life));
		if (lives.delete(&sk))
			return 0; /* user space took it since the lookup */
		if (i >= TCPSTATE_MORE) {
			emit(&life); /* full: what there is goes out, still open */
			if (socks.update(&sk, si))
				stat_inc(TCPSTATE_STAT_SOCKS_FULL);
			return 0;
		}
		u64 now = bpf_ktime_get_ns();
#pragma unroll
		for (int j = 0; j < TCPSTATE_MORE; j++) {
			if (j == i) { /* constant offsets: the verifier refuses a variable one on the stack */
				life.more_state[j] = (kind << 4) | newstate;
				life.more_ts[j] = now;
			}
		}
		life.more = i + 1;
		if (!life.sport) { /* a connect() that failed after it bound a port: the port shows first here */
			life.family = copy_addrs(&life, family, s4, d4, s6, d6);
			life.sport = sport;
			life.dport = dport;
		}
		life.pid = si->pid;
		life.flags = si->flags;
		__builtin_memcpy(life.comm, si->comm, sizeof(life.comm));
		emit(&life);
		return 1;
	}
	/* In place: the transition, then the count, so that a copy user space takes
	 * meanwhile holds it whole or not at all. */
	p->more_state[i & 7] = (kind << 4) | newstate;
	p->more_ts[i & 7] = bpf_ktime_get_ns();
	p->pid = si->pid;
	p->flags = si->flags;
	__builtin_memcpy(p->comm, si->comm, sizeof(p->comm));
	if (!p->sport) { /* connect() binds the port (and may pick the address) after SYN_SENT */
		p->family = copy_addrs(p, family, s4, d4, s6, d6);
		p->sport = sport;
		p->dport = dport;
	}
	asm volatile("" ::: "memory"); /* x86 keeps stores in order; the compiler must too */
	p->more = i + 1;
	/* Taken meanwhile: the transition goes on its own too; when the copy holds it
	 * as well, user space drops the twin (same socket, time and state). */
	return lives.lookup(&sk) == p;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != PROTO_TCP)
		return 0;

	u64 sk = (u64)args->skaddr;
	u8 oldstate = args->oldstate;
	u8 newstate = args->newstate;
	u16 sport = args->sport;
	u16 dport = args->dport;
	struct sockinfo fresh = {};
	struct sockinfo *si = 0;
	struct tcpstate_event *life = 0;
	int store = 0, born = 0, inferred = 0;

	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT) {
		si = &fresh;
		si->role = TCPSTATE_ROLE_ACTIVE;
		si->service_port = dport;
		set_owner(si);
		store = born = 1;
	} else if (oldstate == ST_LISTEN && newstate == ST_SYN_RECV) {
		/* A child cloned from the listener: until the socket does something in
		 * process context, its owner is the listener's. */
		u32 port = sport;
		struct portinfo *pi = ports.lookup(&port);
		si = &fresh;
		si->role = TCPSTATE_ROLE_PASSIVE;
		si->service_port = sport;
		if (pi) {
			si->pid = pi->pid;
			__builtin_memcpy(si->comm, pi->comm, sizeof(si->comm));
			si->flags |= TCPSTATE_F_OWNER_INHERITED;
		}
		store = born = 1;
	} else if (newstate == ST_LISTEN) {
		u32 port = sport;
		struct portinfo pzero = {};
		struct portinfo *pi;
		si = &fresh;
		si->role = TCPSTATE_ROLE_LISTENER;
		si->service_port = sport;
		set_owner(si);
		store = born = 1;
		pi = ports.lookup_or_try_init(&port, &pzero);
		if (pi) {
			__sync_fetch_and_add(&pi->listeners, 1);
			pi->pid = si->pid;
			__builtin_memcpy(pi->comm, si->comm, sizeof(pi->comm));
		}
	} else {
		life = lives.lookup(&sk);
		si = identify(sk, life, &fresh, sport, dport, &inferred);
		store = inferred && newstate != ST_CLOSE;
	}
	/* close() or shutdown() by the socket's owner runs in process context:
	 * the first moment the owner of an accepted socket is known for sure, and the
	 * thread's shutdown() in flight, if any, says which of the two sent our FIN. */
	if ((oldstate == ST_ESTABLISHED && newstate == ST_FIN_WAIT1) ||
	    (oldstate == ST_CLOSE_WAIT && newstate == ST_LAST_ACK)) {
		if (!si->pid || (si->flags & TCPSTATE_F_OWNER_INHERITED))
			set_owner(si);
		u64 id = bpf_get_current_pid_tgid();
		u8 *how = shutdown_calls.lookup(&id);
		if (how)
			si->flags |= *how == SHUT_RDWR_ ? TCPSTATE_F_SHUT_RDWR : TCPSTATE_F_SHUT_WR;
	}

	if (oldstate == ST_LISTEN && newstate != ST_SYN_RECV) {
		u32 port = sport;
		struct portinfo *pi = ports.lookup(&port);
		if (pi && pi->listeners) {
			__sync_fetch_and_add(&pi->listeners, -1);
			if (!pi->listeners)
				ports.delete(&port);
		}
	}

	count(si->service_port, TCPSTATE_KIND_STATE, oldstate, newstate);

	int held = born ? start_life(sk, si, oldstate, newstate, sport, dport, args->family,
				     args->saddr, args->daddr, args->saddr_v6, args->daddr_v6)
			: append(life, sk, si, TCPSTATE_KIND_STATE, newstate, sport, dport, args->family,
				 args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
	if (!held) {
		struct tcpstate_event *ev = new_event(sk, si, TCPSTATE_KIND_STATE, oldstate, newstate,
						      sport, dport);
		if (ev) {
			ev->family = copy_addrs(ev, args->family, args->saddr, args->daddr,
						args->saddr_v6, args->daddr_v6);
			submit(ev);
		}
	}

	/* `socks` holds who the sockets without a life are. A socket born into a life
	 * clears what an earlier socket at its address may have left there. */
	if (born && held) {
		socks.delete(&sk);
	} else if (newstate == ST_CLOSE) {
		if (!store && !life)
			socks.delete(&sk);
	} else if (store) {
		if (socks.update(&sk, si))
			stat_inc(TCPSTATE_STAT_SOCKS_FULL);
	}
	return 0;
}

/* Resets and retransmissions: an orderly-looking close that was really a reset must
 * not be modelled as TIME_WAIT, and both are worth counting on their own (a LAST_ACK
 * socket retransmitting its FIN is the evidence that its final ACK never comes). One
 * of a young socket goes in its life, in order with its transitions. */
static __always_inline void socket_event(u64 sk, u8 kind, u8 state, u16 sport, u16 dport,
					u16 family, const void *s4, const void *d4,
					const void *s6, const void *d6)
{
	struct sockinfo fresh = {};
	struct tcpstate_event *life = lives.lookup(&sk);
	int inferred = 0;
	struct sockinfo *si = identify(sk, life, &fresh, sport, dport, &inferred);

	count(si->service_port, kind, state, state);
	if (append(life, sk, si, kind, state, sport, dport, family, s4, d4, s6, d6))
		return;
	struct tcpstate_event *ev = new_event(sk, si, kind, state, state, sport, dport);
	if (ev) {
		ev->family = copy_addrs(ev, family, s4, d4, s6, d6);
		submit(ev);
	}
}


/* The tracepoint carries no state: 0 means "whatever the socket is in now",
 * which user space knows from the socket's identity. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	socket_event((u64)args->skaddr, TCPSTATE_KIND_RESET_RX, 0, args->sport, args->dport,
		    args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
	u64 sk = (u64)args->skaddr;
	u8 sa[28], da[28];

	if (!sk)
		return 0; /* a reset for a segment that matched no socket */
	/* saddr/daddr hold a struct sockaddr_in or sockaddr_in6 (UAPI layout): family
	 * in bytes 0-1, port in network order in bytes 2-3, the IPv4 address in bytes
	 * 4-7, the IPv6 address in bytes 8-23. For a full socket they are its own
	 * addresses: a listener's reset names the listener, not the peer. */
	bpf_probe_read_kernel(sa, sizeof(sa), args->saddr);
	bpf_probe_read_kernel(da, sizeof(da), args->daddr);
	u16 family = sa[0] | (sa[1] << 8);
	socket_event(sk, TCPSTATE_KIND_RESET_TX, args->state, (sa[2] << 8) | sa[3], (da[2] << 8) | da[3],
		    family, sa + 4, da + 4, sa + 8, da + 8);
	return 0;
}

/* A retransmitted segment of a full socket, in the state it was sent in. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	socket_event((u64)args->skaddr, TCPSTATE_KIND_RETRANSMIT, args->state, args->sport, args->dport,
		     args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
	return 0;
}

/* A retransmitted SYN-ACK: its request is no socket the daemon tracks, so it is
 * counted only, on the listener's port. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
	count(args->sport, TCPSTATE_KIND_RETRANSMIT, ST_SYN_RECV, ST_SYN_RECV);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_shutdown)
{
	u8 how = args->how;
	if (how != SHUT_WR_ && how != SHUT_RDWR_)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	shutdown_calls.update(&id, &how);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_shutdown)
{
	u64 id = bpf_get_current_pid_tgid();
	shutdown_calls.delete(&id);
	return 0;
}

/* Bind conflicts, from the syscall tracepoints: the socket's fd is all they carry,
 * so what the socket is (TCP, and the SO_REUSEADDR / SO_REUSEPORT its owner set) is
 * kept by fd from socket() on. Every process's socket(), setsockopt() and bind() run
 * these programs: each returns at its first test for anything else (another family
 * or type, another option, an fd never seen), and only a failed bind() sends a
 * record. Sockets made before the program attached are not known; nor is an fd
 * that dup2() or fork() gave another number or process. */
#define SOCK_STREAM_     1
#define SOCK_TYPE_MASK_  0xf
#define SOL_SOCKET_      1
#define SO_REUSEADDR_    2
#define SO_REUSEPORT_    15
#define EADDRINUSE_      98

BPF_RINGBUF_OUTPUT(calls, 16);
/* socket() in flight, by thread: enter and exit are two programs. */
BPF_HASH(socket_calls, u64, u8, 4096);
/* bind() in flight, by thread: the address asked for, read at enter. */
BPF_HASH(bind_calls, u64, struct tcpstate_call, 4096);
/* TCP sockets by (tgid << 32 | fd) -> TCPSTATE_OPT_*. LRU: the entry of a socket
 * closed without a bind() that succeeded makes room when the map is full, and a
 * new socket at the same fd overwrites it. */
BPF_F_TABLE("lru_hash", u64, u8, tcp_fds, 65536, 0);

static __always_inline u64 fd_key(u64 pid_tgid, s64 fd)
{
	return (pid_tgid & 0xffffffff00000000ULL) | (u32)fd;
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
	if ((args->family != FAMILY_INET && args->family != FAMILY_INET6) ||
	    (args->type & SOCK_TYPE_MASK_) != SOCK_STREAM_ ||
	    (args->protocol != 0 && args->protocol != PROTO_TCP))
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u8 one = 1;
	socket_calls.update(&id, &one);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!socket_calls.lookup(&id))
		return 0;
	socket_calls.delete(&id);
	if (args->ret < 0)
		return 0;
	u64 key = fd_key(id, args->ret);
	u8 opts = TCPSTATE_OPT_TCP;
	tcp_fds.update(&key, &opts);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setsockopt)
{
	if (args->level != SOL_SOCKET_ || (args->optname != SO_REUSEADDR_ && args->optname != SO_REUSEPORT_))
		return 0;
	u64 key = fd_key(bpf_get_current_pid_tgid(), args->fd);
	u8 *opts = tcp_fds.lookup(&key);
	int on = 0;
	if (!opts || bpf_probe_read_user(&on, sizeof(on), args->optval))
		return 0;
	u8 bit = args->optname == SO_REUSEADDR_ ? TCPSTATE_OPT_REUSEADDR : TCPSTATE_OPT_REUSEPORT;
	if (on)
		*opts |= bit;
	else
		*opts &= ~bit;
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 key = fd_key(id, args->fd);
	u8 *opts = tcp_fds.lookup(&key);
	if (!opts)
		return 0;
	struct tcpstate_call c = {};
	/* struct sockaddr_in / sockaddr_in6 (UAPI): family in bytes 0-1, the port in network
	 * order in bytes 2-3, the IPv4 address at 4, the IPv6 address at 8; read no further
	 * than the family's own size. */
	const u8 *sa = (const u8 *)args->umyaddr;
	u8 head[4] = {};
	if (bpf_probe_read_user(head, sizeof(head), sa))
		return 0;
	c.family = head[0] | (head[1] << 8);
	if (c.family == FAMILY_INET)
		bpf_probe_read_user(c.addr, 4, sa + 4);
	else if (c.family == FAMILY_INET6)
		bpf_probe_read_user(c.addr, 16, sa + 8);
	else
		return 0;
	c.port = (head[2] << 8) | head[3];
	c.fd = args->fd;
	c.opts = *opts;
	bind_calls.update(&id, &c);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_bind)
{
	u64 id = bpf_get_current_pid_tgid();
	struct tcpstate_call *pending = bind_calls.lookup(&id);
	if (!pending)
		return 0;
	struct tcpstate_call c;
	__builtin_memcpy(&c, pending, sizeof(c));
	bind_calls.delete(&id);
	if (args->ret == 0) {
		/* Bound: the options have done their work. The fd's next socket starts clean
		 * even if this one is closed unseen. */
		u64 key = fd_key(id, c.fd);
		tcp_fds.delete(&key);
		return 0;
	}
	if (args->ret != -EADDRINUSE_)
		return 0;
	c.ts_ns = bpf_ktime_get_ns();
	c.pid = id >> 32;
	c.tid = (u32)id;
	c.ret = args->ret;
	c.call = TCPSTATE_CALL_BIND;
	bpf_get_current_comm(&c.comm, sizeof(c.comm));
	/* A wakeup, unlike the events': the daemon must pin the caller's namespace while
	 * the process still runs (it often exits at once). In process context and rare,
	 * its interrupt seldom finds loopback work to run nested; a transition skipped so
	 * is counted in the program misses. */
	if (calls.ringbuf_output(&c, sizeof(c), BPF_RB_FORCE_WAKEUP))
		stat_inc(TCPSTATE_STAT_CALLS_FULL);
	return 0;
}
