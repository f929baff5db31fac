"""spark-submit entry point of the quality stage (exit code 2 when a fatal check fails).

    spark-submit [spark options] jobs/quality.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("quality")
