"""spark-submit entry point of the whole pipeline, every stage in order.

    spark-submit [spark options] jobs/run_pipeline.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
