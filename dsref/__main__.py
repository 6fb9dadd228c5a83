import sys

from dsref.cli import main

sys.exit(main())
