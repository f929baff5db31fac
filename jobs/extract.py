"""spark-submit entry point of the extract stage.

    spark-submit [spark options] jobs/extract.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("extract")
