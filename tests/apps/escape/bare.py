import pspy


# No seccomp filter: the escape battery checks the namespaces on their own here.
@pspy.service(service_provider="Bare", seccomp="none")
def noop():
    return "bare"
