/* Start one principal in namespace mode, from C, with no Python between
 * clone and exec.
 *
 * Forking the supervisor's Python image once per process (launcher, PID 1,
 * principal) and running Python in the copies cost about 10 ms per start:
 * page tables copied three times and every page Python touched copied
 * again. Here the children share the supervisor's memory as vfork children
 * do (CLONE_VM), run only the code below on stacks of their own, and each
 * ends in exec or exit before the supervisor's call returns. All signals are
 * blocked meanwhile, so no handler of the supervisor's runs in them.
 *
 *   supervisor --clone(VM|VFORK)--> launcher: [rootless: join the app's user
 *     namespace] -> enter the principal's template mount namespace ->
 *     unshare(NEWNS (a copy of the template)|NEWPID|NEWIPC|NEWUTS[|NEWNET])
 *     -> hostname -> lo up -> clone PID 1 -> name the PID namespace -> exit
 *   PID 1 (clone(VM|VFORK|PARENT): the supervisor's child) -> new session ->
 *     fresh /proc, /tmp, /dev/shm (the ops) -> clone the principal ->
 *     drop everything -> parent-death signal -> exec pspy-init
 *   principal (clone(VM)) -> wait until pspy-init says it is no longer
 *     dumpable -> drop everything -> stdio, descriptors -> exec the command
 *
 * "Drop everything": join the app's user namespace (unless the launcher
 * did), empty the bounding set, groups/gid/uid, a new session keyring, no
 * capability (ambient included), no_new_privs, umask 077, SIGKILL on the
 * parent's death. (Not dumpable comes after exec, which resets it: pspy-init
 * and the principal's sitecustomize set it. Any credential change here makes
 * the memory the children share with the supervisor non-dumpable, so the
 * supervisor says so itself, see supervisor.py.)
 *
 * The children share the calling thread's thread-local storage, errno
 * included, and glibc's view of the supervisor's threads. So no two of them
 * ever run fallible code at once (the launcher waits in clone or read, the
 * principal waits for PID 1's exec before it does anything), ids change
 * through raw system calls (glibc's set*id would signal the supervisor's
 * threads), and nothing allocates or takes a lock another thread of the
 * supervisor may hold. Failures are written into the spec (errno and the
 * step, naming the path) for the Python side to raise.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define STACK_SIZE (256 * 1024)
#define GUARD_SIZE (64 * 1024)   /* below each stack: an overflow faults instead of writing the next one */

/* 32-bit ids where the plain calls take 16-bit ones (i386, arm) */
#ifdef SYS_setresuid32
#define PSPY_SYS_SETRESUID SYS_setresuid32
#define PSPY_SYS_SETRESGID SYS_setresgid32
#define PSPY_SYS_SETGROUPS SYS_setgroups32
#else
#define PSPY_SYS_SETRESUID SYS_setresuid
#define PSPY_SYS_SETRESGID SYS_setresgid
#define PSPY_SYS_SETGROUPS SYS_setgroups
#endif

static void append(char *out, size_t size, const char *text) {
    size_t used = strnlen(out, size);
    while (text != NULL && *text && used + 1 < size)
        out[used++] = *text++;
    out[used < size ? used : size - 1] = '\0';
}

