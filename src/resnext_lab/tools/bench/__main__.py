"""`python -m resnext_lab.tools.bench`."""

import sys

from resnext_lab.tools.bench import main

sys.exit(main())
