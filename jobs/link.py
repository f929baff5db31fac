"""spark-submit entry point of the link stage.

    spark-submit [spark options] jobs/link.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["link", *sys.argv[1:]]))
