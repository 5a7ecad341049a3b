"""The paper's filesystem jail: chroot into the jail, then enter the app folder."""

import os


def enter(jail: str, cwd: str) -> None:
    # chdir after chroot: a working directory left outside the new root
    # would be a way back to the host filesystem.
    os.chroot(jail)
    os.chdir("/")
    os.chdir(cwd)
