"""Start sdweb: ``python webui.py [flags]`` (see ``python webui.py --help``)."""

import sys

from sdweb.cli import main

if __name__ == "__main__":
    sys.exit(main())
