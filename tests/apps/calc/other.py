import pspy


@pspy.service(service_provider="Other", callers=["web"])
def hello(name):
    return f"hello {name}"