static void format_int(char *out, size_t size, long value) {
    char digits[24];
    int n = 0;
    int negative = value < 0;
    unsigned long v = negative ? (unsigned long) -value : (unsigned long) value;
    do {
        digits[n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v && n < 22);
    size_t i = 0;
    if (negative && i + 1 < size)
        out[i++] = '-';
    while (n > 0 && i + 1 < size)
        out[i++] = digits[--n];
    out[i] = '\0';
}

/* Record what failed (the first failure wins); returns -1. */
static int fail_into(int *err, char *step, size_t size, const char *a, const char *b, const char *c,
                     const char *d, const char *e) {
    int saved = errno ? errno : EINVAL;
    if (*err == 0) {
        step[0] = '\0';
        append(step, size, a);
        append(step, size, b);
        append(step, size, c);
        append(step, size, d);
        append(step, size, e);
        *err = saved;
    }
    return -1;
}

#define FAIL(s, a, b, c, d) fail_into(&(s)->err, (s)->step, sizeof (s)->step, a, b, c, d, "")
#define FAIL5(s, a, b, c, d, e) fail_into(&(s)->err, (s)->step, sizeof (s)->step, a, b, c, d, e)
#define PFAIL(s, a, b, c, d) fail_into(&(s)->p_err, (s)->p_step, sizeof (s)->p_step, a, b, c, d, "")

static char *stack_top(struct pspy_spawn *s, int which) {
    return s->stacks + (size_t) (which + 1) * (GUARD_SIZE + STACK_SIZE);
}

#define LOOPBACK_STEP "bringing up lo in the principal's network namespace (netlink RTM_NEWLINK)"

/* Bring lo up in the new network namespace: send the RTM_NEWLINK request
 * pyroute2 encoded, and read the kernel's acknowledgement. */
static int loopback_up(struct pspy_spawn *s) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return FAIL(s, "opening a netlink socket in the principal's network namespace (socket AF_NETLINK)",
                    "", "", "");
    struct sockaddr_nl local;
    memset(&local, 0, sizeof local);
    local.nl_family = AF_NETLINK;
    union {
        struct nlmsghdr header;
        char bytes[1024];
    } answer;
    ssize_t n = -1;
    if (bind(fd, (struct sockaddr *) &local, sizeof local) == 0
            && send(fd, s->netlink, s->netlink_len, 0) == (ssize_t) s->netlink_len) {
        do {
            n = recv(fd, answer.bytes, sizeof answer.bytes, 0);
        } while (n < 0 && errno == EINTR);
    }
    int saved = errno;
    close(fd);
    errno = saved;
    if (n < (ssize_t) (sizeof answer.header + sizeof (int)))
        return FAIL(s, LOOPBACK_STEP, "", "", "");
    if (answer.header.nlmsg_type != NLMSG_ERROR) {
        errno = EPROTO;
        return FAIL(s, LOOPBACK_STEP, "", "", "");
    }
    int code;
    memcpy(&code, answer.bytes + sizeof answer.header, sizeof code);
    if (code != 0) {
        errno = -code;
        return FAIL(s, LOOPBACK_STEP, "", "", "");
    }
    return 0;
}

static int mkdirs(char *path, unsigned int mode) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = mkdir(path, mode);
        *p = '/';
        if (rc != 0 && errno != EEXIST)
            return -1;
    }
    if (mkdir(path, mode) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* PID 1's per-start mounts on the copy of the template. */
static int run_ops(struct pspy_spawn *s) {
    for (int i = 0; i < PSPY_MAX_SLOTS; i++)
        s->saved[i] = -1;
    int rc = 0;
    for (int i = 0; i < s->n_ops && rc == 0; i++) {
        const struct pspy_op *op = &s->ops[i];
        if (op->kind == PSPY_OP_MOUNT) {
            if (mount(op->source, op->target, op->fstype, op->flags, op->data) != 0)
                rc = FAIL5(s, "mounting ", op->fstype ? op->fstype : op->source, " on ", op->target, " (mount)");
        } else if (op->kind == PSPY_OP_MKDIRS) {
            char path[4096];
            path[0] = '\0';
            append(path, sizeof path, op->target);
            if (mkdirs(path, op->mode) != 0)
                rc = FAIL(s, "creating the folder ", op->target, " (mkdir)", "");
        } else if (op->kind == PSPY_OP_SAVE && op->slot >= 0 && op->slot < PSPY_MAX_SLOTS) {
            s->saved[op->slot] = open(op->target, O_PATH | O_CLOEXEC);
            if (s->saved[op->slot] < 0)
                rc = FAIL(s, "opening ", op->target, " (open)", "");
        } else if (op->kind == PSPY_OP_BIND_SAVED && op->slot >= 0 && op->slot < PSPY_MAX_SLOTS) {
            char source[64] = "/proc/self/fd/";
            char number[24];
            format_int(number, sizeof number, s->saved[op->slot]);
            append(source, sizeof source, number);
            if (mount(source, op->target, NULL, MS_BIND | MS_REC, NULL) != 0)
                rc = FAIL5(s, "bind-mounting ", op->source, " onto ", op->target, " (mount MS_BIND)");
        } else {
            errno = EINVAL;
            rc = FAIL(s, "running a mount step of unknown kind (mount)", "", "", "");
        }
    }
    for (int i = 0; i < PSPY_MAX_SLOTS; i++)
        if (s->saved[i] >= 0)
            close(s->saved[i]);
    return rc;
}

int pspy_keyring_unreachable(void) {
    int saved = errno;
    /* Each call fails in the kernel on its arguments (a NULL type is
       EFAULT; the session keyring's id is an answer): only a filter says
       EPERM or ENOSYS before the kernel looks (or a kernel without keys). */
#define DENIED(call) ((call) < 0 && (errno == EPERM || errno == ENOSYS))
    int all = DENIED(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* KEY_SPEC_SESSION_KEYRING */, 0))
        && DENIED(syscall(SYS_add_key, (char *) 0, (char *) 0, (void *) 0, (size_t) 0, 0))
        && DENIED(syscall(SYS_request_key, (char *) 0, (char *) 0, (char *) 0, 0));
#undef DENIED
    errno = saved;
    return all;
}

