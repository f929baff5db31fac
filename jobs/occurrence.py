"""spark-submit entry point of the occurrence stage.

    spark-submit [spark options] jobs/occurrence.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["occurrence", *sys.argv[1:]]))
