"""Bank keeps a ledger nobody else may touch, and rates every principal may read."""

import pspy


@pspy.service(service_provider="Bank", perms={"db/bank/": 0o700, "db/public/": 0o755})
def rate():
    with open("db/public/rates.txt") as f:
        return f.read().strip()
