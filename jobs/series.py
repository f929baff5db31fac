"""spark-submit entry point of the series stage.

    spark-submit [spark options] jobs/series.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["series", *sys.argv[1:]]))
