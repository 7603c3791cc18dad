"""`python -m digitlab ...` (and `torchrun -m digitlab train ...`)."""

import sys

from digitlab.cli import main

sys.exit(main())