/* Become the principal and keep nothing (see the top of this file). */
static int drop(struct pspy_spawn *s, int *err, char *step, size_t size) {
    char id[24];
    if (!s->rootless && setns(s->userns_fd, CLONE_NEWUSER) != 0)
        return fail_into(err, step, size, "joining the app's user namespace (setns CLONE_NEWUSER)", "", "", "", "");
    /* Joining a user namespace refills the bounding set: emptied with the
       CAP_SETPCAP the join gives, before the uid changes. */
    for (int cap = 0; cap <= s->last_cap; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            return fail_into(err, step, size, "emptying the capability bounding set (prctl PR_CAPBSET_DROP)",
                             "", "", "", "");
    /* Rootless, setgroups is denied in the app's user namespace (the
       kernel's condition for mapping a gid without root), and a rootless
       plan has no supplementary groups. */
    if (!(s->rootless && s->n_groups == 0)
            && syscall(PSPY_SYS_SETGROUPS, (size_t) s->n_groups, (const gid_t *) s->groups) != 0)
        return fail_into(err, step, size, "setting the supplementary groups (setgroups)", "", "", "", "");
    format_int(id, sizeof id, (long) s->gid);
    if (syscall(PSPY_SYS_SETRESGID, s->gid, s->gid, s->gid) != 0)
        return fail_into(err, step, size, "changing to gid ", id, " (setresgid)", "", "");
    format_int(id, sizeof id, (long) s->uid);
    if (syscall(PSPY_SYS_SETRESUID, s->uid, s->uid, s->uid) != 0)
        return fail_into(err, step, size, "changing to uid ", id, " (setresuid)", "", "");
    if (getuid() != s->uid || geteuid() != s->uid || getgid() != s->gid) {
        errno = EPERM;
        return fail_into(err, step, size, "changing to uid ", id, " (setresuid: the ids did not change)", "", "");
    }
    /* A new, empty session keyring: whoever started the app may hold keys.
       Where keyctl is denied (a container's seccomp profile), the inherited
       one stays only if no keyring call reaches the kernel: the filter that
       denies them cannot be shed, so the principal cannot reach it either. */
    if (syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, (char *) 0) < 0) {
        int saved = errno;
        if ((saved == EPERM || saved == ENOSYS) && pspy_keyring_unreachable()) {
            s->keyring_kept = 1;
        } else {
            errno = saved;
            return fail_into(err, step, size, "joining a fresh session keyring (keyctl KEYCTL_JOIN_SESSION_KEYRING)",
                             "", "", "", "");
        }
    }
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0)
        return fail_into(err, step, size, "clearing all capabilities (capset)", "", "", "", "");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        return fail_into(err, step, size, "clearing the ambient capabilities (prctl PR_CAP_AMBIENT)", "", "", "", "");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail_into(err, step, size, "setting no_new_privs (prctl PR_SET_NO_NEW_PRIVS)", "", "", "", "");
    umask(077);
    /* After the id change, which clears it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        return fail_into(err, step, size, "arming the parent-death signal (prctl PR_SET_PDEATHSIG)", "", "", "", "");
    return 0;
}

/* Descriptor `i` becomes `want[i]` for i < n (want[i] < 0: left closed);
 * `keep` stay under their numbers, inheritable; `hold` stays close-on-exec;
 * everything else is closed. */
