"""spark-submit entry point of the link stage.

    spark-submit [spark options] jobs/link.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["link", *sys.argv[1:]]))
