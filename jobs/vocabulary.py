"""spark-submit entry point of the vocabulary stage (micdm's DICOM concepts into the site's vocabulary).

    spark-submit [spark options] jobs/vocabulary.py --config conf/<env>.yml [key=value ...]
"""

import sys

from micdm.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["vocabulary", *sys.argv[1:]]))
