"""`python -m modeling_psdclip.training [options]` (or `accelerate launch -m modeling_psdclip.training`): train.py."""

import sys

from .cli import main

sys.exit(main())
