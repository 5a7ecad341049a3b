"""cffi (API mode) build of pspy's native helper, run by `pip install`.

Only what Python 3.11's os module lacks for sandboxing: unshare and setns
with namespace flags, mount (bind, remount read-only, proc, tmpfs),
umount2, pivot_root, and joining a new session keyring. Each is a thin wrapper returning -1 with errno set;
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
""")

ffibuilder.set_source("pspy._native._helper", r"""
    #define _GNU_SOURCE
    #include <sched.h>
    #include <unistd.h>
    #include <sys/mount.h>
    #include <sys/syscall.h>

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
