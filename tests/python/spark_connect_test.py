"""PySpark (the thin `pyspark-client`, no JVM) against Ember's Spark Connect endpoint.

Run by tests/spark_connect.rs against a cluster of real processes, with:
  EMBER_SPARK_URL   sc://host:port of the scheduler's Spark Connect endpoint
  EMBER_EXPECTED    a folder of qN.arrow files: single-node DataFusion's TPC-H answers
  EMBER_QUERIES     the folder of the TPC-H queries' SQL (q1.sql ... q22.sql)
  EMBER_TPCH_DATA   the folder of the TPC-H tables (one Parquet folder per table)
  EMBER_SCRATCH     a folder the test may write into (inside the cluster's allowed locations)
"""

import datetime
import decimal
import math
import os
import threading
import uuid

import pyarrow as pa
import pytest
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import Row, SparkSession, Window
from pyspark.sql import functions as F

URL = os.environ["EMBER_SPARK_URL"]
EXPECTED = os.environ["EMBER_EXPECTED"]
QUERIES = os.environ["EMBER_QUERIES"]
TPCH = os.environ["EMBER_TPCH_DATA"]
SCRATCH = os.environ["EMBER_SCRATCH"]


@pytest.fixture(scope="module")
def spark():
    session = SparkSession.builder.remote(URL).getOrCreate()
    yield session
    session.stop()


# ---- comparing with DataFusion ------------------------------------------------------------


def normal(value):
    """A value as comparable across engines: decimals and floats to 6 significant digits."""
    if isinstance(value, (decimal.Decimal, float)):
        f = float(value)
        if f == 0 or math.isnan(f):
            return 0.0 if f == 0 else "nan"
        return round(f, 6 - int(math.floor(math.log10(abs(f)))) - 1)
    return value


def values(rows):
    return [tuple(normal(v) for v in row) for row in rows]


def expected_rows(q):
    with pa.ipc.open_file(os.path.join(EXPECTED, f"q{q}.arrow")) as reader:
        table = reader.read_all()
    return values(tuple(r.values()) for r in table.to_pylist())


def assert_same(actual_rows, expected, ordered):
    actual = values(tuple(r) for r in actual_rows)
    if not ordered:
        actual, expected = sorted(actual, key=repr), sorted(expected, key=repr)
    assert actual == expected


def query_text(q):
    with open(os.path.join(QUERIES, f"q{q}.sql")) as f:
        return f.read()


# ---- the 22 TPC-H queries through spark.sql -------------------------------------------------


@pytest.mark.parametrize("q", range(1, 23))
def test_tpch_through_spark_sql(spark, q):
    df = spark.sql(query_text(q))
    rows = df.collect()
    assert_same(rows, expected_rows(q), ordered="order by" in query_text(q).lower())


# ---- TPC-H queries written with the DataFrame API --------------------------------------------


def t(spark, name):
    return spark.table(name)


def revenue():
    return F.col("l_extendedprice") * (1 - F.col("l_discount"))


def q1(spark):
    return (
        t(spark, "lineitem")
        .filter(F.col("l_shipdate") <= F.lit(datetime.date(1998, 9, 2)))
        .groupBy("l_returnflag", "l_linestatus")
        .agg(
            F.sum("l_quantity").alias("sum_qty"),
            F.sum("l_extendedprice").alias("sum_base_price"),
            F.sum(revenue()).alias("sum_disc_price"),
            F.sum(revenue() * (1 + F.col("l_tax"))).alias("sum_charge"),
            F.avg("l_quantity").alias("avg_qty"),
            F.avg("l_extendedprice").alias("avg_price"),
            F.avg("l_discount").alias("avg_disc"),
            F.count("*").alias("count_order"),
        )
        .orderBy("l_returnflag", "l_linestatus")
    )


