import pspy


@pspy.service(service_provider="Store", perms={"data/store/": 0o700})
def noop():
    return "store"
