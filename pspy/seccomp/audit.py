"""What a policy lets through, as analyze and learn show it, and which of
that is dangerous.
"""

from __future__ import annotations

from .derive import AF_INET, AF_INET6, AF_PACKET, AF_UNIX

# Families a policy should not allow; analyze warns for each one it does.
DANGEROUS = frozenset("""
mount umount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig fsmount fspick mount_setattr
ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd bpf kexec_load kexec_file_load
init_module finit_module delete_module keyctl add_key request_key unshare setns userfaultfd
perf_event_open open_by_handle_at name_to_handle_at iopl ioperm reboot swapon swapoff
clock_settime clock_adjtime settimeofday adjtimex stime io_uring_setup io_uring_enter
io_uring_register personality acct quotactl quotactl_fd syslog vhangup lookup_dcookie
fanotify_init sethostname setdomainname modify_ldt uselib
""".split())


def allowed(profile: dict) -> list[str]:
    """Syscall names the policy lets through (with arguments shown where it checks them)."""
    out = []
    for entry in profile["syscalls"]:
        if entry["action"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            continue
        cond = ", ".join(_describe_arg(a) for a in entry.get("args", []))
        out.extend(f"{n}({cond})" if cond else n for n in entry["names"])
    return sorted(set(out))


def allowed_names(profile: dict) -> set[str]:
    return {entry_name for entry in profile["syscalls"] if entry["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
            for entry_name in entry["names"]}


def warnings(profile: dict) -> list[str]:
    out = []
    if profile["defaultAction"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
        out.append(f"the default action {profile['defaultAction']} lets every unlisted syscall through, "
                   "dangerous ones included")
    for name in sorted(allowed_names(profile) & DANGEROUS):
        out.append(f"allows {name}, a dangerous syscall")
    for entry in profile["syscalls"]:
        if entry["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") and "clone" in entry["names"] \
                and not entry.get("args"):
            out.append("allows clone with any flags: new namespaces included")
    return out


def _describe_arg(arg: dict) -> str:
    op = arg["op"].replace("SCMP_CMP_", "")
    value = arg.get("value", 0)
    if arg["index"] == 0 and op == "EQ":
        names = {AF_UNIX: "AF_UNIX", AF_INET: "AF_INET", AF_INET6: "AF_INET6", AF_PACKET: "AF_PACKET",
                 16: "AF_NETLINK"}
        if value in names:
            return f"arg0 == {names[value]}"
    if op == "MASKED_EQ":
        return f"arg{arg['index']} & {hex(value)} == {hex(arg.get('valueTwo', 0))}"
    symbol = {"EQ": "==", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}[op]
    return f"arg{arg['index']} {symbol} {value}"
