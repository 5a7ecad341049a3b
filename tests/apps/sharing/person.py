"""Person keeps profiles its group (the front end) may read, and writes the
front end's shared notes through the front end's group."""

import pspy


@pspy.service(service_provider="Person", group="PersonGroup", perms={"db/person/": 0o750},
              extra_groups=["Front"])
def profile(name):
    with open("db/person/profiles.txt") as f:
        return [line.strip() for line in f if line.startswith(name)]
