/* Bounded loopback churn: for each of NPORTS listeners (PORT..PORT+NPORTS-1) one
 * process makes N client-closed connections, so N TIME_WAIT sockets each. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int lfd; static long n;
static void *serve(void *arg) {
	char buf[64];
	for (long i = 0; i < n; i++) {
		int c = accept(lfd, NULL, NULL);
		if (c < 0) { perror("accept"); exit(1); }
		while (read(c, buf, sizeof buf) > 0) ;
		close(c);
	}
	return NULL;
}
int main(int argc, char **argv) {
	int port0 = atoi(argv[1]), nports = atoi(argv[2]); n = atol(argv[3]);
	for (int p = 0; p < nports; p++) {
		if (fork() == 0) {
			alarm(300);
			struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port0 + p) };
			inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
			lfd = socket(AF_INET, SOCK_STREAM, 0);
			int one = 1; setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
			if (bind(lfd, (void *)&a, sizeof a) || listen(lfd, 4096)) { perror("bind/listen"); exit(1); }
			pthread_t t; pthread_create(&t, NULL, serve, NULL);
			for (long i = 0; i < n; i++) {
				int c = socket(AF_INET, SOCK_STREAM, 0);
				/* An explicit source port: the kernel's ephemeral search slows to a crawl
				 * once most ports hold a TIME_WAIT. SO_REUSEADDR lets the same port
				 * serve every destination port. */
				struct sockaddr_in b = a; b.sin_port = htons(32768 + i);
				setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
				if (bind(c, (void *)&b, sizeof b)) { perror("bind client"); exit(1); }
				if (connect(c, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
				close(c);
			}
			pthread_join(t, NULL);
			exit(0);
		}
	}
	int st, bad = 0;
	while (wait(&st) > 0) bad |= !WIFEXITED(st) || WEXITSTATUS(st);
	return bad;
}
