/* tcpstate-tracer's blind-spot probe (tracer/host/blindspots.py): how often a BPF
 * tracing program ran for irq:softirq_entry on top of each thread.
 *
 * User space compares these counts with an ftrace instance's, which goes through
 * neither BPF nor perf: a thread ftrace saw doing softirq work and this program
 * never ran for is one on top of which the kernel runs no BPF program, and a TCP
 * transition processed there is invisible to any BPF tracer.
 *
 * Load-time constant (set by tracer/host/blindspots.py through cflags):
 *   BLINDSPOTS_MAX_THREADS  threads counted at once; one seen after the map is
 *                           full is not counted, so the probe would call it blind
 */
#ifndef BLINDSPOTS_MAX_THREADS
#define BLINDSPOTS_MAX_THREADS 65536
#endif

/* thread id (the low half of bpf_get_current_pid_tgid()) -> runs of this program */
BPF_HASH(runs, u32, u64, BLINDSPOTS_MAX_THREADS);

TRACEPOINT_PROBE(irq, softirq_entry)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 zero = 0, *n = runs.lookup_or_try_init(&tid, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}
