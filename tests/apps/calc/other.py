import pspy


@pspy.service(service_provider="Other", callers=["web"])
def hello(name):
    return f"hello {name}"


@pspy.service(service_provider="Other")
def ping():
    """Every principal may call this, so Other's socket is in every principal's view."""
    return "pong"
