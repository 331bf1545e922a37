"""`python -m resnext_lab.bench`."""

import sys

from resnext_lab.bench import main

sys.exit(main())
