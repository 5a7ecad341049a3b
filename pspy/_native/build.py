"""cffi (API mode) build of pspy's native helper, run by `pip install`.

Only what Python 3.11's os module lacks for sandboxing: unshare and setns
with namespace flags, mount (bind, remount read-only, proc, tmpfs),
umount2, pivot_root, joining a new session keyring, the namespace-mode
spawn path (spawn.c: clone to exec without Python), and libseccomp's
filter building (linked with -lseccomp; Debian's libseccomp-dev). Each is a thin wrapper returning -1 with errno set;
pspy._native turns that into an exception naming the step and the path.
"""

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef("""
    int pspy_unshare(int flags);
    int pspy_setns(int fd, int nstype);
    int pspy_mount(const char *source, const char *target, const char *fstype,
                   unsigned long flags, const char *data);
    int pspy_umount2(const char *target, int flags);
    int pspy_pivot_root(const char *new_root, const char *put_old);
    long pspy_join_new_session_keyring(void);

    /* The namespace-mode spawn path (spawn.c, spawn.h) */
    #define PSPY_OP_MOUNT ...
    #define PSPY_OP_MKDIRS ...
    #define PSPY_OP_SAVE ...
    #define PSPY_OP_BIND_SAVED ...
    #define PSPY_MAX_SLOTS ...
    struct pspy_op { int kind; int slot; const char *source; const char *target; const char *fstype;
                     const char *data; unsigned long flags; unsigned int mode; };
    struct pspy_rlimit { int resource; unsigned long long soft; unsigned long long hard; const char *name; };
    struct pspy_spawn {
        int rootless; int userns_fd; int template_fd; int ns_flags; const char *hostname;
        const unsigned char *netlink; size_t netlink_len; int proc_fd; int supervisor_pidfd;
        const struct pspy_op *ops; int n_ops; const int *cgroup_fds; int n_cgroup_fds;
        unsigned int uid; unsigned int gid; const unsigned int *groups; int n_groups; int last_cap;
        const char *cwd; const char *init_name; char *const *argv; char *const *envp; const char *path;
        int stdio[3]; const int *keep; int n_keep; int init_exe_fd;
        const struct pspy_rlimit *rlimits; int n_rlimits; const char *keyring_warning;
        int init_pid; unsigned long long pidns; int err; char step[512]; int p_err; char p_step[512]; int exec_err;
        int keyring_kept;
        ...;
    };
    int pspy_spawn(struct pspy_spawn *spec);
    int pspy_keyring_unreachable(void);

    #define CLONE_NEWNS ...
    #define CLONE_NEWUTS ...
    #define CLONE_NEWIPC ...
    #define CLONE_NEWUSER ...
    #define CLONE_NEWPID ...
    #define CLONE_NEWNET ...
    #define CLONE_NEWCGROUP ...
    #define MS_RDONLY ...
    #define MS_NOSUID ...
    #define MS_NODEV ...
    #define MS_NOEXEC ...
    #define MS_REMOUNT ...
    #define MS_BIND ...
    #define MS_REC ...
    #define MS_PRIVATE ...
    #define MS_SLAVE ...
    #define MS_STRICTATIME ...
    #define MNT_DETACH ...

    /* libseccomp: compile and load a principal's filter (pspy/seccomp/) */
    typedef void *scmp_filter_ctx;
    enum scmp_compare { SCMP_CMP_NE = 1, SCMP_CMP_LT = 2, SCMP_CMP_LE = 3, SCMP_CMP_EQ = 4,
                        SCMP_CMP_GE = 5, SCMP_CMP_GT = 6, SCMP_CMP_MASKED_EQ = 7, ... };
    enum scmp_filter_attr { SCMP_FLTATR_ACT_DEFAULT, SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP,
                            SCMP_FLTATR_CTL_TSYNC, ... };
    struct scmp_arg_cmp { unsigned int arg; enum scmp_compare op; uint64_t datum_a; uint64_t datum_b; };
    struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
    scmp_filter_ctx seccomp_init(uint32_t def_action);
    void seccomp_release(scmp_filter_ctx ctx);
    int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
    uint32_t seccomp_arch_native(void);
    int seccomp_arch_exist(const scmp_filter_ctx ctx, uint32_t arch_token);
    int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
    int seccomp_syscall_resolve_name_arch(uint32_t arch_token, const char *name);
    char *seccomp_syscall_resolve_num_arch(uint32_t arch_token, int num);
    int seccomp_rule_add_exact_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                                     unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
    int seccomp_load(const scmp_filter_ctx ctx);
    const struct scmp_version *seccomp_version(void);
    void free(void *ptr);
    uint32_t pspy_act_errno(uint32_t err);
    int pspy_install_sigsys_reporter(int fd, int err, int stack_signal);
    int pspy_traceback_available(void);
    int pspy_learn_start(int out_fd);
    int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
    int pspy_load_bpf(const unsigned char *program, size_t length, unsigned int flags);
    int pspy_landlock_abi(void);
    int pspy_landlock_create(uint64_t handled, uint64_t handled_net, uint64_t scoped);
    int pspy_landlock_add(int ruleset, int fd, uint64_t rights);
    int pspy_landlock_enforce(int ruleset);
    #define SECCOMP_FILTER_FLAG_TSYNC ...
    int pspy_learn_load(scmp_filter_ctx ctx);
    void pspy_learn_set_service(int tid, int service);
    #define SCMP_ACT_NOTIFY ...
    #define SCMP_ACT_ALLOW ...
    #define SCMP_ACT_KILL_PROCESS ...
    #define SCMP_ACT_KILL_THREAD ...
    #define SCMP_ACT_LOG ...
    #define SCMP_ACT_TRAP ...
    #define SCMP_ARCH_X86_64 ...
    #define SCMP_ARCH_X86 ...
    #define SCMP_ARCH_X32 ...
    #define SCMP_ARCH_AARCH64 ...
    #define SCMP_ARCH_ARM ...
    #define __NR_SCMP_ERROR ...
""")

