"""A provider that leaves a process of its own behind, as a service that
starts a helper daemon would: the tests check that nothing of the app
outlives its supervisor."""

import subprocess
import sys

import pspy

SLEEP = "import time; time.sleep(600)"


@pspy.service(service_provider="Keeper", callers=["web"])
def start_helper(marker):
    """Start a sleeper in a session of its own (setsid); its pid, as the provider sees it."""
    helper = subprocess.Popen([sys.executable, "-c", SLEEP, marker], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return helper.pid


@pspy.service(service_provider="Keeper")
def hello():
    return "hello"
