"""spark-submit entry point of the vocabulary stage (micdm's DICOM concepts into the site's vocabulary).

    spark-submit [spark options] jobs/vocabulary.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("vocabulary")
