"""`python -m jaxopt_tokens.cli`."""

import sys

from .main import main

sys.exit(main())
