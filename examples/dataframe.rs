//! DataFusion's DataFrame API on an Ember cluster.
//!
//! ```text
//! ember datagen tpch --scale-factor 0.1 --output /tmp/tpch
//! cargo run --example dataframe -- /tmp/tpch                        # embedded cluster
//! cargo run --example dataframe -- /tmp/tpch http://127.0.0.1:50050  # a running scheduler
//! ```
//!
//! Reads `orders` and `customer`, joins, filters, aggregates and sorts them — every step
//! runs distributed on the cluster — shows the result and writes it as Parquet.

use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use ember_client::EmberSession;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .ok_or("usage: dataframe TPCH_DIR [SCHEDULER_URL]")?;
    let session = match args.next() {
        Some(url) => EmberSession::connect(&url).await?,
        None => EmberSession::embedded(2).await?,
    };
    let top_segments = top_segments(&session, &data).await?;
    top_segments.clone().show().await?;
    let out = std::env::temp_dir().join("ember-example-segments");
    top_segments
        .write_parquet(
            out.to_str().ok_or("temp dir is not UTF-8")?,
            datafusion::dataframe::DataFrameWriteOptions::new(),
            None,
        )
        .await?;
    println!("written to {}", out.display());
    session.close().await;
    Ok(())
}

/// Revenue and order count per market segment for orders above 100,000, largest first.
/// `session` is any DataFusion session: an `EmberSession` runs it on the cluster.
pub async fn top_segments(
    session: &SessionContext,
    data: &str,
) -> datafusion::error::Result<DataFrame> {
    let orders = session
        .read_parquet(format!("{data}/orders/"), ParquetReadOptions::default())
        .await?;
    let customer = session
        .read_parquet(format!("{data}/customer/"), ParquetReadOptions::default())
        .await?;
    orders
        .filter(col("o_totalprice").gt(lit(100_000.0)))?
        .join(
            customer,
            JoinType::Inner,
            &["o_custkey"],
            &["c_custkey"],
            None,
        )?
        .aggregate(
            vec![col("c_mktsegment")],
            vec![
                count(lit(1)).alias("orders"),
                sum(col("o_totalprice")).alias("revenue"),
            ],
        )?
        .sort(vec![col("revenue").sort(false, true)])?
        .limit(0, Some(5))
}
