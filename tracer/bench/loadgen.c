/* Loopback load for `tcpstate-tracer bench` (tracer/bench builds and runs it).
 *
 *   loadgen churn PORT SECONDS THREADS
 *       The bench's default shape (`--load listener-per-thread`). Each thread
 *       listens on PORT+i and, until SECONDS have passed, makes one connection at a
 *       time: connect, accept, close the client, close the server.
 *   loadgen shared-listener PORT SECONDS THREADS
 *       `--load shared-listener`: one listener on PORT for all threads. Until
 *       SECONDS have passed each thread connects to it, accepts whichever connection
 *       the listener hands it (its own or another thread's: the threads accept in
 *       turn), closes its client, then reads the accepted connection to its end and
 *       closes it. Reading to the end keeps the client the first to close, whoever
 *       accepted. No thread waits for ever: a thread in accept() has connected and
 *       not yet accepted, so the listener holds at least as many connections as
 *       there are threads waiting for one; a thread reading waits for a client that
 *       closes as soon as its own accept() returns.
 *
 *       In both shapes a connection is 10 transitions (client: CLOSE>SYN_SENT>
 *       ESTABLISHED>FIN_WAIT1>FIN_WAIT2>CLOSE, its TIME_WAIT unreported; server:
 *       LISTEN>SYN_RECV>ESTABLISHED>CLOSE_WAIT>LAST_ACK>CLOSE) and a listener 2
 *       (CLOSE>LISTEN>CLOSE). Prints one JSON line: connections made, errors,
 *       seconds, threads, listeners.
 *   loadgen hold PORT COUNT
 *       Opens COUNT connections to 4 listeners (PORT..PORT+3) and holds them
 *       established (in several processes when the descriptor limit asks for it);
 *       prints "ready COUNT", then waits for stdin to close.
 *
 * Every loop is bounded by a deadline or a count; every address is 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in loopback(int port) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int listen_on(int port) {
	struct sockaddr_in a = loopback(port);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) { perror("socket"); exit(2); }
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (void *)&a, sizeof a) || listen(fd, 4096)) {
		fprintf(stderr, "loadgen: listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
		exit(2);
	}
	return fd;
}

struct worker { pthread_t thread; int port, lfd; double deadline; long made, errors; };

static void *churn(void *arg) {
	struct worker *w = arg;
	struct sockaddr_in a = loopback(w->port);
	int lfd = listen_on(w->port);
	for (long i = 0;; i++) {
		if ((i & 255) == 0 && now() >= w->deadline) break;
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0) { w->errors++; continue; }
		if (connect(c, (void *)&a, sizeof a)) { w->errors++; close(c); continue; }
		int s = accept(lfd, NULL, NULL);
		close(c);
		if (s < 0) { w->errors++; continue; }
		close(s);
		w->made++;
	}
	close(lfd);
	return NULL;
}

static void *shared_churn(void *arg) {
	struct worker *w = arg;
	struct sockaddr_in a = loopback(w->port);
	char byte;
	for (long i = 0;; i++) {
		if ((i & 255) == 0 && now() >= w->deadline) break;
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0) { w->errors++; continue; }
		if (connect(c, (void *)&a, sizeof a)) { w->errors++; close(c); continue; }
		int s = accept(w->lfd, NULL, NULL);
		close(c);
		if (s < 0) { w->errors++; continue; }
		/* Nothing is ever sent: the one valid outcome is the end of the stream. */
		ssize_t n;
		do n = read(s, &byte, 1); while (n < 0 && errno == EINTR);
		close(s);
		if (n) { w->errors++; continue; }
		w->made++;
	}
	return NULL;
}

/* Runs `threads` workers until `seconds` have passed: each on its own listener at
 * port+i, or all on one listener at port (shared). */
static int run_churn(int port, double seconds, int threads, int shared) {
	struct worker *ws = calloc(threads, sizeof *ws);
	int lfd = shared ? listen_on(port) : -1;
	double start = now();
	for (int i = 0; i < threads; i++) {
		ws[i] = (struct worker){ .port = shared ? port : port + i, .lfd = lfd, .deadline = start + seconds };
		pthread_create(&ws[i].thread, NULL, shared ? shared_churn : churn, &ws[i]);
	}
	long made = 0, errors = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(ws[i].thread, NULL);
		made += ws[i].made;
		errors += ws[i].errors;
	}
	double elapsed = now() - start;
	if (shared) close(lfd);
	printf("{\"connections\": %ld, \"errors\": %ld, \"seconds\": %.6f, \"threads\": %d, \"listeners\": %d}\n",
	       made, errors, elapsed, threads, shared ? 1 : threads);
	return errors != 0;
}

/* Holds `count` connections in as many processes as the descriptor limit needs (two
 * descriptors a connection; the hard limit may not be raised in a container). */
static int run_hold(int port, long count) {
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	long per = ((long)rl.rlim_cur - 64) / 2;
	if (per < 1) { fprintf(stderr, "loadgen: descriptor limit too low\n"); return 2; }
	int lfd[4], ready[2];
	for (int i = 0; i < 4; i++) lfd[i] = listen_on(port + i);
	if (pipe(ready)) { perror("pipe"); return 2; }
	int children = 0;
	for (long first = 0; first < count; first += per, children++) {
		long n = count - first < per ? count - first : per;
		pid_t pid = fork();
		if (pid < 0) { perror("fork"); return 2; }
		if (pid == 0) {
			for (long i = first; i < first + n; i++) {
				struct sockaddr_in a = loopback(port + i % 4);
				int c = socket(AF_INET, SOCK_STREAM, 0);
				if (c < 0 || connect(c, (void *)&a, sizeof a) || accept(lfd[i % 4], NULL, NULL) < 0) {
					fprintf(stderr, "loadgen: connection %ld: %s\n", i, strerror(errno));
					_exit(2);
				}
			}
			if (write(ready[1], "r", 1) != 1) _exit(2);
			char buf[64];
			while (read(0, buf, sizeof buf) > 0) ;
			_exit(0);  /* exit closes every descriptor */
		}
	}
	for (int got = 0; got < children; got++) {
		char c;
		if (read(ready[0], &c, 1) != 1) { fprintf(stderr, "loadgen: a holder failed\n"); return 2; }
	}
	printf("ready %ld\n", count);
	fflush(stdout);
	char buf[64];
	while (read(0, buf, sizeof buf) > 0) ;
	int st, bad = 0;
	while (wait(&st) > 0) bad |= !WIFEXITED(st) || WEXITSTATUS(st);
	return bad;
}

int main(int argc, char **argv) {
	if (argc == 5 && !strcmp(argv[1], "churn"))
		return run_churn(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), 0);
	if (argc == 5 && !strcmp(argv[1], "shared-listener"))
		return run_churn(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), 1);
	if (argc == 4 && !strcmp(argv[1], "hold"))
		return run_hold(atoi(argv[2]), atol(argv[3]));
	fprintf(stderr, "usage: loadgen churn|shared-listener PORT SECONDS THREADS | loadgen hold PORT COUNT\n");
	return 2;
}
