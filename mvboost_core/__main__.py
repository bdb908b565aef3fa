"""``python -m mvboost_core`` = the ``mvboost`` command."""
import sys

from .cli import main

sys.exit(main())
