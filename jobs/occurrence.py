"""spark-submit entry point of the occurrence stage.

    spark-submit [spark options] jobs/occurrence.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("occurrence")