def q3(spark):
    c = t(spark, "customer").filter(F.col("c_mktsegment") == "BUILDING")
    o = t(spark, "orders").filter(F.col("o_orderdate") < F.lit(datetime.date(1995, 3, 15)))
    li = t(spark, "lineitem").filter(F.col("l_shipdate") > F.lit(datetime.date(1995, 3, 15)))
    return (
        c.join(o, c.c_custkey == o.o_custkey)
        .join(li, F.col("l_orderkey") == F.col("o_orderkey"))
        .groupBy("l_orderkey", "o_orderdate", "o_shippriority")
        .agg(F.sum(revenue()).alias("revenue"))
        .select("l_orderkey", "revenue", "o_orderdate", "o_shippriority")
        .orderBy(F.col("revenue").desc(), "o_orderdate")
        .limit(10)
    )


def q4(spark):
    o = t(spark, "orders").filter(
        (F.col("o_orderdate") >= F.lit(datetime.date(1993, 7, 1)))
        & (F.col("o_orderdate") < F.lit(datetime.date(1993, 10, 1)))
    )
    late = t(spark, "lineitem").filter(F.col("l_commitdate") < F.col("l_receiptdate"))
    return (
        o.join(late, o.o_orderkey == late.l_orderkey, "left_semi")
        .groupBy("o_orderpriority")
        .agg(F.count("*").alias("order_count"))
        .orderBy("o_orderpriority")
    )


def q5(spark):
    r = t(spark, "region").filter(F.col("r_name") == "ASIA")
    o = t(spark, "orders").filter(
        (F.col("o_orderdate") >= F.lit(datetime.date(1994, 1, 1)))
        & (F.col("o_orderdate") < F.lit(datetime.date(1995, 1, 1)))
    )
    joined = (
        t(spark, "customer")
        .join(o, F.col("c_custkey") == F.col("o_custkey"))
        .join(t(spark, "lineitem"), F.col("l_orderkey") == F.col("o_orderkey"))
        .join(
            t(spark, "supplier"),
            (F.col("l_suppkey") == F.col("s_suppkey"))
            & (F.col("c_nationkey") == F.col("s_nationkey")),
        )
        .join(t(spark, "nation"), F.col("s_nationkey") == F.col("n_nationkey"))
        .join(r, F.col("n_regionkey") == F.col("r_regionkey"))
    )
    return (
        joined.groupBy("n_name")
        .agg(F.sum(revenue()).alias("revenue"))
        .orderBy(F.desc("revenue"))
    )


def q6(spark):
    return (
        t(spark, "lineitem")
        .where(
            (F.col("l_shipdate") >= F.lit(datetime.date(1994, 1, 1)))
            & (F.col("l_shipdate") < F.lit(datetime.date(1995, 1, 1)))
            & F.col("l_discount").between(F.lit(decimal.Decimal("0.05")), F.lit(decimal.Decimal("0.07")))
            & (F.col("l_quantity") < 24)
        )
        .agg(F.sum(F.col("l_extendedprice") * F.col("l_discount")).alias("revenue"))
    )


def q10(spark):
    o = t(spark, "orders").filter(
        (F.col("o_orderdate") >= F.lit(datetime.date(1993, 10, 1)))
        & (F.col("o_orderdate") < F.lit(datetime.date(1994, 1, 1)))
    )
    li = t(spark, "lineitem").filter(F.col("l_returnflag") == "R")
    return (
        t(spark, "customer")
        .join(o, F.col("c_custkey") == F.col("o_custkey"))
        .join(li, F.col("l_orderkey") == F.col("o_orderkey"))
        .join(t(spark, "nation"), F.col("c_nationkey") == F.col("n_nationkey"))
        .groupBy("c_custkey", "c_name", "c_acctbal", "c_phone", "n_name", "c_address", "c_comment")
        .agg(F.sum(revenue()).alias("revenue"))
        .select(
            "c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone",
            "c_comment",
        )
        .orderBy(F.col("revenue").desc())
        .limit(20)
    )


