/*
 * pause: the sandbox process of every pod in the ktpy test bed.
 *
 * It holds the pod's namespaces open and, as PID 1 of the pod's PID
 * namespace when that is shared, reaps orphaned children so they do not
 * pile up as zombies. SIGINT and SIGTERM end it with status 0; everything
 * else just wakes it up.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	int saved = errno; /* waitpid must not clobber errno of the interrupted code */

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int install(int sig, void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	/* SA_NOCLDSTOP: a stopped child is not one to reap. */
	sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		puts("ktbed-pause 1");
		return 0;
	}
	if (getpid() != 1)
		fputs("pause: not PID 1, orphans of this PID namespace are not mine to reap\n", stderr);
	if (install(SIGINT, on_stop) || install(SIGTERM, on_stop) || install(SIGCHLD, on_child)) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
