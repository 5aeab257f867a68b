"""Through a standby scheduler: a session, a temporary view and a query (run by
tests/spark_connect.rs with the standby's sc:// URL)."""

import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
spark.createDataFrame([(1,), (2,)], "x INT").createOrReplaceTempView("v")
print("rows", spark.sql("SELECT sum(x) AS s FROM v").first().s)
spark.stop()