def q12(spark):
    li = t(spark, "lineitem").filter(
        F.col("l_shipmode").isin("MAIL", "SHIP")
        & (F.col("l_commitdate") < F.col("l_receiptdate"))
        & (F.col("l_shipdate") < F.col("l_commitdate"))
        & (F.col("l_receiptdate") >= F.lit(datetime.date(1994, 1, 1)))
        & (F.col("l_receiptdate") < F.lit(datetime.date(1995, 1, 1)))
    )
    high = F.col("o_orderpriority").isin("1-URGENT", "2-HIGH")
    return (
        t(spark, "orders")
        .join(li, F.col("o_orderkey") == F.col("l_orderkey"))
        .groupBy("l_shipmode")
        .agg(
            F.sum(F.when(high, 1).otherwise(0)).alias("high_line_count"),
            F.sum(F.when(~high, 1).otherwise(0)).alias("low_line_count"),
        )
        .orderBy("l_shipmode")
    )


def q13(spark):
    o = t(spark, "orders").filter(~F.col("o_comment").like("%special%requests%"))
    counts = (
        t(spark, "customer")
        .join(o, F.col("c_custkey") == F.col("o_custkey"), "left_outer")
        .groupBy("c_custkey")
        .agg(F.count("o_orderkey").alias("c_count"))
    )
    return (
        counts.groupBy("c_count")
        .agg(F.count("*").alias("custdist"))
        .orderBy(F.desc("custdist"), F.desc("c_count"))
    )


def q14(spark):
    li = t(spark, "lineitem").filter(
        (F.col("l_shipdate") >= F.lit(datetime.date(1995, 9, 1)))
        & (F.col("l_shipdate") < F.lit(datetime.date(1995, 10, 1)))
    )
    promo = F.when(F.col("p_type").startswith("PROMO"), revenue()).otherwise(0)
    return (
        li.join(t(spark, "part"), F.col("l_partkey") == F.col("p_partkey"))
        .agg((100.00 * F.sum(promo) / F.sum(revenue())).alias("promo_revenue"))
    )


def q18(spark):
    big = (
        t(spark, "lineitem")
        .groupBy("l_orderkey")
        .agg(F.sum("l_quantity").alias("total"))
        .filter(F.col("total") > 300)
        .select(F.col("l_orderkey").alias("big_key"))
    )
    return (
        t(spark, "customer")
        .join(t(spark, "orders"), F.col("c_custkey") == F.col("o_custkey"))
        .join(big, F.col("o_orderkey") == F.col("big_key"), "left_semi")
        .join(t(spark, "lineitem"), F.col("o_orderkey") == F.col("l_orderkey"))
        .groupBy("c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice")
        .agg(F.sum("l_quantity").alias("sum_qty"))
        .orderBy(F.desc("o_totalprice"), "o_orderdate")
        .limit(100)
    )


def q19(spark):
    p, li = t(spark, "part"), t(spark, "lineitem")
    common = F.col("l_shipmode").isin("AIR", "AIR REG") & (F.col("l_shipinstruct") == "DELIVER IN PERSON")

    def branch(brand, containers, low, high, size):
        return (
            (F.col("p_brand") == brand)
            & F.col("p_container").isin(*containers)
            & (F.col("l_quantity") >= low)
            & (F.col("l_quantity") <= high)
            & F.col("p_size").between(1, size)
        )

    condition = (
        branch("Brand#12", ["SM CASE", "SM BOX", "SM PACK", "SM PKG"], 1, 11, 5)
        | branch("Brand#23", ["MED BAG", "MED BOX", "MED PKG", "MED PACK"], 10, 20, 10)
        | branch("Brand#34", ["LG CASE", "LG BOX", "LG PACK", "LG PKG"], 20, 30, 15)
    )
    return (
        li.join(p, F.col("p_partkey") == F.col("l_partkey"))
        .filter(common & condition)
        .agg(F.sum(revenue()).alias("revenue"))
    )


DATAFRAME_QUERIES = {1: q1, 3: q3, 4: q4, 5: q5, 6: q6, 10: q10, 12: q12, 13: q13, 14: q14, 18: q18, 19: q19}


@pytest.mark.parametrize("q", sorted(DATAFRAME_QUERIES))
def test_tpch_with_the_dataframe_api(spark, q):
    rows = DATAFRAME_QUERIES[q](spark).collect()
    assert_same(rows, expected_rows(q), ordered=q not in (6, 14, 19))


