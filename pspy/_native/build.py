"""cffi (API mode) build of pspy's native helper, run by `pip install`.

Only what Python 3.11's os module lacks for sandboxing: unshare and setns
with namespace flags, mount (bind, remount read-only, proc, tmpfs),
umount2, pivot_root, joining a new session keyring, and libseccomp's
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

ffibuilder.set_source("pspy._native._helper", libraries=["seccomp"], source=r"""
    #define _GNU_SOURCE
    #include <sched.h>
    #include <unistd.h>
    #include <sys/mount.h>
    #include <sys/syscall.h>
    #include <stdlib.h>
    #include <seccomp.h>

    uint32_t pspy_act_errno(uint32_t err) { return SCMP_ACT_ERRNO(err); }

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
