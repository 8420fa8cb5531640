"""`python -m moot.runtime.entry`: the default command of a service image, chosen by MOOT_SERVICE.

The Dockerfile builds one image per service from one file; this saves each image a command of
its own (compose and Kubernetes still name theirs explicitly).
"""

from __future__ import annotations

import os
import runpy
import sys

MODULES = {
    "gateway": "moot_gateway",
    "member-worker": "moot_member_worker",
    "arbiter": "moot_arbiter",
    "recorder": "moot_recorder",
    "test-model": "moot.devstack.model_server",
}


def main() -> None:
    service = os.environ.get("MOOT_SERVICE", "")
    module = MODULES.get(service)
    if module is None:
        sys.exit(f"MOOT_SERVICE is {service!r}; it names the image's service: {', '.join(MODULES)}")
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