# ---- DataFrame operations ------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(spark):
    return spark.createDataFrame(
        [
            (1, "ann", "eng", 100.0, None),
            (2, "bob", "eng", 80.0, "x"),
            (3, "cid", "ops", 60.0, "y"),
            (4, "dee", None, 70.0, None),
        ],
        "id INT, name STRING, dept STRING, salary DOUBLE, tag STRING",
    )


def tuples(df):
    return [tuple(r) for r in df.collect()]


def test_select_with_column_filter_and_cast(spark, people):
    df = (
        people.select("id", "name", (F.col("salary") * 2).alias("double"))
        .withColumn("big", F.col("double") > 150)
        .withColumns({"id_text": F.col("id").cast("string"), "one": F.lit(1)})
        .where("id < 4")
        .filter(F.col("name") != "bob")
        .orderBy("id")
    )
    assert tuples(df) == [(1, "ann", 200.0, True, "1", 1), (3, "cid", 120.0, False, "3", 1)]
    assert df.columns == ["id", "name", "double", "big", "id_text", "one"]
    assert people.selectExpr("id + 1 AS next").orderBy("next").first().next == 2
    replaced = people.withColumn("salary", F.col("salary").cast("int")).orderBy("id")
    assert [r.salary for r in replaced.collect()] == [100, 80, 60, 70]


def test_group_by_and_aggregates(spark, people):
    df = (
        people.groupBy("dept")
        .agg(F.count("*").alias("n"), F.sum("salary").alias("total"), F.max("name").alias("last"))
        .orderBy(F.col("dept").asc_nulls_last())
    )
    assert tuples(df) == [("eng", 2, 180.0, "bob"), ("ops", 1, 60.0, "cid"), (None, 1, 70.0, "dee")]
    names = people.groupBy("dept").agg(F.sum("salary"), F.avg("salary")).columns
    assert names == ["dept", "sum(salary)", "avg(salary)"]
    assert people.agg(F.countDistinct("dept")).collect()[0][0] == 2
    assert people.groupBy().avg("salary").collect()[0][0] == pytest.approx(77.5)


def test_joins_of_every_type(spark):
    left = spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")], "k INT, l STRING")
    right = spark.createDataFrame([(2, "B"), (3, "C"), (4, "D")], "k INT, r STRING")
    on = "k"
    cases = {
        "inner": [(2, "b", "B"), (3, "c", "C")],
        "left": [(1, "a", None), (2, "b", "B"), (3, "c", "C")],
        "right": [(2, "b", "B"), (3, "c", "C"), (4, None, "D")],
        "full": [(1, "a", None), (2, "b", "B"), (3, "c", "C"), (4, None, "D")],
        "left_semi": [(2, "b"), (3, "c")],
        "left_anti": [(1, "a")],
    }
    for how, expected in cases.items():
        assert sorted(tuples(left.join(right, on, how)), key=repr) == sorted(expected, key=repr), how
    # On an expression: both key columns are kept.
    cond = tuples(left.join(right, left.k == right.k, "inner").orderBy(left.k))
    assert cond == [(2, "b", 2, "B"), (3, "c", 3, "C")]
    outer = left.join(right, (left.k == right.k) & (right.r != "C"), "left_outer").orderBy(left.k)
    assert tuples(outer) == [(1, "a", None, None), (2, "b", 2, "B"), (3, "c", None, None)]
    assert left.crossJoin(right).count() == 9
    aliased = left.alias("x").join(right.alias("y"), F.col("x.k") == F.col("y.k"))
    assert sorted(tuples(aliased.select("x.l", "y.r"))) == [("b", "B"), ("c", "C")]


def test_sort_limit_distinct_and_set_operations(spark):
    df = spark.createDataFrame([(1, "a"), (1, "a"), (2, "b"), (3, None)], "n INT, s STRING")
    assert tuples(df.orderBy(F.desc("n")).limit(2)) == [(3, None), (2, "b")]
    assert tuples(df.sort("n", "s").offset(3)) == [(3, None)]
    assert df.distinct().count() == 3
    assert df.dropDuplicates(["n"]).count() == 3
    other = spark.createDataFrame([(9, "z")], "n INT, s STRING")
    assert df.union(other).count() == 5
    assert df.unionAll(other).count() == 5
    flipped = spark.createDataFrame([("z", 9)], "s STRING, n INT")
    assert sorted(tuples(df.unionByName(flipped).filter("n > 2"))) == [(3, None), (9, "z")]
    missing = spark.createDataFrame([(7,)], "n INT")
    assert tuples(df.unionByName(missing, allowMissingColumns=True).filter("n = 7")) == [(7, None)]
    assert tuples(df.intersect(other.union(df.limit(1)))) == [(1, "a")]
    assert sorted(tuples(df.subtract(other.union(df.filter("n = 1"))))) == [(2, "b"), (3, None)]


