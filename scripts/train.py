"""`python scripts/train.py [key=value ...]` from a clone: the same command as `s2s-train`.

The command and its options are in s2s/cli/train.py (installed with the package).
"""

from s2s.cli.train import main

if __name__ == "__main__":
    main()
