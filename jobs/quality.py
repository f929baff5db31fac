"""spark-submit entry point of the quality stage (exit code 2 when a fatal check fails).

    spark-submit [spark options] jobs/quality.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["quality", *sys.argv[1:]]))
