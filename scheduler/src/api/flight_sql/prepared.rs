//! Prepared statements: SQL kept on the leader with its `?` placeholders numbered, and the
//! row of parameter values a client binds.

use super::*;

/// A prepared statement: its SQL (placeholders numbered) and the values last bound.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) sql: String,
    pub(super) params: Vec<ScalarValue>,
}

impl FlightSqlGrpc {
    pub(super) fn prepared(&self, handle: &Bytes) -> Result<Prepared, Status> {
        self.prepared.lock().get(handle).cloned().ok_or_else(|| {
            Status::not_found("no such prepared statement (it was closed, or the scheduler that prepared it is gone)")
        })
    }

    /// The batch the client sent to a prepared statement: one row of parameter values.
    pub(super) async fn bound_values(
        stream: PeekableFlightDataStream,
    ) -> Result<Option<Vec<ScalarValue>>, Status> {
        let batches: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from))
                .try_collect()
                .await
                .map_err(|e| {
                    Status::invalid_argument(format!("cannot read the parameters: {e}"))
                })?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        match rows {
            0 => Ok(None),
            1 => {
                let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c.as_ref(), 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
                Ok(Some(values))
            }
            n => Err(Status::invalid_argument(format!(
                "bind one row of parameters per execution ({n} rows were sent)"
            ))),
        }
    }
}

/// Numbers the `?` placeholders ADBC and JDBC send (`$1`, `$2`, ... in order of appearance),
/// leaving string literals, comments and everything else as written.
pub fn number_placeholders(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return sql.to_string(); // planning reports the error
    };
    let marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    if marks.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let (mut line, mut column) = (1u64, 1u64);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' && marks.contains(&(line, column)) {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?"),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(
            number_placeholders("SELECT 'it''s ?' -- a comment?\n, ?"),
            "SELECT 'it''s ?' -- a comment?\n, $1"
        );
        assert_eq!(number_placeholders("SELECT $1"), "SELECT $1");
    }
}
