"""A provider held to small limits, and one without any: the tests try to
exceed each limit from inside the principal, beside a control."""

import os

import pspy


@pspy.service(service_provider="Hog", perms={"data/": 0o700},
              limits={"memory": "64M", "processes": 16, "open_files": 32, "file_size": "1M",
                      "cpu_seconds": 3, "cpus": 0.5})
def pid():
    return os.getpid()


@pspy.service(service_provider="Free", perms={"free/": 0o700})
def free_pid():
    return os.getpid()


@pspy.service(service_provider="Hog")
def spin():
    """Runs until its provider's cpu_seconds end it."""
    while True:
        pass
