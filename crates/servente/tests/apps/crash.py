#!/usr/bin/env python3
"""An app that exits at once, for servente's restart-limit test (standard library only)."""

import os
import sys

print("crash app starting (instance %s, pid %d); exiting with 3" % (os.environ.get("SERVENTE_INSTANCE"), os.getpid()), flush=True)
print("crash app: something went wrong", file=sys.stderr, flush=True)
sys.exit(3)
