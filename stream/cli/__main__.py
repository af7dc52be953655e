"""`python -m stream.cli ...` is `seqstream ...`."""
import sys

from stream.cli.main import main

sys.exit(main())
