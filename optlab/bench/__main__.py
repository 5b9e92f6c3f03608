"""`python -m optlab.bench ...` is `optlab bench ...`."""

import sys

from optlab.cli import main

if __name__ == "__main__":
  sys.exit(main(["bench", *sys.argv[1:]]))
