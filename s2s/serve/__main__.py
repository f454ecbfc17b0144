import sys

from s2s.serve.server import main

sys.exit(main())
