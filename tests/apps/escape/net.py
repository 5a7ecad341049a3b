import pspy


@pspy.service(service_provider="Net", perms={"data/net/": 0o700}, network=True)
def noop():
    return "net"
