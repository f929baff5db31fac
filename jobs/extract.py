"""spark-submit entry point of the extract stage.

    spark-submit [spark options] jobs/extract.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["extract", *sys.argv[1:]]))
