"""`python -m caspi ...`, the form torchrun launches: `torchrun --nproc_per_node 2 -m caspi train ...`."""

import sys

from caspi.cli import main

sys.exit(main())
