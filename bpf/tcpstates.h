/* The record shared by bpf/tcpstates.bpf.c and tracer/core/record.py.
 *
 * Fixed-width fields, explicit padding, no implicit holes: the Python mirror
 * decodes it with one struct format, and tests/unit/test_record.py compiles
 * this header to check that both sides agree on size, names and offsets.
 */
#ifndef TCPSTATES_H
#define TCPSTATES_H

#define TCPSTATE_COMM_LEN 16
#define TCPSTATE_MORE     7  /* transitions a record carries after its first */

/* What a record reports. */
#define TCPSTATE_KIND_STATE    0 /* sock:inet_sock_set_state */
#define TCPSTATE_KIND_RESET_RX 1 /* tcp:tcp_receive_reset (oldstate = newstate = current state) */
#define TCPSTATE_KIND_RESET_TX 2 /* tcp:tcp_send_reset */
#define TCPSTATE_KIND_RETRANSMIT 3 /* tcp:tcp_retransmit_skb (oldstate = newstate = the socket's state);
                                    * tcp:tcp_retransmit_synack is counted only, as SYN_RECV */

/* Who opened the connection. Inferred roles come from the listening-port map
 * for sockets whose opening transition happened before the program attached. */
#define TCPSTATE_ROLE_UNKNOWN  0
#define TCPSTATE_ROLE_ACTIVE   1 /* connect(): service port is the remote port */
#define TCPSTATE_ROLE_PASSIVE  2 /* accepted: service port is the local port */
#define TCPSTATE_ROLE_LISTENER 3 /* listen(): service port is the local port */

/* flags */
#define TCPSTATE_F_ROLE_INFERRED   0x01 /* role guessed from listening ports, not seen */
#define TCPSTATE_F_OWNER_INHERITED 0x02 /* pid/comm copied from the listener */
#define TCPSTATE_F_SHUT_WR         0x04 /* our FIN came from shutdown(SHUT_WR), not close() */
#define TCPSTATE_F_SHUT_RDWR       0x08 /* our FIN came from shutdown(SHUT_RDWR) */

struct tcpstate_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 skaddr;         /* the socket's identity while it lives */
	__u8  saddr[16];      /* IPv4 in the first 4 bytes; v4-mapped v6 is stored as IPv4 */
	__u8  daddr[16];
	__u32 pid;            /* owner (tgid), 0 while unknown */
	__u16 sport;          /* host byte order */
	__u16 dport;
	__u16 service_port;
	__u8  family;         /* AF_INET or AF_INET6 */
	__u8  kind;           /* TCPSTATE_KIND_* */
	__u8  oldstate;       /* kernel TCP_* numbering */
	__u8  newstate;
	__u8  role;           /* TCPSTATE_ROLE_* */
	__u8  flags;          /* TCPSTATE_F_* */
	char  comm[TCPSTATE_COMM_LEN];
	/* A socket the program saw open is assembled here while it is young, and sent
	 * as one record when it closes: the first transition above, then `more` of
	 * these. A record of one transition (more = 0) is a socket's transition sent
	 * on its own. Header fields hold the latest values (owner, ports, addresses). */
	__u8  more;
	__u8  more_state[TCPSTATE_MORE]; /* kind << 4 | newstate */
	__u64 more_ts[TCPSTATE_MORE];
};

/* A socket call the daemon explains, from the syscall tracepoints (ring buffer
 * `calls`): only TCP sockets (socket() seen with SOCK_STREAM), only the failures
 * asked for. */
#define TCPSTATE_CALL_BIND 1 /* bind() that failed with EADDRINUSE */

/* Options set on the socket with setsockopt(SOL_SOCKET) before the call. */
#define TCPSTATE_OPT_TCP       0x01 /* the fd is a TCP socket (socket() seen) */
#define TCPSTATE_OPT_REUSEADDR 0x02
#define TCPSTATE_OPT_REUSEPORT 0x04

struct tcpstate_call {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;            /* tgid */
	__u32 tid;
	__s32 ret;            /* the call's return value (-errno) */
	__s32 fd;
	__u8  addr[16];       /* the address asked for, as given (IPv4 in the first 4 bytes) */
	__u16 port;           /* host byte order */
	__u8  family;         /* AF_INET or AF_INET6 */
	__u8  call;           /* TCPSTATE_CALL_* */
	__u8  opts;           /* TCPSTATE_OPT_* */
	__u8  pad[3];
	char  comm[TCPSTATE_COMM_LEN];
};

/* Exact transition counters, aggregated in the kernel so they stay exact when
 * the ring buffer overflows. */
struct tcpstate_count_key {
	__u16 port;           /* service port */
	__u8  kind;
	__u8  oldstate;
	__u8  newstate;
	__u8  pad[3];
};

/* Slots of the per-CPU `stats` array. */
#define TCPSTATE_STAT_EVENTS        0 /* transitions and resets submitted to the ring buffer */
#define TCPSTATE_STAT_RINGBUF_FULL  1 /* transitions and resets lost: ring buffer full */
#define TCPSTATE_STAT_COUNTS_FULL   2 /* counter map full: counted in overflow_counts */
#define TCPSTATE_STAT_SOCKS_FULL    3 /* socket map full: role/owner not remembered */
#define TCPSTATE_STAT_LIVES_FULL    4 /* young-life map full: the socket's transitions sent one by one */
#define TCPSTATE_STAT_LIVES_STALE   5 /* a life found open where a new socket was born */
#define TCPSTATE_STAT_CALLS_FULL    6 /* failed socket calls lost: their ring buffer full */
#define TCPSTATE_STAT_NSLOTS        7

/* overflow_counts index: kind * 256 + oldstate * 16 + newstate */
#define TCPSTATE_OVERFLOW_SLOTS (4 * 256)

#endif
