"""``python -m fluidml_tvm.tools.bench MODE ARGS.json RESULT.json``: one measurement process."""

import sys

from .worker import worker_main

sys.exit(worker_main())