def test_rename_drop_and_missing_values(spark, people):
    renamed = people.withColumnRenamed("name", "who").drop("tag", "salary")
    assert renamed.columns == ["id", "who", "dept"]
    assert people.drop(people.tag).columns == ["id", "name", "dept", "salary"]
    filled = people.na.fill("none").orderBy("id")
    assert [r.tag for r in filled.collect()] == ["none", "x", "y", "none"]
    assert [r.dept for r in people.fillna({"dept": "?"}).orderBy("id").collect()][3] == "?"
    assert people.na.drop().count() == 2
    assert people.dropna(subset=["dept"]).count() == 3
    assert people.dropna(how="all", subset=["dept", "tag"]).count() == 3
    assert people.toDF("a", "b", "c", "d", "e").columns == ["a", "b", "c", "d", "e"]


def test_when_otherwise_and_functions(spark, people):
    df = people.select(
        "id",
        F.when(F.col("salary") >= 80, "high").when(F.col("salary") >= 70, "mid").otherwise("low").alias("band"),
        F.upper("name").alias("up"),
        F.concat_ws("-", "name", "dept").alias("joined"),
        F.coalesce("tag", F.lit("-")).alias("tag"),
        F.round(F.col("salary") / 3, 2).alias("third"),
        F.length("name").alias("len"),
        F.substring("name", 1, 2).alias("pre"),
        F.year(F.lit(datetime.date(2024, 5, 6))).alias("y"),
        F.datediff(F.lit(datetime.date(2024, 5, 6)), F.lit(datetime.date(2024, 5, 1))).alias("days"),
        F.regexp_replace("name", "[aeiou]", "_").alias("masked"),
    ).orderBy("id")
    first = df.collect()[0]
    assert first.band == "high" and first.up == "ANN" and first.joined == "ann-eng"
    assert first.tag == "-" and first.third == pytest.approx(33.33) and first.len == 3
    assert first.pre == "an" and first.y == 2024 and first.days == 5 and first.masked == "_nn"
    assert [r.band for r in df.collect()] == ["high", "high", "low", "mid"]
    # Integers divide as doubles, as on Spark.
    assert spark.range(1).select((F.lit(7) / F.lit(2)).alias("x")).first().x == 3.5


def test_window_functions(spark, people):
    w = Window.partitionBy("dept").orderBy(F.desc("salary"))
    df = (
        people.filter(F.col("dept").isNotNull())
        .withColumn("rank", F.row_number().over(w))
        .withColumn("dept_total", F.sum("salary").over(Window.partitionBy("dept")))
        .withColumn("prev", F.lag("salary", 1).over(w))
        .withColumn(
            "running",
            F.sum("salary").over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow)),
        )
        .orderBy("id")
    )
    rows = [(r.id, r.rank, r.dept_total, r.prev, r.running) for r in df.collect()]
    assert rows == [(1, 1, 180.0, None, 100.0), (2, 2, 180.0, 100.0, 180.0), (3, 1, 60.0, None, 60.0)]


def test_pivot_gives_a_column_per_value(spark):
    df = spark.createDataFrame(
        [("a", "x", 1), ("a", "y", 2), ("a", "x", 3), ("b", "y", 4), ("b", None, 5)],
        "k STRING, p STRING, v INT",
    )
    one = df.groupBy("k").pivot("p", ["x", "y"]).agg(F.sum("v")).orderBy("k")
    assert one.columns == ["k", "x", "y"]
    assert tuples(one) == [("a", 4, 2), ("b", None, 4)]
    two = df.groupBy("k").pivot("p", ["x"]).agg(F.sum("v").alias("s"), F.count("*").alias("n"))
    assert two.columns == ["k", "x_s", "x_n"]
    assert tuples(two.orderBy("k")) == [("a", 4, 2), ("b", None, 0)]
    with pytest.raises(PySparkException, match="values"):
        df.groupBy("k").pivot("p").agg(F.sum("v")).collect()


