/* The namespace-mode spawn path (spawn.c), shared with the cffi module.
 *
 * Python fills one struct pspy_spawn (pspy/sandbox/launch.py); pspy_spawn()
 * starts the principal from it without running any Python between clone
 * and exec. */
#ifndef PSPY_SPAWN_H
#define PSPY_SPAWN_H

#include <stddef.h>

/* What PID 1 does to the copy of the template, in order, before the principal starts. */
#define PSPY_OP_MOUNT 1        /* mount(source, target, fstype, flags, data) */
#define PSPY_OP_MKDIRS 2       /* mkdir -p target (mode) */
#define PSPY_OP_SAVE 3         /* open target (O_PATH) into slot */
#define PSPY_OP_BIND_SAVED 4   /* bind-mount what slot holds (recursively) onto target */
#define PSPY_MAX_SLOTS 16

struct pspy_op {
    int kind;
    int slot;
    const char *source;
    const char *target;
    const char *fstype;
    const char *data;
    unsigned long flags;
    unsigned int mode;
};

struct pspy_rlimit {
    int resource;
    unsigned long long soft, hard;
    const char *name;           /* "RLIMIT_NOFILE": named if setting it fails */
};

struct pspy_spawn {
    /* namespaces */
    int rootless;               /* join the app's user namespace first (it owns the new ones) */
    int userns_fd;              /* the app's user namespace */
    int template_fd;            /* the principal's template mount namespace (sandbox/template.py) */
    int ns_flags;               /* CLONE_NEW* made for this start */
    const char *hostname;
    const unsigned char *netlink;   /* the request that brings lo up (pyroute2 encodes it), or NULL */
    size_t netlink_len;
    int proc_fd;                /* the host's /proc: names the new PID namespace */
    int supervisor_pidfd;       /* readable once the supervisor is gone */
    const struct pspy_op *ops;
    int n_ops;
    const int *cgroup_fds;      /* cgroup.procs of the principal's cgroups (opened for writing), or none */
    int n_cgroup_fds;
    /* the principal */
    unsigned int uid, gid;
    const unsigned int *groups;
    int n_groups;
    int last_cap;
    const char *cwd;
    const char *init_name;      /* argv[0] of PID 1 ("pspy-init:<principal>") */
    char *const *argv;
    char *const *envp;
    const char *path;           /* PATH searched for argv[0] when it has no slash */
    int stdio[3];
    const int *keep;            /* descriptors the principal keeps, by number (sorted) */
    int n_keep;
    int init_exe_fd;            /* pspy-init, opened by the supervisor */
    const struct pspy_rlimit *rlimits;   /* set by the principal just before exec (only lowered) */
    int n_rlimits;
    const char *keyring_warning;   /* written to the principal's stderr if it keeps the session keyring */
    /* results */
    int init_pid;               /* PID 1, as the supervisor's pid namespace numbers it */
    unsigned long long pidns;   /* inode of the principal's PID namespace */
    int err;                    /* launcher or PID 1 failed: errno, and step says doing what */
    char step[512];
    int p_err;                  /* the principal failed before exec */
    char p_step[512];
    int exec_err;               /* ... in exec itself: errno (ENOENT: no such program) */
    int keyring_kept;           /* keyctl is denied, and so is every keyring call: see pspy_keyring_unreachable */
    /* private to spawn.c */
    int go[2];
    int done[2];
    int saved[PSPY_MAX_SLOTS];
    char *stacks;
    size_t stack_size;
};

int pspy_spawn(struct pspy_spawn *spec);

/* 1 if keyctl, add_key and request_key are all denied to this process
 * (EPERM or ENOSYS before the kernel looks at their arguments): a seccomp
 * filter it cannot shed, or a kernel without keys. */
int pspy_keyring_unreachable(void);

#endif
