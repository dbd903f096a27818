"""``python -m deepencoder.optical render|compress ...``"""

import sys

from .cli import main

sys.exit(main())
