"""Notes keeps notes of its own; no network, and no seccomp filter, so that
what stops it in tests/test_landlock.py is Landlock alone."""

import pspy


@pspy.service(service_provider="Notes", perms={"db/notes/": 0o700}, seccomp="none")
def count():
    return len(open("db/notes/notes.txt").read().splitlines())
