"""spark-submit entry point of the series stage.

    spark-submit [spark options] jobs/series.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["series", *sys.argv[1:]]))
