"""Turn one principal's plan into a running process.

One module per isolation concern, as nsjail lays them out:
``chroot`` (the paper's filesystem jail), ``ids`` (groups, gid, uid),
``caps`` (no_new_privs, parent-death signal), and ``spawn``, which puts
them together in the order the design fixes. Namespace mode adds ``user``
(the app's user namespace), ``mount`` (a principal's root), ``template``
(that root built once, copied per start), ``net`` (loopback), ``pid``
(PID 1, pspy-init) and ``launch``, which hands the start to the native
spawn path (pspy/_native/spawn.c).
"""

from .spawn import principal_env, resolve_argv, run_as_principal, run_script, spawn_principal

__all__ = ["principal_env", "resolve_argv", "run_as_principal", "run_script", "spawn_principal"]
