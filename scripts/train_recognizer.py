"""`python scripts/train_recognizer.py [key=value ...]` from a clone: the command `s2s-train-recognizer`.

The command and its options are in s2s/cli/train_recognizer.py (installed with the package).
"""

from s2s.cli.train_recognizer import main

if __name__ == "__main__":
    main()
