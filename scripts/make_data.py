"""`python scripts/make_data.py [key=value ...]` from a clone: the same command as `s2s-make-data`.

The command and its options are in s2s/cli/make_data.py (installed with the package).
"""

from s2s.cli.make_data import main

if __name__ == "__main__":
    main()