static int place_fds(const int *want, int n, const int *keep, int n_keep, int hold) {
    int moved[8];
    for (int i = 0; i < n; i++) {
        moved[i] = want[i] < 0 ? -1 : fcntl(want[i], F_DUPFD_CLOEXEC, 64);
        if (want[i] >= 0 && moved[i] < 0)
            return -1;
    }
    for (int i = 0; i < n; i++) {
        if (moved[i] < 0)
            close(i);
        else if (dup2(moved[i], i) < 0)
            return -1;
    }
    for (int i = 0; i < n_keep; i++)
        if (fcntl(keep[i], F_SETFD, 0) != 0)
            return -1;
    /* close_range over the gaps between what stays */
    unsigned int low = (unsigned int) n;
    for (;;) {
        int next = -1;
        for (int i = 0; i < n_keep; i++)
            if (keep[i] >= (int) low && (next < 0 || keep[i] < next))
                next = keep[i];
        if (hold >= (int) low && (next < 0 || hold < next))
            next = hold;
        unsigned int high = next < 0 ? ~0U : (unsigned int) next - 1;
        if (high >= low && syscall(SYS_close_range, low, high, 0) != 0)
            return -1;
        if (next < 0)
            break;
        low = (unsigned int) next + 1;
    }
    return 0;
}

/* Signals as a fresh process has them: default actions (Python ignores
 * SIGPIPE and SIGXFSZ, and ignored signals stay ignored across exec), none
 * blocked. */
static void reset_signals(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);   /* EINVAL for the ones glibc reserves */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void exec_command(struct pspy_spawn *s) {
    const char *file = s->argv[0];
    if (strchr(file, '/') != NULL) {
        execve(file, s->argv, s->envp);
        return;
    }
    /* execvpe's search, without its allocation */
    int found_denied = 0;
    const char *p = s->path ? s->path : "/usr/bin:/bin";
    for (;;) {
        const char *end = strchrnul(p, ':');
        char candidate[4096];
        size_t dir_len = end == p ? 1 : (size_t) (end - p);
        if (dir_len + 1 + strlen(file) + 1 > sizeof candidate) {
            errno = ENAMETOOLONG;   /* skipped, as glibc does: never a cut-short path */
        } else {
            memcpy(candidate, end == p ? "." : p, dir_len);
            candidate[dir_len] = '/';
            memcpy(candidate + dir_len + 1, file, strlen(file) + 1);
            execve(candidate, s->argv, s->envp);
        }
        if (errno == EACCES)
            found_denied = 1;
        else if (errno != ENOENT && errno != ENOTDIR && errno != ENAMETOOLONG)
            return;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    errno = found_denied ? EACCES : ENOENT;
}

static int principal_main(void *arg) {
    struct pspy_spawn *s = arg;
    close(s->go[1]);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != 1)
        _exit(125);   /* PID 1 is gone already */
    /* Wait until pspy-init, exec'd and no longer dumpable, says go: no code
       of the principal's may run while PID 1 could be ptraced by it (same
       uid, rootless), and until PID 1 has exec'd it runs in the memory and
       thread-local storage this process shares. End of file: PID 1 failed.
       (All signals are blocked: read cannot be interrupted.) */
    char go = 0;
    if (read(s->go[0], &go, 1) != 1)
        _exit(125);
    close(s->go[0]);
    if (chdir(s->cwd) != 0) {
        PFAIL(s, "changing into ", s->cwd, " (chdir)", "");
        _exit(125);
    }
    if (drop(s, &s->p_err, s->p_step, sizeof s->p_step) != 0)
        _exit(125);
    if (getppid() != 1)
        _exit(125);
    if (place_fds(s->stdio, 3, s->keep, s->n_keep, s->done[1]) != 0) {
        PFAIL(s, "placing the principal's descriptors (dup2)", "", "", "");
        _exit(125);
    }
    for (int i = 0; i < s->n_rlimits; i++) {
        struct rlimit limit = {(rlim_t) s->rlimits[i].soft, (rlim_t) s->rlimits[i].hard};
        if (setrlimit(s->rlimits[i].resource, &limit) != 0) {
            char soft[24];
            format_int(soft, sizeof soft, (long) s->rlimits[i].soft);
            fail_into(&s->p_err, s->p_step, sizeof s->p_step, "setting ",
                      s->rlimits[i].name ? s->rlimits[i].name : "a resource limit", " to ", soft, " (setrlimit)");
            _exit(125);
        }
    }
    /* On its own stderr, where its log is: what keeping the keyring means. */
    if (s->keyring_kept && s->keyring_warning != NULL)
        (void) !write(2, s->keyring_warning, strlen(s->keyring_warning));
    reset_signals();
    exec_command(s);
    s->exec_err = errno;
    PFAIL(s, "running ", s->argv[0], ", the command of the principal (execve)", "");
    _exit(127);
}