ffibuilder.set_source("pspy._native._helper", libraries=["seccomp"],
                      sources=["pspy/_native/spawn.c"], include_dirs=["pspy/_native"], source=r"""
    #define _GNU_SOURCE
    #include "spawn.h"
    #include <sched.h>
    #include <unistd.h>
    #include <sys/mount.h>
    #include <sys/syscall.h>
    #include <errno.h>
    #include <stdlib.h>
    #include <seccomp.h>

    uint32_t pspy_act_errno(uint32_t err) { return SCMP_ACT_ERRNO(err); }

    /* Denials the filter traps (SCMP_ACT_TRAP) arrive here as SIGSYS, in the
       thread that made the call, which is then not executed. The handler
       makes the call fail with `denial_errno`, as SCMP_ACT_ERRNO would, and
       writes a record to `report_fd` (a non-blocking pipe read by
       pspy.seccomp's reporter thread): a header with the thread, the syscall
       and its arguments, the thread's Python stack as CPython's faulthandler
       prints it, and an end mark. Everything here is async-signal-safe.
       The stack comes from _Py_DumpTraceback (written to be safe in a signal
       handler) where CPython exports it; where it does not (3.13), from
       faulthandler itself: pspy._filter registers it for `stack_signal`
       (writing to `report_fd`), and the handler sends that signal to its own
       thread, whose delivery runs faulthandler's handler before tkill
       returns, so the stack lands between the header and the end mark. Only
       when the filter allows tkill (pspy._filter checks): a tkill trapped
       here, with SIGSYS blocked, would kill the process. */
    #include <signal.h>
    #include <ucontext.h>
    #include <string.h>
    #include <stdint.h>
    #include <stdatomic.h>

    /* CPython's faulthandler dumper, looked up when the reporter is installed:
       3.11 and 3.12 export it, 3.13 no longer does. Linking against it would
       make the helper fail to load there ("undefined symbol"); without it a
       record carries no Python stack. */
    #include <dlfcn.h>
    typedef void (*pspy_dump_fn)(int fd, PyThreadState *tstate);
    static pspy_dump_fn dump_traceback = NULL;
    static int stack_signal = 0;

    struct pspy_denial {
        uint32_t magic;          /* 0x70737931 */
        int32_t tid;
        int32_t nr;
        uint32_t arch;
        uint64_t args[6];
    };
    static int report_fd = -1;
    static int denial_errno = 1;
    static atomic_flag report_lock = ATOMIC_FLAG_INIT;

    static void pspy_on_sigsys(int sig, siginfo_t *info, void *context) {
        ucontext_t *uc = (ucontext_t *) context;
        struct pspy_denial d;
        int saved = errno;
        (void) sig;
        if (info->si_code != 1 /* SYS_SECCOMP */)
            return;
        memset(&d, 0, sizeof d);
        d.magic = 0x70737931;
        d.tid = (int32_t) syscall(SYS_gettid);
        d.nr = info->si_syscall;
        d.arch = info->si_arch;
    #if defined(__x86_64__)
        d.args[0] = uc->uc_mcontext.gregs[REG_RDI];
        d.args[1] = uc->uc_mcontext.gregs[REG_RSI];
        d.args[2] = uc->uc_mcontext.gregs[REG_RDX];
        d.args[3] = uc->uc_mcontext.gregs[REG_R10];
        d.args[4] = uc->uc_mcontext.gregs[REG_R8];
        d.args[5] = uc->uc_mcontext.gregs[REG_R9];
        uc->uc_mcontext.gregs[REG_RAX] = -denial_errno;
    #elif defined(__aarch64__)
        for (int i = 0; i < 6; i++)
            d.args[i] = uc->uc_mcontext.regs[i];
        uc->uc_mcontext.regs[0] = (uint64_t) -denial_errno;
    #endif
        if (report_fd >= 0) {
            while (atomic_flag_test_and_set(&report_lock))
                ;   /* another thread is writing its record: records must not interleave */
            if (write(report_fd, &d, sizeof d) == sizeof d) {
                PyThreadState *tstate = PyGILState_GetThisThreadState();
                if (tstate != NULL && dump_traceback != NULL)
                    dump_traceback(report_fd, tstate);
                else if (tstate != NULL && stack_signal > 0)
                    (void) syscall(SYS_tkill, d.tid, stack_signal);
                (void) write(report_fd, "\0\n", 2);
            }
            atomic_flag_clear(&report_lock);
        }
        errno = saved;
    }

    /* Learning (pspy learn): every syscall of the principal is sent to a
       listener thread by seccomp user notification, recorded, and let
       through (SECCOMP_USER_NOTIF_FLAG_CONTINUE). The thread is started
       before the filter is loaded, and the filter is loaded without TSYNC,
       so the listener itself is not filtered (and cannot wait on itself).
       Each first (syscall, service) pair is written to `learn_out` as
       "pspy-learn NR SERVICE ARCH"; the service is what the serving thread
       last declared with pspy_learn_set_service (0: none). */
    #include <pthread.h>
    #include <time.h>
    #include <fcntl.h>
    #include <sys/stat.h>
    #include <sys/uio.h>

    #define LEARN_SLOTS 4096
    static _Atomic(scmp_filter_ctx) learn_ctx = NULL;
    static atomic_int learn_ready = 0;
    static atomic_int learn_failed = 0;
    static int learn_out = 2;
    static atomic_int slot_tid[LEARN_SLOTS];
    static atomic_int slot_service[LEARN_SLOTS];
    static unsigned char learn_seen[1024][32];

    void pspy_learn_set_service(int tid, int service) {
        int i = (unsigned) tid % LEARN_SLOTS;
        atomic_store(&slot_service[i], service);
        atomic_store(&slot_tid[i], tid);
    }

    static int learn_service_of(int tid) {
        int i = (unsigned) tid % LEARN_SLOTS;
        return atomic_load(&slot_tid[i]) == tid ? atomic_load(&slot_service[i]) : 0;
    }

    /* Files a principal looks for that its view lacks (pspy learn reports
       those the host has, pspy/learn.py). The notification arrives before
       the call runs, so its result is unknown: an absolute path that does
       not exist in the view now, seen from this thread (same root, same
       ids), is written once as "pspy-learn-missing PATH". The path is read
       from the caller's memory, which another of its threads may change
       meanwhile: it is only ever reported, never a reason to allow
       anything. Relative paths are left out (they are the app's, below its
       working folder), and so are opens that create (O_CREAT) and paths of
       processes this thread may not read (children forked by the principal
       are not dumpable). */
    #define MISSING_SLOTS 8192
    static uint64_t missing_seen[MISSING_SLOTS];
    static int missing_count = 0;

    /* Copy a NUL-terminated string of the caller's: page by page, as a
       read across into an unmapped page fails as a whole. */
    static int learn_read_string(pid_t pid, uint64_t addr, char *out, size_t size) {
        size_t got = 0;
        if (addr == 0)
            return -1;
        while (got < size - 1) {
            uint64_t here = addr + got;
            size_t chunk = 4096 - (size_t) (here % 4096);
            if (chunk > size - 1 - got)
                chunk = size - 1 - got;
            struct iovec local = { out + got, chunk }, remote = { (void *) (uintptr_t) here, chunk };
            ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
            if (n <= 0)
                return -1;
            if (memchr(out + got, 0, (size_t) n) != NULL)
                return 0;
            got += (size_t) n;
        }
        return -1;   /* longer than PATH_MAX: no path the kernel would take */
    }

    static void learn_check_path(const struct seccomp_notif *req) {
        const uint64_t *a = (const uint64_t *) req->data.args;
        uint64_t path = 0, flags = 0;
        int nofollow = 0;
        if ((uint32_t) req->data.arch != (uint32_t) seccomp_arch_native())
            return;
        switch (req->data.nr) {
    #ifdef SYS_open
        case SYS_open: path = a[0]; flags = a[1]; break;
    #endif
    #ifdef SYS_stat
        case SYS_stat: path = a[0]; break;
    #endif
    #ifdef SYS_lstat
        case SYS_lstat: path = a[0]; nofollow = 1; break;
    #endif
    #ifdef SYS_access
        case SYS_access: path = a[0]; break;
    #endif
        case SYS_openat: path = a[1]; flags = a[2]; break;
    #ifdef SYS_openat2
        case SYS_openat2: {
            /* struct open_how begins with the flags */
            struct iovec local = { &flags, sizeof flags }, remote = { (void *) (uintptr_t) a[2], sizeof flags };
            if (process_vm_readv(req->pid, &local, 1, &remote, 1, 0) != (ssize_t) sizeof flags)
                return;
            path = a[1];
            break;
        }
    #endif
    #ifdef SYS_newfstatat
        case SYS_newfstatat: path = a[1]; nofollow = (a[3] & AT_SYMLINK_NOFOLLOW) != 0; break;
    #endif
        case SYS_statx: path = a[1]; nofollow = (a[2] & AT_SYMLINK_NOFOLLOW) != 0; break;
        case SYS_faccessat: path = a[1]; break;
    #ifdef SYS_faccessat2
        case SYS_faccessat2: path = a[1]; nofollow = (a[3] & AT_SYMLINK_NOFOLLOW) != 0; break;
    #endif
        default: return;
        }
        if (flags & O_CREAT)
            return;
        if (flags & O_NOFOLLOW)
            nofollow = 1;
        char buf[4096];
        if (learn_read_string(req->pid, path, buf, sizeof buf) != 0 || buf[0] != '/')
            return;
        for (const char *c = buf; *c; c++)
            if ((unsigned char) *c < 0x20 || *c == 0x7f)
                return;   /* one record per line: a path with a line break is not reported */
        struct stat st;
        if (fstatat(AT_FDCWD, buf, &st, nofollow ? AT_SYMLINK_NOFOLLOW : 0) == 0 || errno != ENOENT)
            return;
        uint64_t h = 1469598103934665603ULL;   /* FNV-1a, to report each path once */
        for (const char *c = buf; *c; c++)
            h = (h ^ (unsigned char) *c) * 1099511628211ULL;
        if (h == 0)
            h = 1;
        size_t i = h % MISSING_SLOTS;
        while (missing_seen[i] != 0) {
            if (missing_seen[i] == h)
                return;
            i = (i + 1) % MISSING_SLOTS;
        }
        if (missing_count >= MISSING_SLOTS / 2)
            return;   /* enough to report; the table stays fast */
        missing_seen[i] = h;
        missing_count++;
        dprintf(learn_out, "pspy-learn-missing %s\n", buf);
    }

    static void *learn_loop(void *unused) {
        struct seccomp_notif *req = NULL;
        struct seccomp_notif_resp *resp = NULL;
        scmp_filter_ctx ctx;
        int fd = -1;
        (void) unused;
        if (seccomp_notify_alloc(&req, &resp) != 0) {
            atomic_store(&learn_failed, 1);
            return NULL;
        }
        /* The fd exists once the main thread's seccomp_load has made the
           filter; libseccomp keeps it, and the context must stay alive
           until learn_ready is set (pspy_learn_load waits for that). */
        while (!atomic_load(&learn_failed)) {
            ctx = atomic_load(&learn_ctx);
            if (ctx != NULL && (fd = seccomp_notify_fd(ctx)) >= 0)
                break;
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
        if (fd < 0)
            return NULL;
        atomic_store(&learn_ready, 1);
        for (;;) {
            memset(req, 0, sizeof *req);
            int rc = seccomp_notify_receive(fd, req);
            if (rc == -EINTR || rc == -ENOENT)
                continue;
            if (rc != 0)
                break;   /* the filter is gone */
            int nr = req->data.nr;
            int service = learn_service_of((int) req->pid);
            if (nr >= 0 && nr < 1024 && service >= 0 && service < 256
                    && !(learn_seen[nr][service >> 3] & (1 << (service & 7)))) {
                learn_seen[nr][service >> 3] |= (unsigned char) (1 << (service & 7));
                dprintf(learn_out, "pspy-learn %d %d %u\n", nr, service, req->data.arch);
            }
            learn_check_path(req);   /* before the answer: the caller waits, its path stays put */
            memset(resp, 0, sizeof *resp);
            resp->id = req->id;
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            seccomp_notify_respond(fd, resp);   /* ENOENT: the caller died meanwhile */
        }
        return NULL;
    }

    /* Load a BPF program compiled at bootstrap (seccomp_export_bpf): a
       principal's start-up then needs neither libseccomp's compiler nor the
       profile. no_new_privs first, as the kernel requires. */
    #include <sys/prctl.h>
    #include <linux/filter.h>
    int pspy_load_bpf(const unsigned char *program, size_t length, unsigned int flags) {
        struct sock_fprog fprog;
        if (length == 0 || length % sizeof(struct sock_filter) != 0 || length / sizeof(struct sock_filter) > 4096) {
            errno = EINVAL;
            return -1;
        }
        fprog.len = (unsigned short) (length / sizeof(struct sock_filter));
        fprog.filter = (struct sock_filter *) program;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            return -1;
        return (int) syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, flags, &fprog);
    }

    /* Landlock (every principal at start-up, pspy/_landlock.py, and each
       call process of isolation="per_call"). The
       structs are spelled out here, so older kernel headers build it too. */
    #ifndef SYS_landlock_create_ruleset
    #define SYS_landlock_create_ruleset 444
    #define SYS_landlock_add_rule 445
    #define SYS_landlock_restrict_self 446
    #endif
    struct pspy_ll_ruleset { uint64_t handled_access_fs, handled_access_net, scoped; };
    struct pspy_ll_beneath { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));

    int pspy_landlock_abi(void) {
        return (int) syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */);
    }

    /* handled_net needs ABI 4 and scoped ABI 6: the attribute is passed as
       long as the fields in use, so an older kernel takes the rest. Rules
       are added one at a time (pspy/_landlock.py restrict_paths), so a
       process with a small open_files limit never holds more than the
       ruleset and one path open. */
    int pspy_landlock_create(uint64_t handled, uint64_t handled_net, uint64_t scoped) {
        struct pspy_ll_ruleset attr = { handled, handled_net, scoped };
        size_t size = scoped ? sizeof attr : handled_net ? 2 * sizeof(uint64_t) : sizeof(uint64_t);
        return (int) syscall(SYS_landlock_create_ruleset, &attr, size, 0);
    }

    int pspy_landlock_add(int ruleset, int fd, uint64_t rights) {
        struct pspy_ll_beneath rule = { rights, fd };
        return (int) syscall(SYS_landlock_add_rule, ruleset, 1 /* LANDLOCK_RULE_PATH_BENEATH */, &rule, 0);
    }

    int pspy_landlock_enforce(int ruleset) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            return -1;
        return (int) syscall(SYS_landlock_restrict_self, ruleset, 0);
    }

    int pspy_learn_start(int out_fd) {
        pthread_t thread;
        pthread_attr_t attr;
        learn_out = out_fd;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        return pthread_create(&thread, &attr, learn_loop, NULL);
    }

    int pspy_learn_load(scmp_filter_ctx ctx) {
        atomic_store(&learn_ctx, ctx);
        int rc = seccomp_load(ctx);
        if (rc < 0) {
            atomic_store(&learn_failed, 1);
            return rc;
        }
        while (!atomic_load(&learn_ready) && !atomic_load(&learn_failed))
            ;   /* no system call here: it would wait on the listener it waits for */
        return atomic_load(&learn_ready) ? 0 : -1;
    }

    int pspy_install_sigsys_reporter(int fd, int err, int signal_for_stack) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = pspy_on_sigsys;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        report_fd = fd;
        denial_errno = err;
        /* signal_for_stack: > 0, that signal (faulthandler's); 0, CPython's
           dumper (NULL where it is not exported); < 0, no stack at all. */
        dump_traceback = signal_for_stack == 0 ? (pspy_dump_fn) dlsym(RTLD_DEFAULT, "_Py_DumpTraceback") : NULL;
        stack_signal = signal_for_stack > 0 ? signal_for_stack : 0;
        return sigaction(SIGSYS, &sa, NULL);
    }

    int pspy_traceback_available(void) {
        return dlsym(RTLD_DEFAULT, "_Py_DumpTraceback") != NULL;
    }

    int pspy_unshare(int flags) { return unshare(flags); }
    int pspy_setns(int fd, int nstype) { return setns(fd, nstype); }
    int pspy_mount(const char *source, const char *target, const char *fstype,
                   unsigned long flags, const char *data) {
        return mount(source, target, fstype, flags, data);
    }
    int pspy_umount2(const char *target, int flags) { return umount2(target, flags); }
    /* keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new anonymous session
       keyring, so a principal does not share the keys of whoever started it */
    long pspy_join_new_session_keyring(void) {
        return syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, (char *) 0);
    }
    /* glibc has no wrapper for pivot_root */
    int pspy_pivot_root(const char *new_root, const char *put_old) {
        return (int) syscall(SYS_pivot_root, new_root, put_old);
    }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
