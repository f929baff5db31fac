"""spark-submit entry point of the link stage.

    spark-submit [spark options] jobs/link.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("link")
