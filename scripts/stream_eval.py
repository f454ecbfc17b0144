"""`python scripts/stream_eval.py [key=value ...]` from a clone: the same command as `s2s-eval`.

The command and its options are in s2s/cli/stream_eval.py (installed with the package).
"""

from s2s.cli.stream_eval import main

if __name__ == "__main__":
    main()