def test_explode_gives_a_row_per_element(spark):
    df = spark.createDataFrame([(1, [1, 2]), (2, []), (3, None)], "id INT, xs ARRAY<INT>")
    assert tuples(df.select("id", F.explode("xs").alias("x")).orderBy("id", "x")) == [(1, 1), (1, 2)]
    assert df.select(F.explode("xs")).columns == ["col"]
    with_column = df.withColumn("x", F.explode("xs")).select("id", "x").orderBy("x")
    assert tuples(with_column) == [(1, 1), (1, 2)]
    with pytest.raises(PySparkException, match="one explode"):
        df.select(F.explode("xs"), F.explode("xs")).collect()
    with pytest.raises(PySparkException, match="explode_outer"):
        df.select(F.explode_outer("xs")).collect()


def test_collect_to_pandas_to_arrow_show_count_schema_explain(spark, people, capsys):
    assert people.count() == 4
    assert [f.name for f in people.schema.fields] == ["id", "name", "dept", "salary", "tag"]
    assert people.schema["salary"].dataType.simpleString() == "double"
    pdf = people.orderBy("id").toPandas()
    assert list(pdf["name"]) == ["ann", "bob", "cid", "dee"]
    table = people.toArrow()
    assert isinstance(table, pa.Table) and table.num_rows == 4
    people.orderBy("id").show(2)
    out = capsys.readouterr().out
    assert "| id|name|dept|salary| tag|" in out and "only showing top 2 rows" in out
    people.filter("id > 1").explain()
    explained = capsys.readouterr().out
    assert "Filter: " in explained and "distributed_plan" in explained, explained
    assert people.orderBy("id").first().name == "ann"
    assert people.orderBy("id").head(2)[1].name == "bob"
    assert people.orderBy("id").take(1) == [Row(id=1, name="ann", dept="eng", salary=100.0, tag=None)]


def test_reading_parquet_csv_json_and_tables(spark):
    orders = spark.read.parquet(os.path.join(TPCH, "orders"))
    assert orders.count() == spark.table("orders").count() > 0
    folder = os.path.join(SCRATCH, f"read-{uuid.uuid4().hex}")
    os.makedirs(os.path.join(folder, "csv"))
    with open(os.path.join(folder, "csv", "a.csv"), "w") as f:
        f.write("id,name\n1,x\n2,y\n")
    with_header = spark.read.option("header", True).option("inferSchema", True).csv(os.path.join(folder, "csv"))
    assert tuples(with_header.orderBy("id")) == [(1, "x"), (2, "y")]
    raw = spark.read.csv(os.path.join(folder, "csv"))
    assert raw.columns == ["_c0", "_c1"] and raw.count() == 3
    typed = spark.read.schema("id INT, name STRING").option("header", "true").csv(os.path.join(folder, "csv"))
    assert typed.schema["id"].dataType.simpleString() == "int"
    os.makedirs(os.path.join(folder, "json"))
    with open(os.path.join(folder, "json", "a.json"), "w") as f:
        f.write('{"a": 1, "b": "p"}\n{"a": 2, "b": "q"}\n')
    assert sorted(tuples(spark.read.json(os.path.join(folder, "json")))) == [(1, "p"), (2, "q")]