static int init_main(void *arg) {
    struct pspy_spawn *s = arg;
    setsid();
    umask(022);   /* the folders the ops make are traversable whatever the supervisor's umask */
    if (run_ops(s) != 0)
        _exit(125);
    if (pipe2(s->go, O_CLOEXEC) != 0) {
        FAIL(s, "making a pipe (pipe2)", "", "", "");
        _exit(125);
    }
    int child = clone(principal_main, stack_top(s, 2), CLONE_VM | SIGCHLD, s);
    if (child < 0) {
        FAIL(s, "starting the principal (clone)", "", "", "");
        _exit(125);
    }
    close(s->go[0]);
    if (drop(s, &s->err, s->step, sizeof s->step) != 0)
        goto failed;
    /* PID 1's parent is the supervisor (CLONE_PARENT); if it died before
       the parent-death signal was armed, its pidfd says so. */
    struct pollfd supervisor = {s->supervisor_pidfd, POLLIN, 0};
    if (poll(&supervisor, 1, 0) != 0) {
        errno = ESRCH;
        FAIL(s, "starting the principal (poll: the supervisor is gone)", "", "", "");
        goto failed;
    }
    char pid_text[24], go_text[24];
    format_int(pid_text, sizeof pid_text, child);
    /* PID 1 keeps stderr only (for the kernel's and its own messages): whoever
       reads the principal's output sees its end when the principal ends. */
    int want[5] = {-1, -1, s->stdio[2], s->go[1], s->init_exe_fd};
    if (place_fds(want, 5, NULL, 0, -1) != 0) {
        FAIL(s, "placing PID 1's descriptors (dup2)", "", "", "");
        goto failed;
    }
    if (fcntl(4, F_SETFD, FD_CLOEXEC) != 0) {
        FAIL(s, "placing PID 1's descriptors (dup2)", "", "", "");
        goto failed;
    }
    format_int(go_text, sizeof go_text, 3);
    char *init_argv[] = {(char *) s->init_name, pid_text, go_text, NULL};
    char *init_envp[] = {NULL};
    reset_signals();
    syscall(SYS_execveat, 4, "", init_argv, init_envp, AT_EMPTY_PATH);
    FAIL(s, "running pspy-init as PID 1 (execveat)", "", "", "");
failed:
    kill(child, SIGKILL);
    _exit(125);
}

