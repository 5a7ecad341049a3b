/* pspy-init: PID 1 of a principal's PID namespace.
 *
 *   pspy-init:<principal> CHILD_PID GO_FD
 *
 * Started by spawn.c after the principal (CHILD_PID in this namespace),
 * already as the principal, with no capability. It makes itself
 * non-dumpable (exec made it dumpable again, and rootless the principal has
 * its uid), tells the principal to go on through GO_FD, then reaps orphans
 * and passes SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 on to the
 * principal, and exits with the principal's status. When it exits, the
 * kernel kills everything left in the namespace.
 *
 * The principal itself must not be PID 1: the kernel drops signals PID 1
 * has no handler for (a Python front end would ignore SIGTERM), and orphans
 * would never be reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child;

static void forward(int sig) {
    if (child > 0)
        kill(child, sig);
}

int main(int argc, char **argv) {
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || argc != 3)
        return 125;
    child = (pid_t) strtol(argv[1], NULL, 10);
    int go = (int) strtol(argv[2], NULL, 10);
    prctl(PR_SET_NAME, argv[0], 0, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    if (child <= 0 || write(go, "g", 1) != 1) {
        if (child > 0)
            kill(child, SIGKILL);
        return 125;
    }
    close(go);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        if (pid == child)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
}
