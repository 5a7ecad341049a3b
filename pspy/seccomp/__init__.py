"""Seccomp filters for principals: OCI profiles in, libseccomp filters out.

A principal's policy is worked out at bootstrap (``derive.effective``): a
shipped profile (``profiles/*.json``: default, web, strict), a profile file
of the app, ``"none"``, or an inline policy layered on ``default``; then the
rules derived from the decorator (``derive.DERIVATIONS``). The result, an
OCI profile for this machine's architecture only, is compiled to BPF
(``compile``) and stored in the plan; the principal loads it at start-up
(pspy._filter), before any app code runs.

One module per concern:

- ``profiles``: reading and checking OCI profiles, the shipped ones, and the
  rules of a profile that apply on this machine;
- ``derive``: a principal's effective policy (what pspy adds or changes);
- ``compile``: from a profile to BPF, through libseccomp;
- ``audit``: what a policy allows, and what of it is dangerous;
- ``denials``: the log lines for denied calls;
- ``learning``: pspy learn's record, turned into a minimal profile.

The names other modules use are re-exported here.
"""

from .audit import DANGEROUS, allowed, allowed_names, warnings
from .compile import allows_outright, compile_bpf, compiled, traps
from .denials import describe_denial, report
from .derive import DERIVATIONS, PER_CALL_NEEDS, effective, for_per_call
from .learning import LEARN, learned, learned_profile
from .profiles import (ACTIONS, NONE, SHIPPED, SeccompError, check_profile, is_syscall, native_arch, read_profile,
                       rules, shipped_path)

__all__ = ["ACTIONS", "DANGEROUS", "DERIVATIONS", "LEARN", "NONE", "PER_CALL_NEEDS", "SHIPPED", "SeccompError",
           "allowed", "allowed_names", "allows_outright", "check_profile", "compile_bpf", "compiled",
           "describe_denial", "effective", "for_per_call", "is_syscall", "learned", "learned_profile",
           "native_arch", "read_profile", "report", "rules", "shipped_path", "traps", "warnings"]
