//! Catalog metadata: catalogs, schemas, tables with their Arrow schemas, table types; read
//! from the leader's catalog.

use super::*;

impl FlightSqlGrpc {
    pub(super) async fn tables_batch(
        &self,
        query: CommandGetTables,
    ) -> Result<RecordBatch, Status> {
        let ctx = self.scheduler.session();
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else {
                        continue;
                    };
                    let table_type = match table.table_type() {
                        TableType::Base => "TABLE",
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type,
                            &table.schema(),
                        )
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
            }
        }
        builder.build().map_err(|e| Status::internal(e.to_string()))
    }
}

pub(super) fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

/// A `GetFlightInfo` answer for a metadata command: its schema, and a ticket carrying the
/// command back to `DoGet`.
pub(super) fn metadata_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(
            FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec())),
        )
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

pub(super) fn batch_stream(batch: RecordBatch) -> Response<FlightStream<FlightData>> {
    Response::new(encode_batches(batch.schema(), vec![batch]))
}
