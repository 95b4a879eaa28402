"""``python -m esapr.tuning``: one worker process of ``esapr tune --jobs N``."""
import sys

from esapr.tuning.worker import main

sys.exit(main())
