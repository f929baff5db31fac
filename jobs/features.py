"""spark-submit entry point of the features stage.

    spark-submit [spark options] jobs/features.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
