"""spark-submit entry point of the whole pipeline, every stage in order.

    spark-submit [spark options] jobs/run_pipeline.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["run", *sys.argv[1:]]))
