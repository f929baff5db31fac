"""spark-submit entry point of the whole pipeline, every stage in order.

    spark-submit [spark options] jobs/run_pipeline.py --config conf/<env>.yml [key=value ...]
"""

from micdm.cli import run_job

if __name__ == "__main__":
    run_job("run")
