"""``python -m sdweb [flags] [txt2img|models]``: the same command line as webui.py."""

import sys

from sdweb.cli import main

sys.exit(main())