def test_write_with_modes_and_partitions_read_back(spark):
    target = os.path.join(SCRATCH, f"write-{uuid.uuid4().hex}")
    df = spark.createDataFrame([(1, "a", 10), (2, "b", 20), (3, "a", 30)], "id INT, k STRING, v INT")
    df.write.partitionBy("k").parquet(target)
    back = spark.read.parquet(target)
    assert sorted((r.id, r.k, r.v) for r in back.collect()) == [(1, "a", 10), (2, "b", 20), (3, "a", 30)]
    # Hive-style folders (and Ember's commit marker, which readers skip as Spark's _SUCCESS).
    assert sorted(n for n in os.listdir(target) if not n.startswith("_")) == ["k=a", "k=b"]
    with pytest.raises(AnalysisException, match="PATH_ALREADY_EXISTS"):
        df.write.parquet(target)
    df.write.mode("ignore").parquet(target)
    assert spark.read.parquet(target).count() == 3
    df.write.mode("append").partitionBy("k").parquet(target)
    assert spark.read.parquet(target).count() == 6
    # Overwrite: the new rows replace every file the target held.
    df.filter("id = 2").write.mode("overwrite").partitionBy("k").parquet(target)
    assert tuples(spark.read.parquet(target).select("id", "k", "v")) == [(2, "b", 20)]
    assert sorted(n for n in os.listdir(target) if not n.startswith("_")) == ["k=b"]
    fresh = os.path.join(SCRATCH, f"fresh-{uuid.uuid4().hex}")
    df.write.mode("overwrite").parquet(fresh)
    assert spark.read.parquet(fresh).count() == 3
    with pytest.raises(PySparkException, match="nullValue"):
        df.write.option("nullValue", "NA").csv(os.path.join(SCRATCH, "never"))
    csv = os.path.join(SCRATCH, f"csv-{uuid.uuid4().hex}")
    df.write.option("header", True).csv(csv)
    read = spark.read.option("header", True).option("inferSchema", True).csv(csv)
    assert sorted(tuples(read)) == [(1, "a", 10), (2, "b", 20), (3, "a", 30)]


def test_temporary_views_belong_to_their_session(spark):
    other = SparkSession.builder.remote(URL).create()
    try:
        spark.createDataFrame([(1,)], "x INT").createOrReplaceTempView("only_mine")
        assert spark.sql("SELECT x FROM only_mine").collect() == [Row(x=1)]
        assert spark.table("only_mine").count() == 1
        with pytest.raises(AnalysisException, match="only_mine"):
            other.sql("SELECT * FROM only_mine").collect()
        other.sql("CREATE OR REPLACE TEMP VIEW theirs AS SELECT 2 AS y")
        assert other.sql("SELECT y FROM theirs").first().y == 2
        with pytest.raises(AnalysisException, match="theirs"):
            spark.table("theirs").collect()
    finally:
        other.stop()


def test_a_running_job_is_interrupted(spark):
    # Far too many rows to finish: it ends only by being interrupted.
    slow = (
        spark.table("lineitem").alias("a")
        .crossJoin(spark.table("orders").alias("b"))
        .filter(F.col("a.l_orderkey") + F.col("b.o_orderkey") < 0)
    )
    outcome = {}

    def run():
        spark.addTag("slow")
        try:
            outcome["rows"] = slow.count()
        except Exception as e:  # noqa: BLE001 - the interruption is the expected outcome
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    interrupted = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    while not interrupted and thread.is_alive():
        assert datetime.datetime.now() < deadline, "the job never started"
        interrupted = spark.interruptTag("slow")
    thread.join(60)
    assert not thread.is_alive(), "the interrupted query did not end"
    assert "error" in outcome, outcome
    assert "OPERATION_CANCELED" in str(outcome["error"]) or "cancel" in str(outcome["error"]).lower()
    # The cluster goes on serving.
    assert spark.range(3).count() == 3


def test_errors_are_clear(spark, people):
    with pytest.raises(AnalysisException, match="nope"):
        people.select("nope").collect()
    with pytest.raises(PySparkException, match="posexplode"):
        people.select(F.posexplode(F.array("id"))).collect()
    with pytest.raises(PySparkException, match="(?i)parse|syntax|expected"):
        spark.sql("SELEC 1").collect()
    with pytest.raises(PySparkException, match="sample"):
        people.sample(0.5).collect()
    # Files outside the cluster's allowed locations are neither read nor listed.
    with pytest.raises(AnalysisException, match="outside the locations"):
        spark.read.parquet("/etc").schema
    with pytest.raises(AnalysisException, match="outside the locations"):
        people.write.parquet("/etc/ember-spark-write")
