"""The paper's filesystem jail: chroot into the jail, then enter the app folder."""

import os

from .steps import step


def enter(jail: str, cwd: str) -> None:
    # chdir after chroot: a working directory left outside the new root
    # would be a way back to the host filesystem.
    with step(f"entering the jail {jail} (chroot)"):
        os.chroot(jail)
    with step("changing into the jail's / (chdir)"):
        os.chdir("/")
    with step(f"changing into {cwd} in the jail (chdir)"):
        os.chdir(cwd)
