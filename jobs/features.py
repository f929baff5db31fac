"""spark-submit entry point of the features stage.

    spark-submit [spark options] jobs/features.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["features", *sys.argv[1:]]))
