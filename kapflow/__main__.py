import sys

from kapflow.entrypoints.cli import main

sys.exit(main())
