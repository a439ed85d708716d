/*
 * The first process of a pod sandbox: it holds the pod's namespaces open and,
 * as PID 1 of the pod's PID namespace (when the pod shares one), reaps the
 * orphans that end up with it. It does nothing else: it sleeps in pause(2)
 * until SIGTERM or SIGINT, on which it exits 0.
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
    int saved = errno;

    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

static int handle(int sig, void (*handler)(int), int flags)
{
    struct sigaction action;

    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    if (sigaction(sig, &action, NULL) != 0) {
        fprintf(stderr, "pause: sigaction(%s): %s\n", strsignal(sig), strerror(errno));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (hull)");
        return 0;
    }
    if (handle(SIGTERM, on_stop, 0) || handle(SIGINT, on_stop, 0) ||
        handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART))
        return 1;
    for (;;)
        pause();
}
