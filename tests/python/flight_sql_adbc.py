"""Ember through the ADBC Flight SQL driver, as a Python user or BI tool would connect.

Run by the integration test `flight_sql::adbc_python_client`, which starts the cluster,
registers the TPC-H tables and writes what single-node DataFusion answers for each query to
`EXPECTED/NAME.arrow`. Exits non-zero (with the failed check) when anything differs.

    python3 flight_sql_adbc.py --uri grpc://127.0.0.1:PORT --expected DIR --queries DIR
"""

import argparse
import math
import pathlib
import sys

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.ipc as ipc


def read_expected(directory, name):
    with ipc.open_file(directory / f"{name}.arrow") as reader:
        return reader.read_all()


def normalized_rows(table):
    """Rows as tuples, floats rounded, sorted (the comparison ignores row order)."""

    def norm(v):
        if isinstance(v, float):
            return round(v, 4) if math.isfinite(v) else str(v)
        if hasattr(v, "as_tuple"):  # Decimal
            return round(float(v), 4)
        return v

    rows = [tuple(norm(v) for v in row.values()) for row in table.to_pylist()]
    return sorted(rows, key=repr)


def same(name, expected, actual):
    assert expected.num_rows == actual.num_rows, (
        f"{name}: {actual.num_rows} rows, expected {expected.num_rows}"
    )
    assert expected.column_names == actual.column_names, (
        f"{name}: columns {actual.column_names}, expected {expected.column_names}"
    )
    want, got = normalized_rows(expected), normalized_rows(actual)
    for i, (w, g) in enumerate(zip(want, got)):
        assert w == g, f"{name}: row {i} is {g}, expected {w}"


def expect_error(conn, sql, parameters, *fragments):
    """The statement fails with a message naming what is wrong."""
    cur = conn.cursor()
    try:
        cur.execute(sql, parameters=parameters)
        cur.fetch_arrow_table()
    except adbc_driver_manager.Error as e:
        message = str(e)
        for fragment in fragments:
            assert fragment.lower() in message.lower(), (
                f"error for {sql!r} does not mention {fragment!r}: {message}"
            )
        return message
    finally:
        cur.close()
    raise AssertionError(f"{sql!r} with {parameters!r} did not fail")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--expected", required=True, type=pathlib.Path)
    parser.add_argument("--queries", required=True, type=pathlib.Path)
    parser.add_argument("--tpch", default="1,3,5,6,10,13,18")
    parser.add_argument("--user", help="sign in as this user, with --password (the token)")
    parser.add_argument("--password")
    args = parser.parse_args()

    credentials = {}
    if args.user:
        # Without credentials the cluster answers nothing.
        try:
            with flightsql.connect(args.uri) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetch_arrow_table()
            sys.exit("a client without credentials was let in")
        except adbc_driver_manager.Error as e:
            if "credentials" not in str(e):
                raise
            print("without credentials: refused")
        # The driver signs in (Flight SQL handshake, basic credentials) and calls with the
        # bearer token the handshake returns.
        credentials = {
            adbc_driver_manager.DatabaseOptions.USERNAME.value: args.user,
            adbc_driver_manager.DatabaseOptions.PASSWORD.value: args.password,
        }

    with flightsql.connect(args.uri, db_kwargs=credentials) as conn:
        # TPC-H queries, checked against single-node DataFusion.
        for q in args.tpch.split(","):
            sql = (args.queries / f"q{q}.sql").read_text()
            with conn.cursor() as cur:
                cur.execute(sql)
                actual = cur.fetch_arrow_table()
            same(f"q{q}", read_expected(args.expected, f"q{q}"), actual)
            print(f"q{q}: {actual.num_rows} rows match")

        # Catalog metadata: the tables, with their Arrow schemas.
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        tables = {
            t["table_name"]: t
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for t in schema["db_schema_tables"] or []
        }
        for name in ["lineitem", "orders", "customer", "nation"]:
            assert name in tables, f"get_objects does not list {name}: {sorted(tables)}"
            assert tables[name]["table_type"] == "TABLE", tables[name]["table_type"]
        columns = [c["column_name"] for c in tables["orders"]["table_columns"]]
        assert columns[:2] == ["o_orderkey", "o_custkey"], columns
        schema = conn.adbc_get_table_schema("lineitem")
        assert schema.field("l_orderkey").type in (pa.int64(), pa.int32()), schema
        assert schema.field("l_shipdate").type == pa.date32(), schema
        assert "TABLE" in conn.adbc_get_table_types()
        info = conn.adbc_get_info()
        assert info.get("vendor_name") == "Ember", info
        print("metadata: tables and schemas listed")

        # A prepared statement with a `?` parameter, run twice with different values.
        with conn.cursor() as cur:
            sql = "SELECT count(*) AS n, sum(o_totalprice) AS total FROM orders WHERE o_orderkey < ?"
            cur.execute(sql, parameters=(1000,))
            same("prepared(1000)", read_expected(args.expected, "param_1000"), cur.fetch_arrow_table())
            cur.execute(sql, parameters=(50000,))
            same("prepared(50000)", read_expected(args.expected, "param_50000"), cur.fetch_arrow_table())
            # Strings and dates as Python binds them (utf8, date32) against Parquet columns
            # (read as Utf8View, Date32).
            import datetime

            cur.execute(
                "SELECT count(*) AS n FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey "
                "WHERE c.c_mktsegment = ? AND o.o_orderdate < ?",
                parameters=("BUILDING", datetime.date(1995, 3, 15)),
            )
            same("prepared(string, date)", read_expected(args.expected, "param_building"), cur.fetch_arrow_table())
        print("prepared statement: parameters bound")

        # Bad input: a clear error, and the server keeps serving.
        expect_error(conn, "SELEC 1", None, "sql")
        expect_error(conn, "SELECT * FROM no_such_table", None, "no_such_table")
        expect_error(
            conn,
            "SELECT count(*) FROM orders WHERE o_orderkey < ?",
            ("not a number",),
            "parameter",
        )
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM nation")
            assert cur.fetchone()[0] == 25
        print("bad input: clear errors, still serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
