"""``python -m extractor.cli``: the ``trawl`` console command."""
import sys

from extractor.cli import main

sys.exit(main())
