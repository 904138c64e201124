import sys

from viscoin.cli import main

sys.exit(main())