static int launcher_main(void *arg) {
    struct pspy_spawn *s = arg;
    if (s->rootless && setns(s->userns_fd, CLONE_NEWUSER) != 0) {
        FAIL(s, "joining the app's user namespace (setns CLONE_NEWUSER)", "", "", "");
        _exit(1);
    }
    if (setns(s->template_fd, CLONE_NEWNS) != 0) {
        FAIL(s, "entering the principal's template mount namespace (setns CLONE_NEWNS)", "", "", "");
        _exit(1);
    }
    /* Into the principal's cgroups ("0": the writer itself) before the cgroup
       namespace is made, so that its root is the principal's own cgroup;
       PID 1 and the principal inherit it. */
    for (int i = 0; i < s->n_cgroup_fds; i++) {
        if (write(s->cgroup_fds[i], "0", 1) != 1) {
            FAIL(s, "moving the principal into its cgroup (write to cgroup.procs)", "", "", "");
            _exit(1);
        }
    }
    if (unshare(s->ns_flags) != 0) {
        FAIL(s, "making the principal's namespaces (unshare)", "", "", "");
        _exit(1);
    }
    if (s->hostname != NULL && sethostname(s->hostname, strlen(s->hostname)) != 0) {
        FAIL(s, "setting the host name ", s->hostname, " (sethostname)", "");
        _exit(1);
    }
    if (s->netlink != NULL && loopback_up(s) != 0)
        _exit(1);
    /* done: end of file once PID 1 and the principal have both exec'd (or
       died); only then may the supervisor go on and free the stacks. */
    if (pipe2(s->done, O_CLOEXEC) != 0) {
        FAIL(s, "making a pipe (pipe2)", "", "", "");
        _exit(1);
    }
    int init = clone(init_main, stack_top(s, 1), CLONE_VM | CLONE_VFORK | CLONE_PARENT | SIGCHLD, s);
    if (init < 0) {
        FAIL(s, "starting PID 1 of the principal's PID namespace (clone)", "", "", "");
        _exit(1);
    }
    s->init_pid = init;
    close(s->done[1]);
    /* The principal runs now; this process must not touch errno until it
       has exec'd or died. Signals are blocked: read returns 0 then. */
    char byte;
    while (read(s->done[0], &byte, 1) > 0)
        ;
    struct stat st;
    if (fstatat(s->proc_fd, "self/ns/pid_for_children", &st, 0) == 0)
        s->pidns = st.st_ino;
    _exit(s->err || s->p_err ? 1 : 0);
}

int pspy_spawn(struct pspy_spawn *s) {
    s->err = s->p_err = s->exec_err = s->keyring_kept = 0;
    s->step[0] = s->p_step[0] = '\0';
    s->init_pid = 0;
    s->pidns = 0;
    s->stack_size = 3 * (GUARD_SIZE + STACK_SIZE);
    s->stacks = mmap(NULL, s->stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                     -1, 0);
    if (s->stacks == MAP_FAILED) {
        FAIL(s, "allocating the launcher's stacks (mmap)", "", "", "");
        return -1;
    }
    for (int i = 0; i < 3; i++)
        mprotect(s->stacks + (size_t) i * (GUARD_SIZE + STACK_SIZE), GUARD_SIZE, PROT_NONE);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int launcher = clone(launcher_main, stack_top(s, 0), CLONE_VM | CLONE_VFORK | SIGCHLD, s);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (launcher < 0) {
        errno = saved;
        FAIL(s, "starting the launcher (clone)", "", "", "");
    } else {
        int status = 0;
        while (waitpid(launcher, &status, __WALL) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && !s->err && !s->p_err)) {
            /* Killed (the OOM killer, say) before it could say why: its
               children may still run on the stacks, so they are left mapped,
               and PID 1, if there is one, goes with everything under it. */
            if (s->init_pid > 0)
                kill(s->init_pid, SIGKILL);
            errno = WIFSIGNALED(status) ? EINTR : EPROTO;
            FAIL(s, "starting the principal (waitpid: the launcher died before it finished)", "", "", "");
            return -1;
        }
    }
    munmap(s->stacks, s->stack_size);
    s->stacks = NULL;
    return s->err || s->p_err ? -1 : 0;
}
