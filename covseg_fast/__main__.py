"""`python -m covseg_fast ...` = `covseg ...` (for environments where the console script is not on PATH)."""
import sys

from .cli.main import main

sys.exit(main())
