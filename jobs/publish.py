"""spark-submit entry point of the publish stage.

    spark-submit [spark options] jobs/publish.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["publish", *sys.argv[1:]]))
