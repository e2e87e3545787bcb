/* tcpstate-tracer: every TCP state transition, from sock:inet_sock_set_state.
 *
 * Tracepoints only, and only their arguments: the program never reads a kernel
 * struct through a header definition, so headers that do not match the running
 * kernel are harmless. Sockets are identified by their address (skaddr) while
 * they live; what the tracepoint does not carry (role, service port, owner) is
 * remembered in maps keyed by that address.
 *
 * Load-time constants (set by tracer/sources/bcc.py through cflags):
 *   TCPSTATE_RINGBUF_PAGES  ring buffer size in pages (power of two)
 *   TCPSTATE_MAX_SOCKS      sockets whose role and owner are remembered
 *   TCPSTATE_MAX_COUNTS     (service port, kind, transition) counters
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
BPF_F_TABLE("hash", u64, struct sockinfo, socks, TCPSTATE_MAX_SOCKS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u32, struct portinfo, ports, 65536, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", struct tcpstate_count_key, u64, counts, TCPSTATE_MAX_COUNTS, 0);
BPF_PERCPU_ARRAY(overflow_counts, u64, TCPSTATE_OVERFLOW_SLOTS);
BPF_PERCPU_ARRAY(stats, u64, TCPSTATE_STAT_NSLOTS);

static __always_inline void stat_inc(u32 slot)
{
	u64 *v = stats.lookup(&slot);
	if (v)
		(*v)++;
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
	return ev;
}

/* BPF_RB_NO_WAKEUP: the reader polls on a short timer instead. A wakeup is an
 * irq_work, whose self-interrupt fires while this program still runs; the
 * softirq that follows on return from it processes loopback packets, their
 * transitions fire the tracepoint nested in this program, and the kernel skips
 * nested tracing programs (bpf_prog_active). Measured here: up to 1 transition
 * in 100 lost at full loopback churn with wakeups, none without. */
static __always_inline void submit(struct tcpstate_event *ev)
{
	events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	stat_inc(TCPSTATE_STAT_EVENTS);
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
	struct sockinfo *si = socks.lookup(&sk);
	int store = 0;

	if (oldstate == ST_CLOSE && newstate == ST_SYN_SENT) {
		si = &fresh;
		si->role = TCPSTATE_ROLE_ACTIVE;
		si->service_port = dport;
		set_owner(si);
		store = 1;
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
		store = 1;
	} else if (newstate == ST_LISTEN) {
		u32 port = sport;
		struct portinfo pzero = {};
		struct portinfo *pi;
		si = &fresh;
		si->role = TCPSTATE_ROLE_LISTENER;
		si->service_port = sport;
		set_owner(si);
		store = 1;
		pi = ports.lookup_or_try_init(&port, &pzero);
		if (pi) {
			__sync_fetch_and_add(&pi->listeners, 1);
			pi->pid = si->pid;
			__builtin_memcpy(pi->comm, si->comm, sizeof(pi->comm));
		}
	} else if (!si) {
		si = &fresh;
		infer(si, sport, dport);
		store = newstate != ST_CLOSE;
	}
	/* close() or shutdown() by the socket's owner runs in process context:
	 * the first moment the owner of an accepted socket is known for sure. */
	if (((oldstate == ST_ESTABLISHED && newstate == ST_FIN_WAIT1) ||
	     (oldstate == ST_CLOSE_WAIT && newstate == ST_LAST_ACK)) &&
	    (!si->pid || (si->flags & TCPSTATE_F_OWNER_INHERITED)))
		set_owner(si);

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

	struct tcpstate_event *ev = new_event(sk, si, TCPSTATE_KIND_STATE, oldstate, newstate,
					      sport, dport);
	if (ev) {
		ev->family = copy_addrs(ev, args->family, args->saddr, args->daddr,
					args->saddr_v6, args->daddr_v6);
		submit(ev);
	}

	if (newstate == ST_CLOSE) {
		if (!store)
			socks.delete(&sk);
	} else if (store) {
		if (socks.update(&sk, si))
			stat_inc(TCPSTATE_STAT_SOCKS_FULL);
	}
	return 0;
}

/* Resets: an orderly-looking close that was really a reset must not be
 * modelled as TIME_WAIT, and resets are worth counting on their own. */
static __always_inline struct tcpstate_event *reset_event(u64 sk, u8 kind, u8 state,
							  u16 sport, u16 dport)
{
	struct sockinfo fresh = {};
	struct sockinfo *si = socks.lookup(&sk);

	if (!si) {
		si = &fresh;
		infer(si, sport, dport);
	}
	count(si->service_port, kind, state, state);
	return new_event(sk, si, kind, state, state, sport, dport);
}


/* The tracepoint carries no state: 0 means "whatever the socket is in now",
 * which user space knows from the socket's identity. */
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	struct tcpstate_event *ev = reset_event((u64)args->skaddr, TCPSTATE_KIND_RESET_RX, 0,
						args->sport, args->dport);
	if (ev) {
		ev->family = copy_addrs(ev, args->family, args->saddr, args->daddr,
					args->saddr_v6, args->daddr_v6);
		submit(ev);
	}
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
	struct tcpstate_event *ev = reset_event(sk, TCPSTATE_KIND_RESET_TX, args->state,
						(sa[2] << 8) | sa[3], (da[2] << 8) | da[3]);
	if (ev) {
		ev->family = copy_addrs(ev, family, sa + 4, da + 4, sa + 8, da + 8);
		submit(ev);
	}
	return 0;
}
