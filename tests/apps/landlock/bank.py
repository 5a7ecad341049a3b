"""Bank keeps a ledger no other principal is granted (perms 0o700)."""

import pspy


@pspy.service(service_provider="Bank", perms={"db/bank/": 0o700}, seccomp="default")
def balance():
    with open("db/bank/ledger.txt") as f:
        return f.read().strip()
